//! `cargo fuzz run messages`: see `check_messages` in `fuzz/checks.rs`.
#![no_main]

include!("../checks.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| check_messages(data));
