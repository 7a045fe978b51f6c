//! `creditgate completions` and `creditgate man`: shell completions and manual
//! pages generated from the one clap definition of the command line, so that
//! they cannot drift from the flags the binary takes.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::CommandFactory as _;

use super::{Cli, Exit};

/// Prints a completion script for a shell, e.g.
/// `creditgate completions bash > /etc/bash_completion.d/creditgate`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<Exit> {
    let mut command = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut command, "creditgate", &mut out);
    out.flush().context("writing the completions")?;
    Ok(Exit::Success)
}

/// Prints the manual page (roff), e.g. `creditgate man | man -l -`; or writes one
/// page per command into a folder.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write creditgate.1 and a page per subcommand (creditgate-account.1, ...)
    /// into DIR instead of printing the main page.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn man(args: ManArgs) -> anyhow::Result<Exit> {
    let command = Cli::command();
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(command, &dir)
                .with_context(|| format!("writing the manual pages into {}", dir.display()))?;
        }
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(command)
                .render(&mut out)
                .context("writing the manual page")?;
            out.flush().context("writing the manual page")?;
        }
    }
    Ok(Exit::Success)
}
