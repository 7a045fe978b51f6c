//! The `creditgate` binary: parses the command line and maps outcomes to exit codes.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code.into(),
        Err(err) => {
            eprintln!("creditgate: error: {err:#}");
            cli::Exit::InputError.into()
        }
    }
}
