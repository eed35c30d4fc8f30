//! The CSV and interrupt sides of atomic outputs (`pepnet_core::atomic_file`): a CSV writer over
//! an output completed as one, and the handler that removes unfinished outputs on SIGINT or
//! SIGTERM.

use std::path::Path;

use pepnet_core::atomic_file::Output;
use pepnet_core::error::{Error, Result};

/// On SIGINT or SIGTERM, deletes every unfinished output's temporary file, says so, and exits
/// with 128 + the signal, as a shell reports it. For programs (the CLI); a library user handles
/// its own signals.
pub fn remove_unfinished_on_interrupt() -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("pepnet-interrupt".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let files = pepnet_core::atomic_file::take_unfinished();
                for f in &files {
                    let _ = std::fs::remove_file(f);
                }
                eprintln!(
                    "interrupted: stopped before finishing; {} unfinished output file(s) removed, \
                     nothing was replaced",
                    files.len()
                );
                std::process::exit(128 + signal);
            }
        })?;
    Ok(())
}

/// Flushes a CSV writer over an [`Output`] and completes it.
pub(crate) fn persist_csv(writer: csv::Writer<Output>, path: &Path) -> Result<()> {
    let out = writer
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    out.commit(path)
}
