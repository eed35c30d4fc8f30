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

/// The example's spec (examples/kuairand) with its user, video and author ids hashed (raw
/// 64-bit ids, no vocabulary), written as `dir/hashed.json`; its path.
pub fn hashed_example_spec(dir: &std::path::Path) -> String {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/kuairand/model.json");
    let mut spec = pepnet::ModelSpec::load(std::path::Path::new(example)).unwrap();
    for f in spec.features.iter_mut() {
        if ["user_id", "video_id", "author_id"].contains(&f.name.as_str()) {
            f.hashed = true;
            f.vocab = None;
        }
    }
    let path = dir.join("hashed.json");
    std::fs::write(&path, spec.to_json()).unwrap();
    path.display().to_string()
}
