//! `weights.safetensors`: loading (f32 or f16, checked against the spec), saving, and the
//! reproducible initialisation behind `pepnet init`.

use std::collections::BTreeMap;
use std::path::Path;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::spec::ModelSpec;

/// One tensor, held as f32 whatever its dtype on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Every tensor of a model, by name. Holds exactly the tensors the spec asks for, with the right
/// shapes: construction checks that once, so readers may index freely.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    tensors: BTreeMap<String, Tensor>,
}

impl Weights {
    /// Reads a safetensors file and checks it against the spec.
    pub fn load(path: &Path, spec: &ModelSpec) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_safetensors(&bytes, &path.display().to_string(), spec)
    }

    /// Parses safetensors bytes; `file` names them in errors.
    pub fn from_safetensors(bytes: &[u8], file: &str, spec: &ModelSpec) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Weights {
            file: file.to_string(),
            message: format!("not a valid safetensors file: {e}"),
        })?;
        let tensor_err = |tensor: &str, message: String| Error::Tensor {
            file: file.to_string(),
            tensor: tensor.to_string(),
            message,
        };
        let expected = spec.expected_tensors();
        let mut tensors = BTreeMap::new();
        for (name, shape) in &expected {
            let view = st
                .tensor(name)
                .map_err(|_| tensor_err(name, format!("missing; expected shape {shape:?}")))?;
            if view.shape() != shape.as_slice() {
                return Err(tensor_err(
                    name,
                    format!("expected shape {shape:?}, found {:?}", view.shape()),
                ));
            }
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                Dtype::F16 => view
                    .data()
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                other => {
                    return Err(tensor_err(
                        name,
                        format!("expected dtype F32 or F16, found {other:?}"),
                    ))
                }
            };
            if let Some(i) = data.iter().position(|x| !x.is_finite()) {
                return Err(tensor_err(
                    name,
                    format!("element {i} is {}; weights must be finite", data[i]),
                ));
            }
            tensors.insert(
                name.clone(),
                Tensor {
                    shape: shape.clone(),
                    data,
                },
            );
        }
        let mut extra: Vec<&str> = st
            .names()
            .into_iter()
            .filter(|n| !tensors.contains_key(*n))
            .collect();
        extra.sort_unstable();
        if let Some(name) = extra.first() {
            return Err(tensor_err(
                name,
                "not part of this model (extra tensor); the spec does not ask for it".into(),
            ));
        }
        Ok(Self { tensors })
    }

    /// Fresh weights for `spec`, the same for the same seed on every machine.
    ///
    /// Linear weights are Xavier-uniform (±√(6/(fan_in+fan_out))), as the paper initialises them;
    /// biases uniform in ±1/√fan_in, as PyTorch's `nn.Linear` does. Embedding rows are uniform in
    /// ±√(3/d), so that a vector has unit expected norm whatever the vocabulary size (Xavier over
    /// `[vocab, d]` would shrink rows of large tables towards zero).
    pub fn init(spec: &ModelSpec, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut uniform = |n: usize, a: f64| -> Vec<f32> {
            (0..n).map(|_| (rng.random_range(-a..a)) as f32).collect()
        };
        let d = spec.d();
        let mut tensors = BTreeMap::new();
        let emb_scale = (3.0 / d as f64).sqrt();
        // `expected_tensors` lists each bias right after its weight; this is that weight's fan-in.
        let mut fan_in = 1;
        for (name, shape) in spec.expected_tensors() {
            let n: usize = shape.iter().product();
            let data = if name.starts_with("emb.") {
                uniform(n, emb_scale)
            } else if name.ends_with(".weight") {
                fan_in = shape[1];
                uniform(n, (6.0 / (shape[0] + shape[1]) as f64).sqrt())
            } else {
                uniform(n, 1.0 / (fan_in as f64).sqrt())
            };
            tensors.insert(name, Tensor { shape, data });
        }
        Self { tensors }
    }

    /// Writes the tensors as f32 safetensors.
    pub fn to_safetensors(&self) -> Vec<u8> {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let data = bytemuck::cast_slice::<f32, u8>(&t.data).to_vec();
                (name.clone(), t.shape.clone(), data)
            })
            .collect();
        let views = bytes.iter().map(|(name, shape, data)| {
            let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data)
                .expect("shape and data agree by construction");
            (name.as_str(), view)
        });
        safetensors::serialize(views, None).expect("in-memory serialisation cannot fail")
    }

    pub fn get(&self, name: &str) -> &Tensor {
        self.tensors.get(name).unwrap_or_else(|| {
            panic!("tensor '{name}' is not in the model (a bug: names come from the spec)")
        })
    }

    /// Mutable access, for tools and tests that perturb weights.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Tensor> {
        self.tensors.get_mut(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }
}
