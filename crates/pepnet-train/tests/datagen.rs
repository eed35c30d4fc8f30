//! `pepnet gen-data`: labels follow the written probabilities, tasks differ in sparsity,
//! domains differ, the same seed gives the same file, and Parquet works too.

use pepnet_core::ModelSpec;
use pepnet_train::metrics::auc;

fn spec() -> ModelSpec {
    ModelSpec::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/kuairand/model.json"),
    )
    .unwrap()
}

#[test]
fn labels_follow_the_true_probabilities() {
    let spec = spec();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.csv");
    let rows = 40_000;
    pepnet_io::datagen::write(&spec, rows, 0, 3, &path).unwrap();
    let mut columns: Vec<String> = spec.tasks.clone();
    columns.extend(spec.tasks.iter().map(|t| format!("p_{t}")));
    columns.push("tab".into());
    let values = pepnet_io::read_number_columns(&path, &columns).unwrap();
    let t_count = spec.n_tasks();
    let mut rates = Vec::new();
    for t in 0..t_count {
        let labels: Vec<bool> = values[t].iter().map(|&x| x == 1.0).collect();
        assert!(values[t].iter().all(|&x| x == 0.0 || x == 1.0));
        let p = &values[t_count + t];
        let rate = labels.iter().filter(|&&l| l).count() as f64 / rows as f64;
        let mean_p = p.iter().map(|&x| x as f64).sum::<f64>() / rows as f64;
        // The empirical rate is within four standard errors of the mean probability.
        let se = (mean_p * (1.0 - mean_p) / rows as f64).sqrt();
        assert!(
            (rate - mean_p).abs() < 4.0 * se + 1e-4,
            "task {t}: rate {rate}, mean p {mean_p}"
        );
        // The true probabilities rank the labels well above chance.
        assert!(auc(p, &labels).unwrap() > 0.65, "task {t}");
        rates.push(rate);
    }
    assert!(
        rates[0] > 5.0 * rates[t_count - 1],
        "tasks differ in sparsity: {rates:?}"
    );
    let tab = &values[2 * t_count];
    let click_rate = |d: f32| {
        let rows: Vec<usize> = (0..rows).filter(|&i| tab[i] == d).collect();
        rows.iter().filter(|&&i| values[0][i] == 1.0).count() as f64 / rows.len() as f64
    };
    assert!(
        (click_rate(0.0) - click_rate(2.0)).abs() > 0.03,
        "domains differ"
    );
}

#[test]
fn same_seed_same_file_and_parquet_matches_csv() {
    let spec = spec();
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a.csv"),
        dir.path().join("b.csv"),
        dir.path().join("c.parquet"),
    );
    pepnet_io::datagen::write(&spec, 3000, 0, 9, &a).unwrap();
    pepnet_io::datagen::write(&spec, 3000, 0, 9, &b).unwrap();
    pepnet_io::datagen::write(&spec, 3000, 0, 9, &c).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let names = vec![
        "p_click".to_string(),
        "like".to_string(),
        "log_duration".to_string(),
    ];
    assert_eq!(
        pepnet_io::read_number_columns(&a, &names).unwrap(),
        pepnet_io::read_number_columns(&c, &names).unwrap()
    );
    pepnet_io::datagen::write(&spec, 3000, 0, 10, &b).unwrap();
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

/// `--drift`: without it the file is `write`'s; with it, a file one period later (same seed)
/// has the same users with each other id's popular head moved a quarter along its vocabulary,
/// and the users' interests turned (the true probabilities of the same rows differ).
#[test]
fn a_drifting_stream_moves_popularity_and_interests() {
    use pepnet_io::datagen::{write, write_drifting, Drift};
    let spec = spec();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rows = 500;
    write(&spec, rows, 0, 4, &d.join("plain.csv")).unwrap();
    write_drifting(&spec, rows, 0, 4, None, &d.join("none.csv")).unwrap();
    assert_eq!(
        std::fs::read(d.join("plain.csv")).unwrap(),
        std::fs::read(d.join("none.csv")).unwrap()
    );
    // 1 250 000 rows a period: video_id (5 000 ids) shifts by 1 250 every period, and by one
    // id every 1 000 rows, so none within these 500.
    let period = 1_250_000;
    for (name, start) in [("t0.csv", 0), ("t1.csv", period)] {
        let drift = Some(Drift { period, start });
        write_drifting(&spec, rows, 0, 4, drift, &d.join(name)).unwrap();
    }
    let cols: Vec<String> = ["user_id", "video_id", "author_id", "tab", "p_click"]
        .map(String::from)
        .to_vec();
    let read = |name: &str| pepnet_io::read_number_columns(&d.join(name), &cols).unwrap();
    let (plain, t0, t1) = (read("plain.csv"), read("t0.csv"), read("t1.csv"));
    // Over the first 500 rows of 1 250 000 nothing has moved but a user's interest, by less
    // than 2^-10 of a turn.
    assert!(plain[..4] == t0[..4], "the ids moved at time 0");
    let most = (0..rows)
        .map(|i| (plain[4][i] - t0[4][i]).abs())
        .fold(0.0f32, f32::max);
    assert!(most < 1e-3, "p_click moved by {most} at time 0");
    assert!(t0[0] == t1[0], "the same users");
    assert!(t0[3] == t1[3], "the same domains");
    for i in 0..rows {
        assert_eq!(
            t1[1][i],
            ((t0[1][i] as u64 + 1250) % 5000) as f32,
            "video_id, row {i}"
        );
        assert_eq!(
            t1[2][i],
            ((t0[2][i] as u64 + 200) % 800) as f32,
            "author_id, row {i}"
        );
    }
    let moved = (0..rows)
        .filter(|&i| (t0[4][i] - t1[4][i]).abs() > 1e-3)
        .count();
    assert!(
        moved > rows / 2,
        "p_click moved in only {moved} of {rows} rows"
    );
}
