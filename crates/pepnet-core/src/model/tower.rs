//! The towers: per task an MLP (ReLU hidden layers, a sigmoid output of one probability) whose
//! layer l's input PPNet scales.

use super::{dense, ppnet};
use crate::gpu::linear::{Activation, Precision, View};
use crate::math::sigmoid;
use crate::model::gradients::Gradients;
use crate::plan::{Builder, Step};
use crate::spec::{limits, ModelSpec};
use crate::weights::Weights;

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

/// One task's tower on one sample: per layer, its ungated input H_t(l).
#[derive(Debug, Clone)]
pub struct Tape {
    inputs: Vec<Vec<f64>>,
}

/// Task `t`'s probability from its tower input `h0`: each layer's input scaled by PPNet's
/// δ_t(l) when there is PPNet, ReLU between layers, a sigmoid at the end.
pub fn forward(
    w: &Weights,
    spec: &ModelSpec,
    (t, h0): (usize, Vec<f64>),
    ppnet: Option<&ppnet::Tape>,
    precision: Precision,
) -> (f64, Tape) {
    let widths = spec.tower_in_widths();
    let mut h = h0;
    let mut inputs = Vec::with_capacity(widths.len());
    for (l, &wl) in widths.iter().enumerate() {
        let a = match ppnet {
            Some(pp) => dense::hadamard(&h, pp.delta(l, t, wl)),
            None => h.clone(),
        };
        let y = dense::forward(precision, w, &layer(&spec.tasks[t], l), &a);
        inputs.push(std::mem::replace(
            &mut h,
            if l + 1 < widths.len() {
                dense::relu(&y)
            } else {
                y
            },
        ));
    }
    (sigmoid(h[0]), Tape { inputs })
}

/// From the gradient of task `t`'s logit, adds the tower's parameter gradients and δ_t(l)'s
/// gradients (into `d_deltas[l]`, T·w_l wide, with PPNet); returns the gradient of H_t(0).
pub fn backward(
    w: &Weights,
    g: &mut Gradients,
    spec: &ModelSpec,
    (t, tape, ppnet): (usize, &Tape, Option<&ppnet::Tape>),
    d_logit: f64,
    d_deltas: &mut [Vec<f64>],
    weight_grad: Precision,
) -> Vec<f64> {
    let widths = spec.tower_in_widths();
    let mut dy = vec![d_logit];
    for l in (0..widths.len()).rev() {
        let (h, wl) = (&tape.inputs[l], widths[l]);
        let delta = ppnet.map(|pp| pp.delta(l, t, wl));
        let a = match delta {
            Some(dl) => dense::hadamard(h, dl),
            None => h.clone(),
        };
        let da = dense::backward(w, g, &layer(&spec.tasks[t], l), &a, &dy, weight_grad);
        // A = δ ⊙ H: δ gets dA ⊙ H, H gets dA ⊙ δ.
        let dh = match delta {
            Some(dl) => {
                for (k, (&dak, &hk)) in da.iter().zip(h).enumerate() {
                    d_deltas[l][t * wl + k] += dak * hk;
                }
                dense::hadamard(&da, dl)
            }
            None => da,
        };
        // Through the previous layer's ReLU (its output is this layer's input h).
        dy = match l {
            0 => dh,
            _ => dense::relu_backward(&dh, h),
        };
    }
    dy
}

/// The towers' part of the forward plan: layer l of every task in one dispatch; PPNet's
/// δ_t(l) scales the input as it is loaded; the last layer writes probabilities.
pub(crate) fn plan(b: &Builder) -> Vec<Step> {
    let (spec, c) = (b.spec, &b.columns);
    let w_in: Vec<u32> = spec.tower_in_widths().iter().map(|&w| w as u32).collect();
    let w_out: Vec<u32> = spec.tower_out_widths().iter().map(|&w| w as u32).collect();
    let last = w_in.len() - 1;
    (0..=last)
        .map(|l| {
            let problems = spec
                .tasks
                .iter()
                .enumerate()
                .map(|(t, task)| {
                    let t = t as u32;
                    let a = match (l, c.mixed) {
                        (0, None) => b.at(c.o_ep),
                        (0, Some(mixed)) => b.at(mixed + t * w_in[0]),
                        _ => b.at(c.hidden[l - 1] + t * w_in[l]),
                    };
                    let (y, activation) = match l < last {
                        true => (b.at(c.hidden[l] + t * w_out[l]), Activation::Relu),
                        false => {
                            let y = View {
                                offset: b.out.offset + t,
                                stride: b.out.stride,
                            };
                            (y, Activation::Sigmoid)
                        }
                    };
                    let mut p = b.problem(&layer(task, l), (a, w_in[l]), (y, w_out[l]), activation);
                    if spec.ppnet.is_some() {
                        p.gate = Some(b.at(c.deltas[l] + t * w_in[l]));
                    }
                    p.f32_out = l == last && b.scores_apart;
                    p
                })
                .collect();
            Step::Linear {
                label: format!("towers.{l}"),
                problems,
            }
        })
        .collect()
}

/// Every `towers[j]` at least 1.
pub(crate) fn validate(spec: &ModelSpec) -> Result<(), String> {
    match spec.towers.iter().position(|&w| w == 0) {
        Some(j) => Err(format!("key 'towers[{j}]': must be at least 1, found 0")),
        None => Ok(()),
    }
}

/// The towers' depth and widths within the limits.
pub(crate) fn validate_sizes(spec: &ModelSpec) -> Result<(), String> {
    limits::check_layers("towers", spec.towers.len())?;
    for (j, &w) in spec.towers.iter().enumerate() {
        limits::check_width(&format!("towers[{j}]"), w)?;
    }
    Ok(())
}
