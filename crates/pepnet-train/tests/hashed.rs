//! Training hashed features (raw 64-bit ids, a GPU working set over a host table):
//!
//! - at any working-set capacity (tiny: the most distinct ids of one batch; half the largest
//!   vocabulary; all of it), admission on first sight and no expiry, the trained weights equal,
//!   bit for bit, those of training the same data with the ids mapped to a vocabulary whose
//!   rows start as the created rows do; and the exported model holds exactly the ids seen;
//! - admission after k occurrences and expiry after E steps do what a CPU model of the same
//!   rules says (rows created, expired, occurrences not admitted, ids held at the end);
//! - a batch with more distinct ids than the working set is an error naming the feature.

#[path = "../../pepnet-core/tests/common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};

use common::{gpu, random_batch, rng};
use pepnet_core::batch::{Batch, Column};
use pepnet_core::weights::names;
use pepnet_core::{Model, ModelSpec};
use pepnet_train::hashed::fresh_row;
use pepnet_train::{HashedOptions, HashedTrainer, Trainer, TrainerOptions};
use rand::RngExt;

const SPEC: &str = r#"{
  "embedding_dim": 5, "domain_feature": "tab", "tasks": ["a", "b"],
  "features": [
    {"name": "tab", "kind": "sparse", "vocab": 3, "roles": ["domain"]},
    {"name": "user", "kind": "sparse", "vocab": 60, "roles": ["general", "prior"]},
    {"name": "item", "kind": "sparse", "vocab": 90, "roles": ["general", "prior"]},
    {"name": "tags", "kind": "multi_hot", "vocab": 25, "max_len": 3, "pooling": "mean",
     "roles": ["general"]},
    {"name": "dur", "kind": "dense", "roles": ["general", "domain"]}
  ],
  "epnet": {"hidden": 6}, "ppnet": {"hidden": 7}, "towers": [8, 5]
}"#;

const HASHED: [&str; 3] = ["user", "item", "tags"];
const ROW_SEED: u64 = 77;

