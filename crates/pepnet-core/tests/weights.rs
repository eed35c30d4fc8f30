//! `weights.safetensors` through the library: f16 files, the save/load round trip, non-finite
//! weights, and whole model directories.

use half::f16;
use pepnet_core::spec::ModelSpec;
use pepnet_core::{Error, Model, Weights};
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
    let spec = spec();
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
