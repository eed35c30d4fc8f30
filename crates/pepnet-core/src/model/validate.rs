//! The spec's contract checked whole: the spec's own keys (`spec`), then each block's keys, the
//! sizes every tensor and binding can hold, and the tensor names, with the model's blocks that
//! own them. Parsing a spec validates it, so parsing lives here too: `spec` holds the types and
//! the widths derived from them, and needs no block.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::model::{embedding, epnet, mmoe, ppnet, tower};
use crate::spec::{limits, ModelSpec};
use crate::weights::HashedRows;

impl ModelSpec {
    /// Reads and validates a spec file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Parses and validates spec text; `file` names it in errors.
    pub fn from_json(text: &str, file: &str) -> Result<Self> {
        let spec: ModelSpec = serde_json::from_str(text).map_err(|e| Error::Spec {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        spec.validate().map_err(|message| Error::Spec {
            file: file.to_string(),
            message,
        })?;
        Ok(spec)
    }

    /// Checks every rule of the contract; the message names the offending key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.validate_fields()?;
        // Each block's own keys: every width and count at least 1.
        for check in [
            epnet::validate,
            ppnet::validate,
            mmoe::validate,
            tower::validate,
        ] {
            check(self)?;
        }
        self.validate_sizes()?;
        self.validate_tensor_names()
    }

    /// Every width and count within what the kernels index (u32 offsets, one binding per
    /// buffer), and no tensor larger than one GPU binding can hold. Checked before anything
    /// is allocated, so an absurd spec is an error naming its key, never an abort.
    fn validate_sizes(&self) -> std::result::Result<(), String> {
        // Each block's widths and counts within the limits.
        for check in [
            epnet::validate_sizes,
            ppnet::validate_sizes,
            mmoe::validate_sizes,
            tower::validate_sizes,
        ] {
            check(self)?;
        }
        // Concatenated embeddings: features × embedding_dim, each role at most WIDTH · 16.
        for (role, w) in [
            ("general", self.dg()),
            ("domain", self.dd()),
            ("prior", self.dp()),
        ] {
            if w > limits::CONCAT_WIDTH {
                return Err(format!(
                    "key 'features': the {role} embeddings concatenate to {w} floats per \
                     sample (features × embedding_dim), more than this engine supports ({})",
                    limits::CONCAT_WIDTH
                ));
            }
        }
        // With every width bounded above, no product below overflows a u64.
        let mut dense_words: u64 = 0;
        for (name, shape) in self.expected_tensors() {
            let elements: u64 = shape.iter().map(|&n| n as u64).product();
            if elements > limits::TENSOR_ELEMENTS {
                return Err(format!(
                    "tensor '{name}' would hold {} ({} bytes as f32); one tensor is at most \
                     {} elements, what one GPU binding indexes: {}",
                    shape
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(" × "),
                    elements * 4,
                    limits::TENSOR_ELEMENTS,
                    self.size_keys(&name)
                ));
            }
            if !embedding::is_embedding(&name) {
                dense_words += elements;
            }
        }
        if dense_words > limits::TENSOR_ELEMENTS {
            return Err(format!(
                "the dense layers hold {dense_words} weights ({} bytes as f32), more than one \
                 GPU binding indexes ({}): reduce 'towers', 'experts', 'epnet' or 'ppnet'",
                dense_words * 4,
                limits::TENSOR_ELEMENTS
            ));
        }
        Ok(())
    }

    /// The spec keys that set a tensor's size, for error messages.
    fn size_keys(&self, tensor: &str) -> String {
        match tensor
            .strip_prefix(embedding::PREFIX)
            .and_then(|f| self.features.iter().position(|g| g.name == f))
        {
            Some(i) => format!("reduce 'features[{i}].vocab' or 'embedding_dim'"),
            None => "reduce the layer widths ('towers', 'experts.hidden', 'epnet.hidden', \
                     'ppnet.hidden') or the number of features"
                .into(),
        }
    }

    /// No two tensors of the weights file share a name: a hashed feature `f` stores
    /// `emb.f.ids` and `emb.f.default`, which a feature named `f.ids` would alias.
    fn validate_tensor_names(&self) -> std::result::Result<(), String> {
        let mut owner: HashMap<String, usize> = HashMap::new();
        for (i, f) in self.features.iter().enumerate() {
            let names: Vec<String> = if f.hashed {
                HashedRows::tensor_names(&f.name).into()
            } else {
                vec![embedding::table(&f.name)]
            };
            for name in names {
                if let Some(j) = owner.insert(name.clone(), i) {
                    let (a, b) = (&self.features[j], f);
                    return Err(format!(
                        "key 'features[{i}]' ('{}'): its tensor '{name}' is also a tensor of \
                         'features[{j}]' ('{}'); rename one of the two features",
                        b.name, a.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every tensor the weights file must hold, with its shape, in a stable order. A hashed
    /// feature's tensors (`emb.<f>.ids`, `emb.<f>`, optional `emb.<f>.default`) have a row
    /// count the spec does not know; [`crate::weights::Weights`] checks them apart.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        embedding::tensors(self, &mut out);
        epnet::tensors(self, &mut out);
        ppnet::tensors(self, &mut out);
        mmoe::tensors(self, &mut out);
        tower::tensors(self, &mut out);
        out
    }
}
