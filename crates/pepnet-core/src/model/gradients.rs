//! The gradients the blocks' f64 backward functions add into (see `crate::grad`).

use std::collections::BTreeMap;

/// Every parameter's gradient of the loss.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gradients {
    /// Per dense tensor (every linear layer's weight and bias), by name, as the tensor's data.
    pub dense: BTreeMap<String, Vec<f64>>,
    /// Per feature of the spec, per embedding row the batch touched (keyed by its id; 0 for a
    /// dense feature's vector v), the d-wide gradient.
    pub rows: Vec<BTreeMap<u64, Vec<f64>>>,
}
