//! `cargo fuzz run anthropic`: see `check_anthropic` in `fuzz/checks.rs`.
#![no_main]

include!("../checks.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| check_anthropic(data));
