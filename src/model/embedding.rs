//! The embedding tables: one per feature, `emb.<feature>` (`[rows, d]`, or `[d]`, the vector
//! v of a dense feature). A hashed feature's rows are stored apart, with their raw ids
//! (`emb.<feature>.ids`) and an optional default row (`emb.<feature>.default`), in a number the
//! spec does not fix.

use crate::spec::{FeatureKind, ModelSpec};

/// What every embedding tensor's name starts with.
pub const PREFIX: &str = "emb.";

/// Feature `feature`'s table (or a hashed feature's stored rows).
pub fn table(feature: &str) -> String {
    format!("{PREFIX}{feature}")
}

/// A hashed feature's raw ids, one per stored row.
pub fn ids(feature: &str) -> String {
    format!("{PREFIX}{feature}.ids")
}

/// A hashed feature's default row, for ids it does not hold.
pub fn default_row(feature: &str) -> String {
    format!("{PREFIX}{feature}.default")
}

/// Whether tensor `name` is an embedding tensor (not a dense layer's).
pub fn is_embedding(name: &str) -> bool {
    name.starts_with(PREFIX)
}

/// The tables of every feature but the hashed ones, with their shapes.
pub(crate) fn tensors(spec: &ModelSpec, out: &mut Vec<(String, Vec<usize>)>) {
    let d = spec.d();
    for f in spec.features.iter().filter(|f| !f.hashed) {
        let shape = match f.kind {
            FeatureKind::Dense => vec![d],
            _ => vec![f.rows(), d],
        };
        out.push((table(&f.name), shape));
    }
}
