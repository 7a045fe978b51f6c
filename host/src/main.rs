//! The `creditgate` binary: parses the command line and maps outcomes to exit codes.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        // Help and version go to stdout as clap prints them; a usage error gets
        // the one error format every other failure has, then clap's usage line.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.render().to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            eprint!("creditgate: error: {text}");
            return cli::Exit::InputError.into();
        }
    };
    match cli::run(args) {
        Ok(code) => code.into(),
        Err(err) => {
            eprintln!("creditgate: error: {err:#}");
            cli::exit_of_error(&err).into()
        }
    }
}
