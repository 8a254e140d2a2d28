//! `cargo fuzz run sse`: see `check_sse` in `fuzz/checks.rs`.
#![no_main]

include!("../checks.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| check_sse(data));
