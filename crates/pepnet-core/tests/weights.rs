//! `weights.safetensors` through the library: f16 files, the save/load round trip, non-finite
//! weights, and whole model directories.

use half::f16;
use pepnet_core::spec::ModelSpec;
use pepnet_core::{BiasInit, EmbeddingInit, Error, InitSpec, Model, Weights};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// Small, but with every kind of tensor: embeddings of each kind, EPNet, PPNet, experts, MMoE
/// gates and towers.
const SPEC: &str = r#"{
  "embedding_dim": 3,
  "domain_feature": "tab",
  "tasks": ["click", "like"],
  "features": [
    {"name": "tab", "kind": "sparse", "vocab": 2, "roles": ["domain"]},
    {"name": "user_id", "kind": "sparse", "vocab": 7, "roles": ["general", "prior"]},
    {"name": "tags", "kind": "multi_hot", "vocab": 5, "max_len": 3, "pooling": "sum", "roles": ["general"]},
    {"name": "dur", "kind": "dense", "roles": ["general", "domain"]}
  ],
  "epnet": {"hidden": 4},
  "ppnet": {"hidden": 5},
  "experts": {"count": 2, "hidden": [6, 4]},
  "towers": [3]
}"#;

fn spec() -> ModelSpec {
    ModelSpec::from_json(SPEC, "spec.json").unwrap()
}

/// Serialises `(name, dtype, shape, bytes)` tensors.
fn serialize(tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views = tensors.iter().map(|(name, dtype, shape, bytes)| {
        (
            name.as_str(),
            TensorView::new(*dtype, shape.clone(), bytes).unwrap(),
        )
    });
    safetensors::serialize(views, None).unwrap()
}

/// `weights` as an all-f16 safetensors file.
fn to_f16_safetensors(weights: &Weights) -> Vec<u8> {
    let tensors: Vec<_> = weights
        .iter()
        .map(|(name, t)| {
            let bytes = t
                .data
                .iter()
                .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                .collect();
            (name.to_string(), Dtype::F16, t.shape.clone(), bytes)
        })
        .collect();
    serialize(&tensors)
}

#[test]
fn every_tensor_the_spec_asks_for_is_initialised() {
    let mut spec = spec();
    // Every tensor non-zero: biases too.
    spec.init = Some(InitSpec::unit_uniform(spec.embedding_dim));
    let weights = Weights::init(&spec, 3);
    let expected = spec.expected_tensors();
    let got: Vec<(String, Vec<usize>)> = weights
        .iter()
        .map(|(name, t)| (name.to_string(), t.shape.clone()))
        .collect();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(got, want);
    for (name, t) in weights.iter() {
        assert_eq!(t.data.len(), t.shape.iter().product::<usize>(), "{name}");
        assert!(t.data.iter().all(|x| x.is_finite()), "{name}");
        assert!(t.data.iter().any(|&x| x != 0.0), "{name} is all zeros");
    }
}

/// Mean and standard deviation.
fn moments(xs: &[f32]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

fn kuairand_spec() -> ModelSpec {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/kuairand/model.json"
    );
    ModelSpec::load(std::path::Path::new(path)).unwrap()
}

/// Each scheme's draws have its distribution's moments (over the example's 125 000 embedding
/// elements and 17 000 weights, where a 4% error of the standard deviation is > 10 sigmas).
#[test]
fn init_draws_each_scheme_s_distribution() {
    let check = |spec: &ModelSpec, want_emb_std: f64, emb_bound: Option<f64>, zero_bias: bool| {
        let weights = Weights::init(spec, 11);
        let (mut emb, mut fan_in_ok, mut xavier) = (Vec::new(), true, Vec::new());
        let tensors: std::collections::HashMap<&str, _> = weights.iter().collect();
        for (name, t) in weights.iter() {
            if name.starts_with("emb.") {
                emb.extend_from_slice(&t.data);
            } else if name.ends_with(".weight") {
                let bound = (6.0 / (t.shape[0] + t.shape[1]) as f64).sqrt() as f32;
                assert!(
                    t.data.iter().all(|x| x.abs() <= bound),
                    "{name}: beyond Xavier"
                );
                xavier.extend(t.data.iter().map(|&x| x / bound));
            } else if zero_bias {
                assert!(t.data.iter().all(|&x| x == 0.0), "{name}: a bias not zero");
            } else {
                let weight = tensors[name.replace(".bias", ".weight").as_str()];
                let bound = 1.0 / (weight.shape[1] as f32).sqrt();
                fan_in_ok &= t.data.iter().all(|x| x.abs() <= bound);
                assert!(t.data.iter().any(|&x| x != 0.0), "{name}: all zero");
            }
        }
        assert!(fan_in_ok, "a bias beyond ±1/√fan_in");
        let (mean, std) = moments(&emb);
        assert!(mean.abs() < 0.02 * want_emb_std, "embedding mean {mean}");
        assert!(
            (std / want_emb_std - 1.0).abs() < 0.04,
            "embedding std {std}, want {want_emb_std}"
        );
        if let Some(b) = emb_bound {
            assert!(emb.iter().all(|x| (x.abs() as f64) <= b));
        }
        // Weights over their bound: uniform in ±1, std 1/√3.
        let (_, std) = moments(&xavier);
        assert!((std * 3f64.sqrt() - 1.0).abs() < 0.04, "Xavier std {std}");
    };
    let mut spec = kuairand_spec();
    assert_eq!(spec.init, None);
    // The default: N(0, 0.05²) rows, zero biases.
    check(&spec, 0.05, None, true);
    spec.init = Some(InitSpec {
        embedding: EmbeddingInit::Normal { std: 0.2 },
        bias: BiasInit::Zero,
    });
    check(&spec, 0.2, None, true);
    spec.init = Some(InitSpec::unit_uniform(16));
    let bound = (3.0f64 / 16.0).sqrt();
    check(&spec, bound / 3f64.sqrt(), Some(bound), false);
}

