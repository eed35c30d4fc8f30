//! The optimizer state saved beside a model so that training resumes where it stopped:
//! `optimizer.safetensors` holds Adam's moments per dense tensor (`adam.m.<tensor>`,
//! `adam.v.<tensor>`), AdaGrad's squared-gradient sums per embedding table
//! (`adagrad.emb.<feature>`), and the step count in its metadata (`step`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use pepnet_core::atomic_file;
use pepnet_core::error::{Error, Result};
use pepnet_core::gpu::gather::layout::GatherLayout;
use pepnet_core::model::embedding;
use pepnet_core::plan::PackedWeights;
use pepnet_core::spec::ModelSpec;

pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// The most steps a saved state may count: the GPU's step counter is an i32, and Adam's bias
/// correction divides by 1 − β^step, which a wrapped counter would make 0.
pub const MAX_STEP: u64 = i32::MAX as u64 / 2;

/// Adam's and AdaGrad's state, by tensor name, with the number of steps taken.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerState {
    pub step: u64,
    /// `adam.m.<tensor>`, `adam.v.<tensor>` and `adagrad.<emb tensor>`, each shaped as its tensor.
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

/// The state's tensors for `spec`, with their shapes.
fn expected(spec: &ModelSpec) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for (name, shape) in spec.expected_tensors() {
        if embedding::is_embedding(&name) {
            out.push((format!("adagrad.{name}"), shape));
        } else {
            out.push((format!("adam.m.{name}"), shape.clone()));
            out.push((format!("adam.v.{name}"), shape));
        }
    }
    out
}

/// Each gathered embedding table's rows, by tensor name, out of a page laid out by `layout`.
pub(crate) fn unpack_page(
    spec: &ModelSpec,
    layout: &GatherLayout,
    page: &[f32],
) -> Vec<(String, Vec<f32>)> {
    let d = spec.d();
    spec.features
        .iter()
        .zip(&layout.placement)
        .filter_map(|(f, placed)| {
            let (_, base) = (*placed)?;
            let start = base as usize * d;
            let rows = page[start..start + f.rows() * d].to_vec();
            Some((embedding::table(&f.name), rows))
        })
        .collect()
}

impl OptimizerState {
    /// Builds the state from the device's layouts: moments packed as the dense weights, sums
    /// laid out as the embedding page.
    pub(crate) fn from_device_layout(
        spec: &ModelSpec,
        packed: &PackedWeights,
        layout: &GatherLayout,
        step: u64,
        m: &[f32],
        v: &[f32],
        sum_sq: &[f32],
    ) -> Self {
        let shapes: HashMap<String, Vec<usize>> = spec.expected_tensors().into_iter().collect();
        let mut tensors = BTreeMap::new();
        for (prefix, data) in [("adam.m", m), ("adam.v", v)] {
            for (name, t) in packed.unpack(spec, data) {
                tensors.insert(format!("{prefix}.{name}"), (shapes[&name].clone(), t));
            }
        }
        // Every table gets its sums, zeros for one no kernel reads (a domain feature without
        // EPNet), so that the file's contents follow from the spec alone.
        let mut sums: HashMap<String, Vec<f32>> =
            unpack_page(spec, layout, sum_sq).into_iter().collect();
        for (name, shape) in spec.expected_tensors() {
            if embedding::is_embedding(&name) {
                let data = sums
                    .remove(&name)
                    .unwrap_or_else(|| vec![0.0; shape.iter().product()]);
                tensors.insert(format!("adagrad.{name}"), (shape, data));
            }
        }
        Self { step, tensors }
    }

