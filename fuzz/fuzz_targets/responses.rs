//! `cargo fuzz run responses`: see `check_responses` in `fuzz/checks.rs`.
#![no_main]

include!("../checks.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| check_responses(data));
