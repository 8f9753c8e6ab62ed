//! Register sequences against the virtio-mmio transport with a virtio-blk
//! device behind it: see `devices::fuzz::virtio_mmio`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::fuzz::virtio_mmio(data));