    /// Checks the state against the spec: every tensor [`OptimizerState::load`] requires, with
    /// its tensor's shape. Errors name the tensor.
    pub fn check(&self, spec: &ModelSpec) -> Result<()> {
        if self.step > MAX_STEP {
            return Err(Error::Weights {
                file: OPTIMIZER_FILE.into(),
                message: format!(
                    "metadata 'step' is {}; a resumed run counts at most {MAX_STEP} steps",
                    self.step
                ),
            });
        }
        let wanted: HashMap<String, Vec<usize>> = expected(spec).into_iter().collect();
        // A hashed feature's rows' sums, `[rows, d]` in the order of the model's stored ids.
        let hashed: HashMap<String, usize> = spec
            .features
            .iter()
            .filter(|f| f.hashed)
            .map(|f| (format!("adagrad.{}", embedding::table(&f.name)), spec.d()))
            .collect();
        for (name, (shape, data)) in &self.tensors {
            let Some(&d) = hashed.get(name) else { continue };
            let fits = shape.len() == 2 && shape[1] == d && data.len() == shape[0] * d;
            let bad = data.iter().position(|x| !x.is_finite() || *x < 0.0);
            if !fits || bad.is_some() {
                return Err(Error::Tensor {
                    file: OPTIMIZER_FILE.into(),
                    tensor: name.clone(),
                    message: match bad {
                        Some(i) if fits => {
                            format!(
                                "element {i} is {}; expected a finite, non-negative number",
                                data[i]
                            )
                        }
                        _ => format!("expected shape [rows, {d}], found {shape:?}"),
                    },
                });
            }
        }
        let known = |n: &String| wanted.contains_key(n) || hashed.contains_key(n);
        if let Some(name) = self.tensors.keys().find(|n| !known(n)) {
            return Err(Error::Tensor {
                file: OPTIMIZER_FILE.into(),
                tensor: name.clone(),
                message: "not part of this model's optimizer state (extra tensor)".into(),
            });
        }
        for (name, shape) in expected(spec) {
            let err = |message: String| Error::Tensor {
                file: OPTIMIZER_FILE.into(),
                tensor: name.clone(),
                message,
            };
            match self.tensors.get(&name) {
                None => return Err(err(format!("missing; expected shape {shape:?}"))),
                Some((s, data)) if *s != shape || data.len() != shape.iter().product::<usize>() => {
                    return Err(err(format!(
                        "expected shape {shape:?}, found {s:?} with {} values",
                        data.len()
                    )))
                }
                Some((_, data)) => {
                    // Adam's first moment is any finite number; the second moment and
                    // AdaGrad's sums are sums of squares, so also not negative.
                    let signed = name.starts_with("adam.m.");
                    if let Some(i) = data
                        .iter()
                        .position(|x| !x.is_finite() || (!signed && *x < 0.0))
                    {
                        return Err(err(format!(
                            "element {i} is {}; expected a finite{} number",
                            data[i],
                            if signed { "" } else { ", non-negative" }
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// The state in the device's layouts: (Adam m, Adam v, AdaGrad sums), after checking it
    /// against the spec.
    pub(crate) fn to_device_layout(
        &self,
        spec: &ModelSpec,
        packed: &PackedWeights,
        layout: &GatherLayout,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        self.check(spec)?;
        let get = |name: String| self.tensors[&name].1.clone();
        let m = packed.pack(spec, |n| get(format!("adam.m.{n}")));
        let v = packed.pack(spec, |n| get(format!("adam.v.{n}")));
        let d = spec.d();
        let mut sums = vec![0.0; layout.total_rows as usize * d];
        for (f, placed) in spec.features.iter().zip(&layout.placement) {
            let Some((_, base)) = placed else { continue };
            let data = &self.tensors[&format!("adagrad.emb.{}", f.name)].1;
            sums[*base as usize * d..][..data.len()].copy_from_slice(data);
        }
        Ok((m, v, sums))
    }

    /// Writes a trained model and this state into `dir` so that a failure leaves `dir` as it
    /// was: everything is written into a temporary directory beside it first, which then
    /// becomes `dir` (a new directory) or whose files are renamed over `dir`'s, each whole.
    pub fn save_with(&self, model: &pepnet_core::Model, dir: &Path) -> Result<()> {
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let tmp = tempfile::Builder::new()
            .prefix(".pepnet-")
            .tempdir_in(parent)
            .map_err(|e| Error::io(parent, e))?;
        model.save(tmp.path())?;
        self.save(tmp.path())?;
        if !dir.exists() {
            let staged = tmp.keep();
            return std::fs::rename(&staged, dir).map_err(|e| {
                let _ = std::fs::remove_dir_all(&staged);
                Error::io(dir, e)
            });
        }
        for file in [
            pepnet_core::model::SPEC_FILE,
            pepnet_core::model::WEIGHTS_FILE,
            OPTIMIZER_FILE,
        ] {
            std::fs::rename(tmp.path().join(file), dir.join(file))
                .map_err(|e| Error::io(dir.join(file), e))?;
        }
        Ok(())
    }

    /// Writes `dir/optimizer.safetensors` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let views = self.tensors.iter().map(|(name, (shape, data))| {
            let view = safetensors::tensor::TensorView::new(
                Dtype::F32,
                shape.clone(),
                bytemuck::cast_slice(data),
            )
            .expect("shape and data agree by construction");
            (name.as_str(), view)
        });
        let metadata = HashMap::from([("step".to_string(), self.step.to_string())]);
        let bytes = safetensors::serialize(views, Some(metadata))
            .expect("in-memory serialisation cannot fail");
        atomic_file::write(&dir.join(OPTIMIZER_FILE), &bytes)
    }

    /// Reads `dir/optimizer.safetensors` if there is one, checking it against the spec: every
    /// dense tensor's two moments and every embedding table's sums, with their shapes.
    pub fn load(dir: &Path, spec: &ModelSpec) -> Result<Option<Self>> {
        let path = dir.join(OPTIMIZER_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let file = path.display().to_string();
        let size = std::fs::metadata(&path)
            .map_err(|e| Error::io(&path, e))?
            .len();
        pepnet_core::memory::check_host(size.saturating_mul(2), &format!("reading {file}"))?;
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        Self::from_safetensors(&bytes, &file, spec).map(Some)
    }

    /// Parses the bytes of an optimizer state file (as [`OptimizerState::load`] reads it);
    /// `file` names them in errors.
    pub fn from_safetensors(bytes: &[u8], file: &str, spec: &ModelSpec) -> Result<Self> {
        let file = file.to_string();
        let err = |message: String| Error::Weights {
            file: file.clone(),
            message,
        };
        let st = pepnet_core::weights::parse_safetensors(bytes, &file)?;
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
        let step = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("step"))
            .ok_or_else(|| err("metadata 'step' is missing".into()))?
            .parse::<u64>()
            .map_err(|e| err(format!("metadata 'step' is not a step count: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, shape) in expected(spec) {
            let tensor_err = |message: String| Error::Tensor {
                file: file.clone(),
                tensor: name.clone(),
                message,
            };
            let view = st
                .tensor(&name)
                .map_err(|_| tensor_err(format!("missing; expected shape {shape:?}")))?;
            if view.dtype() != Dtype::F32 || view.shape() != shape.as_slice() {
                return Err(tensor_err(format!(
                    "expected F32 of shape {shape:?}, found {:?} of shape {:?}",
                    view.dtype(),
                    view.shape()
                )));
            }
            let data: Vec<f32> = bytemuck::pod_collect_to_vec(view.data());
            tensors.insert(name, (shape, data));
        }
        // Hashed features' rows' sums, if trained: their shapes are checked below.
        for f in spec.features.iter().filter(|f| f.hashed) {
            let name = format!("adagrad.{}", embedding::table(&f.name));
            if let Ok(view) = st.tensor(&name) {
                if view.dtype() != Dtype::F32 {
                    return Err(Error::Tensor {
                        file: file.clone(),
                        tensor: name,
                        message: format!("expected F32, found {:?}", view.dtype()),
                    });
                }
                let data: Vec<f32> = bytemuck::pod_collect_to_vec(view.data());
                tensors.insert(name, (view.shape().to_vec(), data));
            }
        }
        let known: std::collections::HashSet<&str> = tensors.keys().map(String::as_str).collect();
        let mut extra: Vec<&str> = st
            .names()
            .into_iter()
            .filter(|n| !known.contains(n))
            .collect();
        extra.sort_unstable();
        if let Some(name) = extra.first() {
            return Err(Error::Tensor {
                file: file.clone(),
                tensor: name.to_string(),
                message: "not part of this model's optimizer state (extra tensor)".into(),
            });
        }
        let state = Self { step, tensors };
        state.check(spec).map_err(|e| match e {
            Error::Tensor {
                tensor, message, ..
            } => Error::Tensor {
                file: file.clone(),
                tensor,
                message,
            },
            Error::Weights { message, .. } => Error::Weights {
                file: file.clone(),
                message,
            },
            other => other,
        })?;
        Ok(state)
    }
}
