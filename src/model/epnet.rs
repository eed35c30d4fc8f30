//! EPNet: one Gate NU over the domain features and the shared embeddings, E_d ⊕ E, whose
//! output δ_ep scales E (O_ep = δ_ep ⊙ E).

use crate::spec::ModelSpec;

/// The Gate NU's name.
pub const GATE: &str = "epnet";
/// Its first layer, `[hidden, dd + dg]`.
pub const FC1: &str = "epnet.fc1";
/// Its second layer, `[dg, hidden]`: δ_ep, as wide as E.
pub const FC2: &str = "epnet.fc2";

pub(crate) fn tensors(spec: &ModelSpec, out: &mut Vec<(String, Vec<usize>)>) {
    if let Some(g) = spec.epnet {
        super::push_linear(out, FC1, g.hidden, spec.dd() + spec.dg());
        super::push_linear(out, FC2, spec.dg(), g.hidden);
    }
}
