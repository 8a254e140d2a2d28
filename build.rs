//! Rebuilds the crate when a file under `console/` changes: `include_dir!` embeds the files,
//! but the compiler tracks only the files it saw, not ones added later.
fn main() {
    println!("cargo:rerun-if-changed=console");
}