/// Vocabulary id `i` of feature `f` as a raw id: distinct per feature, spread over 64 bits.
fn raw(f: usize, i: u64) -> u64 {
    (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((f as u64) << 59)
}

fn vocab_spec() -> ModelSpec {
    ModelSpec::from_json(SPEC, "spec.json").unwrap()
}

fn hashed_spec() -> ModelSpec {
    let mut spec = vocab_spec();
    for f in spec.features.iter_mut() {
        if HASHED.contains(&f.name.as_str()) {
            f.hashed = true;
            f.vocab = None;
        }
    }
    spec.validate().unwrap();
    spec
}

/// `batch` (vocabulary ids) with the hashed features' ids made raw.
fn to_raw(spec: &ModelSpec, batch: &Batch) -> Batch {
    let mut out = batch.clone();
    for (f, col) in out.columns.iter_mut().enumerate() {
        if !HASHED.contains(&spec.features[f].name.as_str()) {
            continue;
        }
        match col {
            Column::Sparse(v) => v.iter_mut().for_each(|x| *x = raw(f, *x)),
            Column::MultiHot { ids, .. } => ids.iter_mut().for_each(|x| *x = raw(f, *x)),
            Column::Dense(_) => {}
        }
    }
    out
}

/// Batches whose ids come from a Zipf-like skew (a few hot ids, a long tail), so that the
/// working set both hits and misses.
fn batches(n: usize, rows: usize) -> Vec<(Batch, Vec<f32>)> {
    let mut r = rng(41);
    let spec = vocab_spec();
    (0..n)
        .map(|_| {
            let mut batch = random_batch(&mut r, &spec, rows);
            for (f, col) in batch.columns.iter_mut().enumerate() {
                let vocab = spec.features[f].vocab.unwrap_or(1) as f64;
                let mut skew = |x: &mut u64| {
                    let u: f64 = r.random_range(0.0..1.0);
                    *x = (vocab * u * u * u) as u64;
                };
                match col {
                    Column::Sparse(v) if f != 0 => v.iter_mut().for_each(&mut skew),
                    Column::MultiHot { ids, .. } => ids.iter_mut().for_each(&mut skew),
                    _ => {}
                }
            }
            let labels = (0..rows * 2).map(|_| r.random_range(0..2) as f32).collect();
            (batch, labels)
        })
        .collect()
}

fn options() -> TrainerOptions {
    TrainerOptions {
        batch_size: 32,
        ..Default::default()
    }
}

/// The most distinct ids one batch reads of one hashed feature.
fn most_distinct(data: &[(Batch, Vec<f32>)]) -> usize {
    let spec = vocab_spec();
    let mut most = 0;
    for (batch, _) in data {
        for (f, col) in batch.columns.iter().enumerate() {
            if !HASHED.contains(&spec.features[f].name.as_str()) {
                continue;
            }
            let ids: HashSet<u64> = match col {
                Column::Sparse(v) => v.iter().copied().collect(),
                Column::MultiHot { ids, .. } => ids.iter().copied().collect(),
                Column::Dense(_) => HashSet::new(),
            };
            most = most.max(ids.len());
        }
    }
    most
}

#[test]
fn hashed_training_at_any_capacity_equals_vocabulary_training_bit_for_bit() {
    let data = batches(14, 32);
    let hashed_model = Model::init(hashed_spec(), 5).unwrap();
    let d = hashed_model.spec.d();
    let scheme = hashed_model.spec.init.unwrap().embedding;

    // The vocabulary twin: the same dense weights and tables, and each hashed table's row i
    // the row the hashed trainer creates for raw(f, i).
    let mut vocab_model = Model::init(vocab_spec(), 9).unwrap();
    vocab_model.spec.init = hashed_model.spec.init;
    for (name, t) in hashed_model.weights.iter() {
        vocab_model.weights.get_mut(name).unwrap().data = t.data.clone();
    }
    let spec = vocab_spec();
    for (f, feature) in spec.features.iter().enumerate() {
        if !HASHED.contains(&feature.name.as_str()) {
            continue;
        }
        let rows: Vec<f32> = (0..feature.vocab.unwrap() as u64)
            .flat_map(|i| fresh_row(scheme, ROW_SEED, &feature.name, raw(f, i), d))
            .collect();
        vocab_model
            .weights
            .get_mut(&names::table(&feature.name))
            .unwrap()
            .data = rows;
    }
    let mut trainer = Trainer::new(gpu(), &vocab_model, None, &options()).unwrap();
    for (batch, labels) in &data {
        trainer.step(batch, labels).unwrap();
    }
    let want = trainer.model().unwrap();

    let tiny = most_distinct(&data);
    assert!(tiny < 45, "tiny {tiny} is below half");
    for capacity in [tiny, 45, 90] {
        let hashed = HashedOptions {
            capacity,
            admit_after: 1,
            expire_after: None,
            seed: ROW_SEED,
            vocab_tables: false,
        };
        let mut t = HashedTrainer::new(gpu(), &hashed_model, None, &options(), hashed).unwrap();
        for (batch, labels) in &data {
            t.step(&to_raw(&spec, batch), labels).unwrap();
        }
        let got = t.model().unwrap();
        let stats = t.stats().clone();
        if capacity == tiny {
            assert!(stats.evicted > 0 && stats.loaded > 0, "{stats:?}");
        }
        if capacity == 90 {
            assert_eq!((stats.evicted, stats.loaded), (0, 0), "{stats:?}");
        }
        for (name, tensor) in got.weights.iter() {
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert!(
                bits(&tensor.data) == bits(&want.weights.get(name).data),
                "capacity {capacity}: tensor '{name}' differs from vocabulary training"
            );
        }
        for (f, feature) in spec.features.iter().enumerate() {
            if !HASHED.contains(&feature.name.as_str()) {
                continue;
            }
            let stored = got.weights.hashed(&feature.name).unwrap();
            let table = &want.weights.get(&names::table(&feature.name)).data;
            let seen: HashSet<u64> = data
                .iter()
                .flat_map(|(b, _)| match &b.columns[f] {
                    Column::Sparse(v) => v.clone(),
                    Column::MultiHot { ids, .. } => ids.clone(),
                    Column::Dense(_) => Vec::new(),
                })
                .collect();
            assert_eq!(
                stored.ids.len(),
                seen.len(),
                "{}: one row per id seen",
                feature.name
            );
            assert!(stats.created as usize >= seen.len());
            for i in &seen {
                let k = stored.ids.iter().position(|&id| id == raw(f, *i)).unwrap();
                let (a, b) = (&stored.rows[k * d..][..d], &table[*i as usize * d..][..d]);
                assert!(
                    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "capacity {capacity}: {} row of id {i} differs: {a:?} vs {b:?}",
                    feature.name
                );
            }
        }
        // The exported model loads and scores as any hashed model does.
        let dir = tempfile::tempdir().unwrap();
        got.save(dir.path()).unwrap();
        assert_eq!(Model::load(dir.path()).unwrap(), got);
    }
}

/// What the rules say, replayed on the host: (created, expired, not admitted, ids held).
fn cpu_model(
    data: &[(Batch, Vec<f32>)],
    spec: &ModelSpec,
    admit: u32,
    expire: Option<u64>,
) -> (u64, u64, u64, Vec<HashSet<u64>>) {
    let (mut created, mut expired, mut not_admitted) = (0, 0, 0);
    let mut held = Vec::new();
    for (f, feature) in spec.features.iter().enumerate() {
        if !HASHED.contains(&feature.name.as_str()) {
            continue;
        }
        let mut last: HashMap<u64, u64> = HashMap::new();
        let mut sightings: HashMap<u64, u32> = HashMap::new();
        for (s, (batch, _)) in data.iter().enumerate() {
            let s = s as u64;
            let ids = match &batch.columns[f] {
                Column::Sparse(v) => v.clone(),
                Column::MultiHot { ids, .. } => ids.clone(),
                Column::Dense(_) => Vec::new(),
            };
            let mut order = Vec::new();
            let mut count: HashMap<u64, u32> = HashMap::new();
            for id in ids {
                if count
                    .insert(id, count.get(&id).copied().unwrap_or(0) + 1)
                    .is_none()
                {
                    order.push(id);
                }
            }
            for id in order {
                if let (Some(e), Some(&l)) = (expire, last.get(&id)) {
                    if s - l > e {
                        last.remove(&id);
                        expired += 1;
                    }
                }
                if !last.contains_key(&id) {
                    let seen = sightings.entry(id).or_insert(0);
                    *seen += count[&id];
                    if *seen < admit {
                        not_admitted += count[&id] as u64;
                        continue;
                    }
                    sightings.remove(&id);
                    created += 1;
                }
                last.insert(id, s);
            }
        }
        let end = data.len() as u64;
        if let Some(e) = expire {
            let before = last.len();
            last.retain(|_, l| end - *l <= e);
            expired += (before - last.len()) as u64;
        }
        held.push(last.keys().map(|&i| raw(f, i)).collect());
    }
    (created, expired, not_admitted, held)
}

#[test]
fn admission_and_expiry_follow_a_cpu_model_of_the_rules() {
    let data = batches(16, 32);
    let spec = vocab_spec();
    let model = Model::init(hashed_spec(), 6).unwrap();
    for (admit, expire, capacity) in [(3, None, 90), (1, Some(2), 90), (2, Some(4), 40)] {
        let hashed = HashedOptions {
            capacity,
            admit_after: admit,
            expire_after: expire,
            seed: ROW_SEED,
            vocab_tables: false,
        };
        let mut t = HashedTrainer::new(gpu(), &model, None, &options(), hashed).unwrap();
        for (batch, labels) in &data {
            t.step(&to_raw(&spec, batch), labels).unwrap();
        }
        let got = t.model().unwrap();
        let stats = t.stats().clone();
        let (created, expired, not_admitted, held) = cpu_model(&data, &spec, admit, expire);
        let what = format!("admit {admit}, expire {expire:?}, capacity {capacity}: {stats:?}");
        assert_eq!(stats.created, created, "{what}");
        assert_eq!(stats.expired, expired, "{what}");
        assert_eq!(stats.not_admitted, not_admitted, "{what}");
        assert!(
            not_admitted > 0 || admit == 1,
            "{what}: nothing waited for admission"
        );
        assert!(expired > 0 || expire.is_none(), "{what}: nothing expired");
        for (k, name) in HASHED.iter().enumerate() {
            let ids: HashSet<u64> = got
                .weights
                .hashed(name)
                .unwrap()
                .ids
                .iter()
                .copied()
                .collect();
            assert_eq!(ids, held[k], "{what}: {name}'s ids");
        }
        // Rows not admitted read the default row, which no step changes: zeros here.
        assert!(got.weights.hashed("user").unwrap().default.is_none());
    }
}

#[test]
fn a_batch_wider_than_the_working_set_is_an_error_naming_the_feature() {
    let data = batches(1, 32);
    let model = Model::init(hashed_spec(), 7).unwrap();
    let hashed = HashedOptions {
        capacity: 3,
        admit_after: 1,
        expire_after: None,
        seed: 0,
        vocab_tables: false,
    };
    let mut t = HashedTrainer::new(gpu(), &model, None, &options(), hashed).unwrap();
    let err = t
        .step(&to_raw(&vocab_spec(), &data[0].0), &data[0].1)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hashed feature 'user'") && err.contains("3 rows"),
        "{err}"
    );
}

