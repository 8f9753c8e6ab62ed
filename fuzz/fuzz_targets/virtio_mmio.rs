//! Register sequences against the virtio-mmio transport with a virtio-blk
//! device behind it: see `devices::fuzz::virtio_mmio`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::fuzz::virtio_mmio(data));

/// DRIVER_OK starts the device's I/O thread and a reset joins it;
/// AddressSanitizer gives every thread a fake stack for use-after-return
/// checks (an 11 MiB mapping per thread), which costs more than the
/// execution itself. Rust code has no use-after-return to find.
#[no_mangle]
pub extern "C" fn __asan_default_options() -> *const std::ffi::c_char {
    c"detect_stack_use_after_return=0".as_ptr()
}
