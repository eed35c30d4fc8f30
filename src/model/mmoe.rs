//! MMoE (optional): K experts, ReLU MLPs over O_ep, and per task a softmax gate over O_ep that
//! mixes the experts' outputs into that task's tower input.

use crate::spec::ModelSpec;

/// Layer `j` of expert `k`.
pub fn expert(k: impl std::fmt::Display, j: impl std::fmt::Display) -> String {
    format!("expert.{k}.{j}")
}

/// Task `task`'s gate, `[K, dg]`.
pub fn gate(task: &str) -> String {
    format!("mmoe_gate.{task}")
}

pub(crate) fn tensors(spec: &ModelSpec, out: &mut Vec<(String, Vec<usize>)>) {
    if let Some(e) = &spec.experts {
        for k in 0..e.count {
            let mut n_in = spec.dg();
            for (j, &w) in e.hidden.iter().enumerate() {
                super::push_linear(out, &expert(k, j), w, n_in);
                n_in = w;
            }
        }
        for task in &spec.tasks {
            super::push_linear(out, &gate(task), e.count, spec.dg());
        }
    }
}
