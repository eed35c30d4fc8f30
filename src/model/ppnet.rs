//! PPNet: one Gate NU per tower layer l over the prior features and O_ep, E_p ⊕ O_ep, whose
//! output δ(l), T·w_l wide, scales the input of layer l of every task's tower.

use crate::spec::ModelSpec;

/// The Gate NU of tower layer `l`.
pub fn gate(l: impl std::fmt::Display) -> String {
    format!("ppnet.{l}")
}

/// Its first layer, `[hidden, dp + dg]`.
pub fn fc1(l: impl std::fmt::Display) -> String {
    format!("ppnet.{l}.fc1")
}

/// Its second layer, `[T · w_l, hidden]`.
pub fn fc2(l: impl std::fmt::Display) -> String {
    format!("ppnet.{l}.fc2")
}

pub(crate) fn tensors(spec: &ModelSpec, out: &mut Vec<(String, Vec<usize>)>) {
    if let Some(g) = spec.ppnet {
        let t = spec.n_tasks();
        for (l, &w) in spec.tower_in_widths().iter().enumerate() {
            super::push_linear(out, &fc1(l), g.hidden, spec.dp() + spec.dg());
            super::push_linear(out, &fc2(l), t * w, g.hidden);
        }
    }
}