/// Stopped after 6 steps, written (model and state) and read back, then resumed with a fresh
/// working set: the run ends where the uninterrupted one does, bit for bit.
#[test]
fn a_hashed_run_resumed_from_its_files_ends_bit_identical() {
    let data = batches(14, 32);
    let spec = vocab_spec();
    let model = Model::init(hashed_spec(), 8).unwrap();
    let hashed = HashedOptions {
        capacity: most_distinct(&data),
        admit_after: 1,
        expire_after: None,
        seed: ROW_SEED,
        vocab_tables: false,
    };
    let run = |from: &Model,
               state: Option<&pepnet_train::OptimizerState>,
               range: std::ops::Range<usize>| {
        let mut t = HashedTrainer::new(gpu(), from, state, &options(), hashed).unwrap();
        for (batch, labels) in &data[range] {
            t.step(&to_raw(&spec, batch), labels).unwrap();
        }
        t.export().unwrap()
    };
    let (want_model, want_state) = run(&model, None, 0..14);
    let (half_model, half_state) = run(&model, None, 0..6);
    let dir = tempfile::tempdir().unwrap();
    half_state.save_with(&half_model, dir.path()).unwrap();
    let loaded = Model::load(dir.path()).unwrap();
    let state = pepnet_train::OptimizerState::load(dir.path(), &loaded.spec)
        .unwrap()
        .unwrap();
    assert_eq!(state.step, 6);
    let (got_model, got_state) = run(&loaded, Some(&state), 6..14);
    assert!(got_model == want_model, "the resumed model differs");
    assert!(
        got_state == want_state,
        "the resumed optimizer state differs"
    );
}

