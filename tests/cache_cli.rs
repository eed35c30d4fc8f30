//! Hashed features on the command line: `init` (empty stored tables), `apply-rows` (merging a
//! safetensors file of rows), `score` through the embedding cache with its statistics, and the
//! errors a user meets there.

use std::path::Path;
use std::process::{Command, Output};

use safetensors::tensor::TensorView;
use safetensors::Dtype;

const SPEC: &str = r#"{
  "embedding_dim": 4,
  "domain_feature": "tab",
  "tasks": ["click", "like"],
  "features": [
    {"name": "tab", "kind": "sparse", "vocab": 3, "roles": ["domain"]},
    {"name": "user_id", "kind": "sparse", "hashed": true, "roles": ["general", "prior"]},
    {"name": "tags", "kind": "multi_hot", "hashed": true, "max_len": 3, "pooling": "sum", "roles": ["general"]},
    {"name": "dur", "kind": "dense", "roles": ["general", "domain"]}
  ],
  "epnet": {"hidden": 5},
  "ppnet": {"hidden": 6},
  "towers": [5]
}"#;

/// Raw ids, most above 2^63 (as 64-bit hashes are).
const USERS: [u64; 4] = [u64::MAX, 1 << 63, 12_345_678_901_234_567_890, 7];

fn pepnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pepnet"))
        .args(args)
        .output()
        .expect("the pepnet binary runs")
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "failed: {err}");
    err
}

/// A rows file: `emb.<f>.ids` (U64) and `emb.<f>` for each (feature, ids) given.
fn write_rows(path: &Path, tables: &[(&str, &[u64])]) {
    let mut raw = Vec::new();
    for (name, ids) in tables {
        let id_bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
        let rows: Vec<f32> = (0..ids.len() * 4)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        raw.push((
            format!("emb.{name}.ids"),
            Dtype::U64,
            vec![ids.len()],
            id_bytes,
        ));
        raw.push((
            format!("emb.{name}"),
            Dtype::F32,
            vec![ids.len(), 4],
            bytemuck::cast_slice(&rows).to_vec(),
        ));
    }
    let views: Vec<(String, TensorView)> = raw
        .iter()
        .map(|(n, dt, shape, data)| {
            (
                n.clone(),
                TensorView::new(*dt, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn read_scores(path: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .skip(1)
        .flat_map(|l| {
            l.split(',')
                .map(|v| v.parse::<f64>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn apply_rows_then_score_through_a_small_cache_matches_the_reference() {
    let dir = std::env::temp_dir().join(format!("pepnet-cache-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("spec.json");
    std::fs::write(&spec, SPEC).unwrap();
    let model = dir.join("model");
    let m = model.to_str().unwrap();
    ok(&pepnet(&[
        "init",
        "--spec",
        spec.to_str().unwrap(),
        "--out",
        m,
    ]));

    let rows = dir.join("rows.safetensors");
    write_rows(
        &rows,
        &[("user_id", &USERS[..3]), ("tags", &[1, 2, 3, 4, 5])],
    );
    let err = ok(&pepnet(&[
        "apply-rows",
        "--model",
        m,
        "--rows",
        rows.to_str().unwrap(),
    ]));
    assert!(err.contains("user_id: 0 rows replaced, 3 added"), "{err}");
    // Again: the same ids are now replaced.
    let err = ok(&pepnet(&[
        "apply-rows",
        "--model",
        m,
        "--rows",
        rows.to_str().unwrap(),
    ]));
    assert!(err.contains("tags: 5 rows replaced, 0 added"), "{err}");

    let input = dir.join("in.csv");
    let mut csv = String::from("tab,user_id,tags,dur\n");
    for i in 0..12 {
        let user = USERS[i % 4]; // USERS[3] is unknown to the store
        let tags = ["", "1", "2|3|9", "4|5"][i % 4];
        csv += &format!("{},{user},{tags},{}\n", i % 3, i as f32 * 0.25);
    }
    std::fs::write(&input, csv).unwrap();
    let (gpu, cpu) = (dir.join("gpu.csv"), dir.join("cpu.csv"));
    let args = |out: &Path, extra: &[&'static str]| {
        let mut a: Vec<String> = ["score", "--model", m, "--input", input.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(["--output".to_string(), out.to_str().unwrap().to_string()]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |a: Vec<String>| pepnet(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let err = ok(&run(args(
        &gpu,
        &[
            "--cache-rows",
            "4",
            "--cache-policy",
            "lru",
            "--batch-size",
            "5",
        ],
    )));
    assert!(
        err.contains("embedding cache (lru)") && err.contains("unknown"),
        "{err}"
    );
    ok(&run(args(&cpu, &["--backend", "reference"])));
    let (g, c) = (read_scores(&gpu), read_scores(&cpu));
    assert_eq!(g.len(), 24);
    for (a, b) in g.iter().zip(&c) {
        assert!((a - b).abs() <= 1e-5, "gpu {a}, reference {b}");
    }

    // Errors name what is wrong.
    let bad = dir.join("bad.safetensors");
    write_rows(&bad, &[("dur", &[1])]);
    let out = pepnet(&["apply-rows", "--model", m, "--rows", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("emb.dur"), "{err}");
    let out = run(args(&gpu, &["--cache-policy", "fifo"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--cache-policy"),
        "{err}"
    );
    let out = run(args(&gpu, &["--cache-rows", "1"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("capacity"), "{err}");

    // A warm-up list fills the cache before scoring (its lookups are not counted), and the
    // counters come out as JSON. USERS[3] is unknown: cached as such, never asked for again.
    let warm = dir.join("warm.csv");
    std::fs::write(
        &warm,
        format!(
            "feature,id\nuser_id,{}\nuser_id,{}\ntags,4\nuser_id,{}\n",
            USERS[0], USERS[1], USERS[3]
        ),
    )
    .unwrap();
    let stats = dir.join("stats.json");
    let warm_arg = warm.to_str().unwrap().to_string();
    let stats_arg = stats.to_str().unwrap().to_string();
    let mut a = args(&gpu, &["--cache-rows", "64"]);
    a.extend(["--cache-warm-up".into(), warm_arg.clone()]);
    a.extend(["--cache-stats".into(), stats_arg.clone()]);
    ok(&run(a));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    let user = json["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["feature"] == "user_id")
        .unwrap();
    // 12 rows of users 0..3 in turn, in one batch: 0 and 1 were warmed (hits), 3 is unknown
    // and warmed as such (hits), 2's three occurrences miss.
    assert_eq!(user["hits"], 9, "{json}");
    assert_eq!(user["misses"], 3, "{json}");
    assert_eq!(user["unknown"], 3, "{json}");
    assert_eq!(json["policy"], "tinylfu");
    let g = read_scores(&gpu);
    for (a, b) in g.iter().zip(&c) {
        assert!((a - b).abs() <= 1e-5, "warmed: gpu {a}, reference {b}");
    }
    // A bad warm-up list is named, with its row and column.
    std::fs::write(&warm, "feature,id\nuser_id,7\ndur,3\n").unwrap();
    let mut a = args(&gpu, &[]);
    a.extend(["--cache-warm-up".into(), warm_arg]);
    let out = run(a);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("warm.csv")
            && err.contains("row 2")
            && err.contains("feature")
            && err.contains("'dur' is not a hashed feature"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
