//! The `joule` binary: parses the command line and runs it. The commands live in
//! [`joule::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match joule::cli::run(joule::cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
