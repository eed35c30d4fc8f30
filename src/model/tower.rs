//! The towers: per task an MLP (ReLU hidden layers, a sigmoid output of one probability) whose
//! layer l's input PPNet scales.

use crate::spec::ModelSpec;

/// Layer `l` of task `task`'s tower.
pub fn layer(task: &str, l: impl std::fmt::Display) -> String {
    format!("tower.{task}.{l}")
}

pub(crate) fn tensors(spec: &ModelSpec, out: &mut Vec<(String, Vec<usize>)>) {
    let (w_in, w_out) = (spec.tower_in_widths(), spec.tower_out_widths());
    for task in &spec.tasks {
        for l in 0..w_in.len() {
            super::push_linear(out, &layer(task, l), w_out[l], w_in[l]);
        }
    }
}