/// A hashed feature no kernel reads (a prior without PPNet) trains as if absent: no rows are
/// made for it and its ids cannot overflow the working set.
#[test]
fn a_hashed_feature_no_kernel_reads_gets_no_rows() {
    let data = batches(3, 32);
    let mut spec = hashed_spec();
    spec.ppnet = None;
    spec.features[1].roles = vec![pepnet_core::spec::Role::Prior];
    spec.validate().unwrap();
    let model = Model::init(spec, 2).unwrap();
    let hashed = HashedOptions {
        capacity: most_distinct(&data),
        admit_after: 1,
        expire_after: None,
        seed: 0,
        vocab_tables: false,
    };
    let mut t = HashedTrainer::new(gpu(), &model, None, &options(), hashed).unwrap();
    for (batch, labels) in &data {
        t.step(&to_raw(&vocab_spec(), batch), labels).unwrap();
    }
    let got = t.model().unwrap();
    assert!(got.weights.hashed("user").unwrap().ids.is_empty());
    assert!(!got.weights.hashed("item").unwrap().ids.is_empty());
}

/// With admission after 2 occurrences and expiry after 3 steps, a run stopped after 6 steps
/// and resumed from its files (model, optimizer state, the rules' state) ends as the
/// uninterrupted one.
#[test]
fn admission_and_expiry_state_resumes_bit_identical() {
    let data = batches(14, 32);
    let spec = vocab_spec();
    let model = Model::init(hashed_spec(), 12).unwrap();
    let hashed = HashedOptions {
        capacity: 60,
        admit_after: 2,
        expire_after: Some(3),
        seed: ROW_SEED,
        vocab_tables: false,
    };
    type Run = (
        Model,
        pepnet_train::OptimizerState,
        Vec<u8>,
        pepnet_train::HashedStats,
    );
    let run = |from: &Model,
               state: Option<&pepnet_train::OptimizerState>,
               rules: Option<&[u8]>,
               range: std::ops::Range<usize>|
     -> Run {
        let mut t = HashedTrainer::new(gpu(), from, state, &options(), hashed).unwrap();
        if let Some(bytes) = rules {
            t.restore_rules(bytes, "rules").unwrap();
        }
        for (batch, labels) in &data[range] {
            t.step(&to_raw(&spec, batch), labels).unwrap();
        }
        let (m, s) = t.export().unwrap();
        let rules = t.rules_state().unwrap();
        (m, s, rules, t.stats().clone())
    };
    let (want_model, want_state, want_rules, stats) = run(&model, None, None, 0..14);
    assert!(stats.expired > 0 && stats.not_admitted > 0, "{stats:?}");
    let (half_model, half_state, half_rules, _) = run(&model, None, None, 0..6);
    let dir = tempfile::tempdir().unwrap();
    half_state.save_with(&half_model, dir.path()).unwrap();
    let loaded = Model::load(dir.path()).unwrap();
    let state = pepnet_train::OptimizerState::load(dir.path(), &loaded.spec)
        .unwrap()
        .unwrap();
    let (got_model, got_state, got_rules, _) = run(&loaded, Some(&state), Some(&half_rules), 6..14);
    assert!(got_model == want_model, "the resumed model differs");
    assert!(
        got_state == want_state,
        "the resumed optimizer state differs"
    );
    assert!(got_rules == want_rules, "the resumed rules' state differs");
    // Without the rules' state the resumed run would differ: the test can tell.
    let (other, _, _, _) = run(&loaded, Some(&state), None, 6..14);
    assert!(other != want_model, "the rules' state made no difference");
}

