//! `cargo fuzz run upstream_doc`: see `check_upstream_doc` in `fuzz/checks.rs`.
#![no_main]

include!("../checks.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| check_upstream_doc(data));