#[test]
fn a_fresh_model_records_its_scheme_and_bad_schemes_are_refused() {
    let model = Model::init(kuairand_spec(), 1).unwrap();
    assert_eq!(model.spec.init, Some(InitSpec::default()));
    let json = model.spec.to_json();
    assert!(json.contains(r#""bias": "zero""#), "{json}");
    assert_eq!(ModelSpec::from_json(&json, "m.json").unwrap(), model.spec);
    let with = |init: &str| SPEC.replacen('{', &format!("{{\"init\": {init},"), 1);
    let ok = ModelSpec::from_json(
        &with(r#"{"embedding": {"uniform": {"bound": 0.3}}, "bias": "fan_in"}"#),
        "s.json",
    )
    .unwrap();
    assert_eq!(
        ok.init,
        Some(InitSpec {
            embedding: EmbeddingInit::Uniform { bound: 0.3 },
            bias: BiasInit::FanIn
        })
    );
    for (init, want) in [
        (
            r#"{"embedding": {"normal": {"std": 0}}}"#,
            "init.embedding.normal.std",
        ),
        (
            r#"{"embedding": {"normal": {"std": 1e9}}}"#,
            "init.embedding.normal.std",
        ),
        (
            r#"{"embedding": {"uniform": {"bound": -1}}}"#,
            "init.embedding.uniform.bound",
        ),
        (r#"{"embedding": {"gauss": {"std": 1}}}"#, "gauss"),
        (r#"{"bias": "ones"}"#, "ones"),
        (r#"{"seed": 3}"#, "seed"),
    ] {
        let err = ModelSpec::from_json(&with(init), "s.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(want) && err.contains("s.json"),
            "{init}: {err}"
        );
    }
}

#[test]
fn init_depends_on_the_seed_only() {
    let spec = spec();
    assert_eq!(Weights::init(&spec, 9), Weights::init(&spec, 9));
    assert_ne!(Weights::init(&spec, 9), Weights::init(&spec, 10));
}

#[test]
fn f32_round_trip_is_exact() {
    let spec = spec();
    let weights = Weights::init(&spec, 1);
    let bytes = weights.to_safetensors();
    let loaded = Weights::from_safetensors(&bytes, "w.safetensors", &spec).unwrap();
    assert_eq!(loaded, weights);
    for ((n1, t1), (n2, t2)) in loaded.iter().zip(weights.iter()) {
        assert_eq!(n1, n2);
        let (b1, b2): (Vec<u32>, Vec<u32>) = (
            t1.data.iter().map(|x| x.to_bits()).collect(),
            t2.data.iter().map(|x| x.to_bits()).collect(),
        );
        assert_eq!(b1, b2, "{n1}: bits differ after the round trip");
    }
    assert_eq!(
        loaded.to_safetensors(),
        bytes,
        "saving again changes the file"
    );
}

#[test]
fn f16_weights_load_as_the_f32_ones_rounded_to_f16() {
    let spec = spec();
    let weights = Weights::init(&spec, 2);
    let bytes = to_f16_safetensors(&weights);
    let loaded = Weights::from_safetensors(&bytes, "w16.safetensors", &spec).unwrap();
    let mut rounded_any = false;
    for ((name, want), (loaded_name, got)) in weights.iter().zip(loaded.iter()) {
        assert_eq!(name, loaded_name);
        assert_eq!(got.shape, want.shape, "{name}");
        assert_eq!(got.data.len(), want.data.len(), "{name}");
        for (i, (&g, &w)) in got.data.iter().zip(&want.data).enumerate() {
            let expected = f16::from_f32(w).to_f32();
            assert_eq!(
                g.to_bits(),
                expected.to_bits(),
                "{name}[{i}]: loaded {g}, expected {w} rounded to f16 = {expected}"
            );
            rounded_any |= g != w;
        }
    }
    assert!(
        rounded_any,
        "f16 rounding changed nothing; the test is vacuous"
    );

    // Through the file system too.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w16.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(Weights::load(&path, &spec).unwrap(), loaded);
}

/// Asserts `result` is a tensor error naming `tensor`, whose message holds each needle.
fn assert_tensor_error(result: pepnet_core::Result<Weights>, tensor: &str, needles: &[&str]) {
    let e = match result {
        Err(e) => e,
        Ok(_) => panic!("expected a tensor error naming '{tensor}', but loading succeeded"),
    };
    let Error::Tensor { tensor: named, .. } = &e else {
        panic!("expected a tensor error naming '{tensor}', got: {e}");
    };
    assert_eq!(named, tensor, "wrong tensor named in: {e}");
    let text = e.to_string();
    assert!(text.contains("w.safetensors"), "no file name in: {text}");
    assert!(text.contains(tensor), "no tensor name in: {text}");
    for needle in needles {
        assert!(text.contains(needle), "{needle:?} not in: {text}");
    }
}

#[test]
fn non_finite_f32_weight_is_an_error_naming_the_tensor() {
    let spec = spec();
    for (name, bad, shown) in [
        ("tower.like.0.weight", f32::NAN, "NaN"),
        ("emb.tags", f32::INFINITY, "inf"),
        ("expert.1.0.bias", f32::NEG_INFINITY, "-inf"),
    ] {
        let mut weights = Weights::init(&spec, 4);
        weights.get_mut(name).unwrap().data[2] = bad;
        let bytes = weights.to_safetensors();
        assert_tensor_error(
            Weights::from_safetensors(&bytes, "w.safetensors", &spec),
            name,
            &["element 2", shown],
        );
    }
}

#[test]
fn non_finite_f16_weight_is_an_error_naming_the_tensor() {
    let spec = spec();
    // 1e5 is finite in f32 but overflows f16 to infinity.
    for (name, bad) in [
        ("mmoe_gate.click.weight", 1e5f32),
        ("ppnet.1.fc2.bias", f32::NAN),
    ] {
        let mut weights = Weights::init(&spec, 5);
        weights.get_mut(name).unwrap().data[0] = bad;
        let bytes = to_f16_safetensors(&weights);
        assert_tensor_error(
            Weights::from_safetensors(&bytes, "w.safetensors", &spec),
            name,
            &["element 0"],
        );
    }
}

#[test]
fn bytes_that_are_not_safetensors_are_an_error_naming_the_file() {
    let err =
        Weights::from_safetensors(b"\x08\0\0\0\0\0\0\0{}", "w.safetensors", &spec()).unwrap_err();
    assert!(
        matches!(err, Error::Weights { .. }),
        "expected a weights file error, got {err:?}"
    );
    assert!(err.to_string().contains("w.safetensors"), "{err}");
}

#[test]
fn model_save_then_load_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("nested").join("model");
    let model = Model::init(spec(), 6).unwrap();
    model.save(&model_dir).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&model_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["model.json", "weights.safetensors"],
        "save writes exactly the two files, no temporaries"
    );
    let loaded = Model::load(&model_dir).unwrap();
    assert_eq!(loaded, model);

    // Saving another model over it replaces both files.
    let other = Model::init(spec(), 7).unwrap();
    other.save(&model_dir).unwrap();
    assert_eq!(Model::load(&model_dir).unwrap(), other);
    assert_ne!(other, model);
}

#[test]
fn model_load_checks_weights_against_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let model = Model::init(spec(), 8).unwrap();
    model.save(dir.path()).unwrap();
    // Same weights, but a spec with wider towers: the tower tensors no longer fit.
    let wider = SPEC.replace(r#""towers": [3]"#, r#""towers": [4]"#);
    assert_ne!(wider, SPEC);
    std::fs::write(dir.path().join("model.json"), wider).unwrap();
    let err = Model::load(dir.path()).unwrap_err();
    match &err {
        Error::Tensor {
            tensor, message, ..
        } => {
            assert!(
                tensor.starts_with("ppnet.") || tensor.starts_with("tower."),
                "{err}"
            );
            assert!(message.contains("expected shape"), "{err}");
        }
        _ => panic!("expected a tensor error, got {err}"),
    }
}