/// The rows changed since a step (what the online trainer publishes) are exactly the ids the
/// later steps read, with the values the exported model holds for them, wherever they live
/// (working set or host: the capacity here forces evictions); expired rows are reported as
/// dropped, once.
#[test]
fn changed_rows_are_the_ids_read_since_the_step_with_their_current_values() {
    let data = batches(12, 32);
    let spec = vocab_spec();
    let model = Model::init(hashed_spec(), 6).unwrap();
    let d = spec.d();
    for expire in [None, Some(3)] {
        let hashed = HashedOptions {
            capacity: most_distinct(&data) + 3,
            admit_after: 1,
            expire_after: expire,
            seed: ROW_SEED,
            vocab_tables: false,
        };
        let mut t = HashedTrainer::new(gpu(), &model, None, &options(), hashed).unwrap();
        for (batch, labels) in &data[..6] {
            t.step(&to_raw(&spec, batch), labels).unwrap();
        }
        t.changed_rows(0).unwrap();
        for (batch, labels) in &data[6..] {
            t.step(&to_raw(&spec, batch), labels).unwrap();
        }
        // As the online trainer does: export (a checkpoint, which drops expired rows), then
        // take what changed.
        let exported = t.model().unwrap();
        let changed = t.changed_rows(6).unwrap();
        assert!(t.stats().evicted > 0, "the working set evicted rows");
        let mut dropped_any = false;
        for c in &changed {
            let name = &spec.features[c.feature].name;
            let f = c.feature;
            // Ids read by steps 7..12, as raw ids.
            let mut read: Vec<u64> = data[6..]
                .iter()
                .flat_map(|(b, _)| match &to_raw(&spec, b).columns[f] {
                    Column::Sparse(v) => v.clone(),
                    Column::MultiHot { ids, .. } => ids.clone(),
                    Column::Dense(_) => Vec::new(),
                })
                .collect();
            read.sort_unstable();
            read.dedup();
            let held = exported.weights.hashed(name).unwrap();
            // Read lately and still held (not expired at the export), or dropped.
            let kept: Vec<u64> = read
                .iter()
                .copied()
                .filter(|id| held.ids.contains(id))
                .collect();
            assert_eq!(c.ids, kept, "expire {expire:?}: {name}'s changed ids");
            for id in read.iter().filter(|id| !held.ids.contains(id)) {
                assert!(
                    c.dropped.contains(id),
                    "{name}: id {id} expired, not dropped"
                );
            }
            for (i, id) in c.ids.iter().enumerate() {
                let at = held.ids.iter().position(|x| x == id).unwrap();
                assert_eq!(
                    c.rows[i * d..(i + 1) * d],
                    held.rows[at * d..(at + 1) * d],
                    "{name}: id {id}'s row"
                );
            }
            assert!(c.dropped.iter().all(|id| !c.ids.contains(id)));
            dropped_any |= !c.dropped.is_empty();
        }
        assert_eq!(dropped_any, expire.is_some(), "expire {expire:?}");
    }
}

