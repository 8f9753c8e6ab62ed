//! virtio-blk descriptor chains and request headers through the real
//! device (transport, I/O thread, parser, block layer): see
//! `devices::fuzz::virtio_blk`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::fuzz::virtio_blk(data));
