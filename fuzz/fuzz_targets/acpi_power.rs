//! The ACPI PM1 and reset registers, straight and through a bus, against a
//! model of what the guest may see and when poweroff and reset fire: see
//! `devices::fuzz::acpi_power`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::fuzz::acpi_power(data));
