//! A model directory: `model.json` (the spec) and `weights.safetensors`; and PEPNet's blocks,
//! one module each, in the order of `docs/model.md`: [`embedding`] tables, [`epnet`],
//! [`ppnet`], [`mmoe`] experts and gates, [`tower`]s. Each block owns the names and shapes of
//! its tensors, its part of the GPU plan, and its f64 forward (which records a tape) and
//! backward (which reads it). The spec's list of expected tensors, the plan, the reference and
//! the gradient loop over the blocks; [`sample`] runs them in order on one sample. [`gate_nu`]
//! and [`dense`] are the parts the blocks share.

mod assemble;
pub mod dense;
pub mod embedding;
pub mod epnet;
pub mod gate_nu;
pub mod gradients;
pub mod mmoe;
pub mod ppnet;
pub mod sample;
pub mod tower;
pub mod validate;

use std::path::Path;

use crate::atomic_file;
use crate::error::{Error, Result};
use crate::spec::ModelSpec;
use crate::weights::Weights;

/// Appends linear layer `name`'s weight (`[n_out, n_in]`, PyTorch's layout) and bias.
fn push_linear(out: &mut Vec<(String, Vec<usize>)>, name: &str, n_out: usize, n_in: usize) {
    out.push((format!("{name}.weight"), vec![n_out, n_in]));
    out.push((format!("{name}.bias"), vec![n_out]));
}

/// The spec's file name in a model directory.
pub const SPEC_FILE: &str = "model.json";
/// The weights' file name in a model directory.
pub const WEIGHTS_FILE: &str = "weights.safetensors";

/// A validated model: a spec and exactly the tensors it asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// The architecture: features, widths, blocks and tasks.
    pub spec: ModelSpec,
    /// Every tensor the spec asks for, of the shape it asks for.
    pub weights: Weights,
}

impl Model {
    /// Loads `dir/model.json` and `dir/weights.safetensors`.
    pub fn load(dir: &Path) -> Result<Self> {
        let spec = ModelSpec::load(&dir.join(SPEC_FILE))?;
        let weights = Weights::load(&dir.join(WEIGHTS_FILE), &spec)?;
        Ok(Self { spec, weights })
    }

    /// A model with fresh weights (see [`Weights::init`]); its spec records the scheme they
    /// were drawn by (`init`, filled in with the default when absent). Refused, before
    /// anything is allocated, when the host has too little memory for the weights.
    pub fn init(mut spec: ModelSpec, seed: u64) -> Result<Self> {
        spec.init = Some(spec.init.unwrap_or_default());
        crate::memory::check_host(
            spec.weight_bytes(),
            &format!(
                "the weights of this spec ({} parameters)",
                spec.weight_bytes() / 4
            ),
        )?;
        let weights = Weights::init(&spec, seed);
        Ok(Self { spec, weights })
    }

    /// Writes the model directory, creating it if needed. Each file is written to a temporary
    /// name and renamed into place, so a failure never leaves a half-written file.
    pub fn save(&self, dir: &Path) -> Result<()> {
        // A model that could not be loaded back is not written (nor the directory made).
        self.weights
            .check(&dir.join(WEIGHTS_FILE).display().to_string())?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        atomic_file::write(&dir.join(SPEC_FILE), self.spec.to_json().as_bytes())?;
        atomic_file::write(&dir.join(WEIGHTS_FILE), &self.weights.to_safetensors())
    }
}
