//! The `pepnet` command beside an example, for the examples' tests to compare against (the
//! embed-service tests include this file too).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `pepnet` command of the same build as the program `beside` (the workspace's test run
/// builds it; it is built here when an example's package is tested alone).
pub fn pepnet(beside: &str) -> PathBuf {
    let exe = Path::new(beside).with_file_name("pepnet");
    if !exe.exists() {
        let release = exe.parent().is_some_and(|d| d.ends_with("release"));
        let mut build = Command::new(env!("CARGO"));
        build
            .current_dir(repo())
            .args(["build", "-p", "pepnet", "--bin", "pepnet"]);
        if release {
            build.arg("--release");
        }
        assert!(build.status().unwrap().success(), "building pepnet");
    }
    exe
}
