//! placeholder, see scripts/bench
fn main() {}
