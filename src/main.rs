//! The `pepnet` command line: parses the arguments and runs the subcommand (`src/cli/`, one
//! module each).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // A damaged input file is an error naming it, not a crash report.
    pepnet::io::quiet_decoder_panics();
    // A run stopped by SIGINT or SIGTERM leaves no half-written output behind.
    let watch = match cli.command.writes_files() {
        true => pepnet::remove_unfinished_on_interrupt(),
        false => Ok(()),
    };
    if let Err(e) = watch {
        eprintln!("warning: cannot watch for interrupts ({e}); an interrupted run may leave .pepnet-* files");
    }
    match cli.command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
