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
    if !cli.command.logs_itself() {
        // Warnings (a store node down, and back) on stderr; a server sets up its own logs.
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .without_time()
            .with_target(false)
            .try_init();
    }
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
