//! `pepnet train --checkpoints`: periodic checkpoints, each whole, the newest K kept; a run
//! resumed from any of them, or killed and rerun with `--resume`, ends with the weights and
//! optimizer state of the uninterrupted run, bit for bit; a resume with another batch size is
//! refused by name.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cli::{ok, pepnet, stderr};

fn spec_path() -> String {
    format!(
        "{}/examples/kuairand/model.json",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// 3 000 rows in batches of 256: 12 steps an epoch, the last one short.
const BATCH: &str = "256";

fn train_args(train: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "--model",
        &spec_path(),
        "--train",
        train,
        "--out",
        &out.display().to_string(),
        "--epochs",
        "2",
        "--batch-size",
        BATCH,
        "--seed",
        "3",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn checkpoints(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn assert_same_model(a: &Path, b: &Path, what: &str) {
    for file in ["weights.safetensors", "optimizer.safetensors"] {
        assert!(
            std::fs::read(a.join(file)).unwrap() == std::fs::read(b.join(file)).unwrap(),
            "{what}: {file} differs from the uninterrupted run's"
        );
    }
}

#[test]
fn resumed_and_killed_runs_end_bit_identical_to_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = d.join("train.csv").display().to_string();
    ok(
        &pepnet(&[
            "gen-data",
            "--model",
            &spec_path(),
            "--rows",
            "3000",
            "--output",
            &train,
            "--seed",
            "5",
        ]),
        "gen-data",
    );

    // Uninterrupted, with a checkpoint every 5 steps, all kept.
    let full = d.join("full");
    let all = d.join("all");
    let every5 = [
        "--checkpoints",
        all.to_str().unwrap(),
        "--checkpoint-every",
        "5",
        "--keep-checkpoints",
        "100",
    ];
    ok(
        &pepnet(&train_args(&train, &full, &every5)),
        "uninterrupted",
    );
    let names = checkpoints(&all);
    let want: Vec<String> = [5, 10, 15, 20]
        .iter()
        .map(|s| format!("step-{s:012}"))
        .collect();
    assert_eq!(names, want, "a checkpoint every 5 of 24 steps");
    for name in &names {
        let mut files = checkpoints(&all.join(name));
        files.sort();
        assert_eq!(
            files,
            [
                "model.json",
                "optimizer.safetensors",
                "progress.json",
                "weights.safetensors"
            ]
        );
    }
    let progress: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(all.join(&names[1]).join("progress.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(progress["step"], 10);
    assert_eq!(progress["batch_size"], 256);

    // From a checkpoint inside the first epoch (step 10 of 12) and one in the second (15).
    for (name, step) in [(&names[1], 10), (&names[2], 15)] {
        let out = d.join(format!("from-{step}"));
        let from = all.join(name);
        let resume = ["--resume-from", from.to_str().unwrap()];
        let err = ok(&pepnet(&train_args(&train, &out, &resume)), "resume-from");
        assert!(
            err.contains(&format!("resuming after step {step}")),
            "{err}"
        );
        assert_same_model(&full, &out, &format!("resumed from step {step}"));
    }

    // Killed (SIGKILL) after its first checkpoint, then the same command again with --resume.
    let kept = d.join("kept");
    let killed_out = d.join("killed");
    let every3 = [
        "--checkpoints",
        kept.to_str().unwrap(),
        "--checkpoint-every",
        "3",
        "--keep-checkpoints",
        "2",
        "--resume",
    ];
    let args = train_args(&train, &killed_out, &every3);
    let mut child = Command::new(env!("CARGO_BIN_EXE_pepnet"))
        .args(&args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let begun = Instant::now();
    let any = || kept.exists() && checkpoints(&kept).iter().any(|n| n.starts_with("step-"));
    while !any() {
        assert!(
            begun.elapsed() < Duration::from_secs(120),
            "no checkpoint after 120 s"
        );
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !killed_out.exists(),
        "a killed run wrote its output directory"
    );
    let err = ok(&pepnet(&args), "rerun with --resume");
    assert!(err.contains("resuming from"), "{err}");
    assert_same_model(&full, &killed_out, "killed, then resumed");
    let names = checkpoints(&kept);
    let want: Vec<String> = [21, 24].iter().map(|s| format!("step-{s:012}")).collect();
    assert_eq!(names, want, "the newest two of every third step are kept");

    // The run is done: --resume again trains nothing and writes the same model.
    let again = ok(&pepnet(&args), "resume a finished run");
    assert!(again.contains("resuming after step 24"), "{again}");
    assert_same_model(&full, &killed_out, "a finished run resumed");

    // Another batch size would not continue the same run: refused, naming the key.
    let refused_out = d.join("refused");
    let from = all.join(format!("step-{:012}", 10));
    let mut args = train_args(
        &train,
        &refused_out,
        &["--resume-from", from.to_str().unwrap()],
    );
    let pos = args.iter().position(|a| a == "--batch-size").unwrap();
    args[pos + 1] = "128".into();
    let out = pepnet(&args);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("batch_size") && err.contains("256") && err.contains("128"),
        "{err}"
    );
    assert!(!refused_out.exists());
}

fn gen_csv(path: &Path, rows: usize, seed: u64) {
    ok(
        &pepnet(&[
            "gen-data",
            "--model",
            &spec_path(),
            "--rows",
            &rows.to_string(),
            "--output",
            path.to_str().unwrap(),
            "--seed",
            &seed.to_string(),
        ]),
        "gen-data",
    );
}

/// Streamed training (files read in chunks, shuffled within windows) against the in-memory
/// trainer: the same batches give the same weights bit for bit, so streaming without shuffle
/// over three files equals training on their concatenation, and a window as large as one file
/// equals the in-memory shuffle; a streamed run resumed mid-window ends as the uninterrupted
/// one; a bad label in the last file fails before any step, naming file, row and column.
#[test]
fn streamed_training_takes_the_batches_of_the_in_memory_trainer_and_resumes_mid_window() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let parts = d.join("parts");
    std::fs::create_dir(&parts).unwrap();
    let mut all = String::new();
    for (i, (rows, seed)) in [(1000, 7), (1300, 8), (700, 9)].into_iter().enumerate() {
        let part = parts.join(format!("part-{i}.csv"));
        gen_csv(&part, rows, seed);
        let text = std::fs::read_to_string(&part).unwrap();
        let skip = if i == 0 {
            0
        } else {
            text.find('\n').unwrap() + 1
        };
        all.push_str(&text[skip..]);
    }
    let concat = d.join("all.csv");
    std::fs::write(&concat, all).unwrap();
    let concat = concat.to_str().unwrap();
    let parts_arg = parts.to_str().unwrap();

    // In order: the directory streamed in windows of 300 rows = the concatenation in memory.
    let memory = d.join("memory");
    ok(
        &pepnet(&train_args(concat, &memory, &["--no-shuffle"])),
        "in memory, in order",
    );
    let streamed = d.join("streamed");
    let err = ok(
        &pepnet(&train_args(
            parts_arg,
            &streamed,
            &["--no-shuffle", "--shuffle-window", "300"],
        )),
        "streamed, in order",
    );
    assert!(err.contains("streaming 3 files"), "{err}");
    assert_same_model(&memory, &streamed, "streamed in order");

    // Shuffled: one window holding the whole file = the in-memory shuffle.
    let memory = d.join("memory-shuffled");
    ok(&pepnet(&train_args(concat, &memory, &[])), "in memory");
    let streamed = d.join("streamed-shuffled");
    ok(
        &pepnet(&train_args(
            concat,
            &streamed,
            &["--shuffle-window", "3000"],
        )),
        "streamed, one window",
    );
    assert_same_model(&memory, &streamed, "one window");

    // Windows of 500 rows over the directory, a checkpoint every 4 steps (step 4 is sample
    // 1024: row 24 of window 2), then resumed from there.
    let full = d.join("windows");
    let ckpt = d.join("windows-ckpt");
    let flags = [
        "--shuffle-window",
        "500",
        "--checkpoints",
        ckpt.to_str().unwrap(),
        "--checkpoint-every",
        "4",
        "--keep-checkpoints",
        "100",
    ];
    ok(&pepnet(&train_args(parts_arg, &full, &flags)), "windows");
    assert!(
        std::fs::read(full.join("weights.safetensors")).unwrap()
            != std::fs::read(memory.join("weights.safetensors")).unwrap(),
        "windows of 500 shuffle differently from the whole file"
    );
    for step in [4, 16] {
        let out = d.join(format!("windows-from-{step}"));
        let from = ckpt.join(format!("step-{step:012}"));
        let mut resume = flags[..2].to_vec();
        resume.extend(["--resume-from", from.to_str().unwrap()]);
        let err = ok(&pepnet(&train_args(parts_arg, &out, &resume)), "resumed");
        assert!(
            err.contains(&format!("resuming after step {step}")),
            "{err}"
        );
        assert_same_model(&full, &out, &format!("streamed, resumed from step {step}"));
    }

    // A label of 2 in the last file's 5th row: refused before training, nothing written.
    let last = parts.join("part-2.csv");
    let text = std::fs::read_to_string(&last).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let col = header.iter().position(|c| *c == "like").unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mut cells: Vec<String> = lines[5].split(',').map(String::from).collect();
    cells[col] = "2".into();
    lines[5] = cells.join(",");
    std::fs::write(&last, lines.join("\n") + "\n").unwrap();
    let bad = d.join("bad");
    let out = pepnet(&train_args(parts_arg, &bad, &[]));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("part-2.csv") && err.contains("row 5") && err.contains("'like'"),
        "{err}"
    );
    assert!(!bad.exists());
}
