//! A QMP client's bytes through the decoder's framing, split into reads
//! wherever the input says, and the envelope check on what it yields: see
//! `vmm::fuzz::qmp_decoder`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm::fuzz::qmp_decoder(data));
