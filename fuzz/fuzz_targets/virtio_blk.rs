//! virtio-blk descriptor chains and request headers through the real
//! device (transport, I/O thread, parser, block layer): see
//! `devices::fuzz::virtio_blk`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::fuzz::virtio_blk(data));

/// Each execution starts and joins the device's I/O thread; AddressSanitizer
/// gives every thread a fake stack for use-after-return checks (an 11 MiB
/// mapping, mapped and unmapped per thread), which costs more than the
/// execution itself. Rust code has no use-after-return to find.
#[no_mangle]
pub extern "C" fn __asan_default_options() -> *const std::ffi::c_char {
    c"detect_stack_use_after_return=0".as_ptr()
}
