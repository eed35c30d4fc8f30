//! Running the `pepnet` binary from a test, as a user would.

use std::ffi::OsStr;
use std::process::{Command, Output};

/// Runs `pepnet` with `args` to the end.
pub fn pepnet<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pepnet"))
        .args(args)
        .output()
        .expect("the pepnet binary runs")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the run succeeded, showing its status and stderr if not; returns its stderr.
pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: expected success, got {:?}; stderr:\n{}",
        out.status,
        stderr(out)
    );
    stderr(out)
}
