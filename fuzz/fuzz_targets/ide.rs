//! The IDE channel: registers, data port strings, ATA commands and ATAPI
//! packets, host media operations and error policies: see
//! `devices::fuzz::ide`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::fuzz::ide(data));
