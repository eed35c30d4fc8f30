//! The example's scores are `pepnet score`'s for the same three rows, bit for bit.

mod command;

use std::process::Command;

use command::{pepnet, repo};

/// (request id, probabilities) per row of a scores CSV.
fn parse(csv: &str) -> Vec<(String, Vec<u32>)> {
    csv.lines()
        .skip(1)
        .map(|line| {
            let mut cells = line.split(',');
            let id = cells.next().unwrap().to_string();
            let p = cells.map(|c| c.parse::<f32>().unwrap().to_bits()).collect();
            (id, p)
        })
        .collect()
}

#[test]
fn the_example_scores_as_pepnet_score() {
    let model = repo().join("examples/kuairand");
    let example = Command::new(env!("CARGO_BIN_EXE_embed-minimal"))
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        example.status.success(),
        "{}",
        String::from_utf8_lossy(&example.stderr)
    );
    let example = String::from_utf8(example.stdout).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let input: Vec<&str> = include_str!("../../kuairand/input.csv")
        .lines()
        .take(4)
        .collect();
    std::fs::write(dir.path().join("in.csv"), input.join("\n") + "\n").unwrap();
    let out = dir.path().join("scores.csv");
    let status = Command::new(pepnet(env!("CARGO_BIN_EXE_embed-minimal")))
        .args(["score", "--quiet", "--carry", "request_id", "--model"])
        .arg(&model)
        .arg("--input")
        .arg(dir.path().join("in.csv"))
        .arg("--output")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let command = std::fs::read_to_string(&out).unwrap();

    assert_eq!(example.lines().next(), command.lines().next(), "headers");
    let (a, b) = (parse(&example), parse(&command));
    assert_eq!(a.len(), 3);
    assert!(a[0].1 != a[1].1, "rows score differently");
    assert_eq!(a, b);
}