/// Vocabulary tables through working sets (`vocab_tables`): every table whole on the host, a
/// working set far smaller than the tables on the GPU, and the trained weights and optimizer
/// state equal, bit for bit, those of training with the tables on the GPU; hashed features
/// beside them train as before. Resumed from its exported state, it goes on bit for bit too.
#[test]
fn vocabulary_tables_through_a_working_set_train_bit_identical_to_tables_on_the_gpu() {
    let data = batches(10, 32);
    let spec = vocab_spec();
    let model = Model::init(spec.clone(), 9).unwrap();
    let mut plain = Trainer::new(gpu(), &model, None, &options()).unwrap();
    for (batch, labels) in &data {
        plain.step(batch, labels).unwrap();
    }
    let expected = plain.model().unwrap();
    let expected_state = plain.optimizer_state().unwrap();
    let capacity = most_distinct(&data) + 2;
    assert!(capacity < 60, "smaller than every table but tab's");
    let hashed = HashedOptions {
        capacity,
        admit_after: 1,
        expire_after: None,
        seed: ROW_SEED,
        vocab_tables: true,
    };
    let mut t = HashedTrainer::new(gpu(), &model, None, &options(), hashed).unwrap();
    for (batch, labels) in &data[..6] {
        t.step(batch, labels).unwrap();
    }
    // Half-way: exported and resumed from the export, as a checkpoint is.
    let (half, half_state) = t.export().unwrap();
    let mut t = HashedTrainer::new(gpu(), &half, Some(&half_state), &options(), hashed).unwrap();
    for (batch, labels) in &data[6..] {
        t.step(batch, labels).unwrap();
    }
    assert!(t.stats().evicted > 0, "the working sets evicted rows");
    assert_eq!(t.stats().created, 0, "vocabulary rows are never created");
    let (got, state) = t.export().unwrap();
    for (name, tensor) in expected.weights.iter() {
        let mine = &got.weights.get(name);
        assert_eq!(mine.shape, tensor.shape, "{name}'s shape");
        let same = mine
            .data
            .iter()
            .zip(&tensor.data)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same,
            "{name} differs from training with the tables on the GPU"
        );
    }
    for (name, (shape, values)) in &expected_state.tensors {
        let (s, v) = &state.tensors[name];
        assert_eq!(s, shape, "{name}'s shape");
        assert!(
            v.iter()
                .zip(values)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "optimizer tensor {name} differs"
        );
    }
}
