//! The block layer's request checks through `BlockBackend`'s blocking API
//! on an O_DIRECT raw image, against a memory model: see `block::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| block::fuzz::requests(data));

/// AddressSanitizer's use-after-return checks (a fake stack frame for every
/// call) cost time and find nothing in Rust code.
#[no_mangle]
pub extern "C" fn __asan_default_options() -> *const std::ffi::c_char {
    c"detect_stack_use_after_return=0".as_ptr()
}
