//! The block layer's request checks through `BlockBackend`'s blocking API
//! on an O_DIRECT raw image, against a memory model: see `block::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| block::fuzz::requests(data));
