//! The optimizer state saved beside a model so that training resumes where it stopped:
//! `optimizer.safetensors` holds Adam's moments per dense tensor (`adam.m.<tensor>`,
//! `adam.v.<tensor>`), AdaGrad's squared-gradient sums per embedding table
//! (`adagrad.emb.<feature>`), and the step count in its metadata (`step`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::atomic_file;
use crate::error::{Error, Result};
use crate::gpu::gather::GatherLayout;
use crate::plan::PackedWeights;
use crate::spec::ModelSpec;

pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Adam's and AdaGrad's state, by tensor name, with the number of steps taken.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerState {
    pub step: u64,
    /// `adam.m.<tensor>`, `adam.v.<tensor>` and `adagrad.<emb tensor>`, each shaped as its tensor.
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
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
            Some((format!("emb.{}", f.name), rows))
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
            if name.starts_with("emb.") {
                let data = sums
                    .remove(&name)
                    .unwrap_or_else(|| vec![0.0; shape.iter().product()]);
                tensors.insert(format!("adagrad.{name}"), (shape, data));
            }
        }
        Self { step, tensors }
    }

    /// The state in the device's layouts: (Adam m, Adam v, AdaGrad sums). A table the state
    /// lacks (say, a feature that was not gathered before) starts from zero.
    pub(crate) fn to_device_layout(
        &self,
        spec: &ModelSpec,
        packed: &PackedWeights,
        layout: &GatherLayout,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let get = |name: &str| -> Vec<f32> {
            self.tensors
                .get(name)
                .map(|(_, data)| data.clone())
                .expect("checked by load")
        };
        let m = packed.pack(spec, |n| get(&format!("adam.m.{n}")));
        let v = packed.pack(spec, |n| get(&format!("adam.v.{n}")));
        let d = spec.d();
        let mut sums = vec![0.0; layout.total_rows as usize * d];
        for (f, placed) in spec.features.iter().zip(&layout.placement) {
            let Some((_, base)) = placed else { continue };
            if let Some((_, data)) = self.tensors.get(&format!("adagrad.emb.{}", f.name)) {
                sums[*base as usize * d..][..data.len()].copy_from_slice(data);
            }
        }
        Ok((m, v, sums))
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
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let err = |message: String| Error::Weights {
            file: file.clone(),
            message,
        };
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
        let step = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("step"))
            .ok_or_else(|| err("metadata 'step' is missing".into()))?
            .parse::<u64>()
            .map_err(|e| err(format!("metadata 'step' is not a step count: {e}")))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
        let mut expected = Vec::new();
        for (name, shape) in spec.expected_tensors() {
            if name.starts_with("emb.") {
                expected.push((format!("adagrad.{name}"), shape));
            } else {
                expected.push((format!("adam.m.{name}"), shape.clone()));
                expected.push((format!("adam.v.{name}"), shape));
            }
        }
        let mut tensors = BTreeMap::new();
        for (name, shape) in expected {
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
        Ok(Some(Self { step, tensors }))
    }
}
