//! `cargo fuzz run inspect`: see `check_inspect` in `fuzz/checks.rs`.
#![no_main]

include!("../checks.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| check_inspect(data));
