//! PPNet: one Gate NU per tower layer l over the prior features and O_ep, E_p ⊕ O_ep, whose
//! output δ(l), T·w_l wide, scales the input of layer l of every task's tower.

use super::{dense, gate_nu};
use crate::gpu::linear::{Activation, Precision};
use crate::model::gradients::Gradients;
use crate::plan::{Builder, Step};
use crate::spec::ModelSpec;
use crate::weights::Weights;

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

/// PPNet's forward on one sample.
#[derive(Debug, Clone)]
pub struct Tape {
    /// The gates' input, E_p ⊕ sg(O_ep).
    x: Vec<f64>,
    /// Per tower layer l, its gate; `delta` is δ(l), T·w_l wide.
    gates: Vec<gate_nu::Tape>,
}

impl Tape {
    /// δ_t(l): the part of layer `l`'s gate that scales task `t`'s tower, `width` wide.
    pub fn delta(&self, l: usize, t: usize, width: usize) -> &[f64] {
        &self.gates[l].delta[t * width..(t + 1) * width]
    }
}

/// Every tower layer's gate, GateNU_l(E_p ⊕ sg(O_ep)). The gates read `o_in`: O_ep, or the
/// value a stop-gradient holds it at (see [`crate::grad::Frozen`]).
pub fn forward(
    w: &Weights,
    spec: &ModelSpec,
    (e_p, o_in): (&[f64], &[f64]),
    precision: Precision,
) -> Tape {
    let x: Vec<f64> = e_p.iter().chain(o_in).copied().collect();
    let gates = (0..spec.tower_in_widths().len())
        .map(|l| gate_nu::forward(w, &gate(l), &x, spec.gate_gamma, precision))
        .collect();
    Tape { x, gates }
}

/// From each gate's gradient `d_deltas[l]`, adds the gates' parameter gradients; returns E_p's
/// gradient (O_ep's part of the input is a stop-gradient).
pub fn backward(
    w: &Weights,
    g: &mut Gradients,
    spec: &ModelSpec,
    tape: &Tape,
    d_deltas: &[Vec<f64>],
    weight_grad: Precision,
) -> Vec<f64> {
    let mut d_e_p = vec![0.0; spec.dp()];
    for (l, (gate_tape, d_delta)) in tape.gates.iter().zip(d_deltas).enumerate() {
        let dx = gate_nu::backward(
            w,
            g,
            &gate(l),
            (&tape.x, gate_tape),
            d_delta,
            spec.gate_gamma,
            weight_grad,
        );
        dense::add_into(&mut d_e_p, &dx);
    }
    d_e_p
}

/// PPNet's part of the forward plan: all L+1 gates read E_p ⊕ O_ep; their fc1s run in one
/// dispatch, their fc2s in another.
pub(crate) fn plan(b: &Builder) -> Vec<Step> {
    let (spec, c) = (b.spec, &b.columns);
    let (Some(g), Some(pp_hidden)) = (spec.ppnet, c.pp_hidden) else {
        return Vec::new();
    };
    let (dg, dp, h) = (spec.dg() as u32, spec.dp() as u32, g.hidden as u32);
    let t_count = spec.n_tasks() as u32;
    let widths = spec.tower_in_widths();
    let fc1 = (0..widths.len())
        .map(|l| {
            let y = b.at(pp_hidden + l as u32 * h);
            let mut fc1 = b.problem(&fc1(l), (b.at(c.x0), dp + dg), (y, h), Activation::Relu);
            // The gates read E_p ⊕ sg(O_ep): only E_p's columns get a gradient.
            fc1.grad_k = dp;
            fc1
        })
        .collect();
    let fc2 = widths
        .iter()
        .enumerate()
        .map(|(l, &w)| {
            let a = b.at(pp_hidden + l as u32 * h);
            let y = b.at(c.deltas[l]);
            b.problem(&fc2(l), (a, h), (y, t_count * w as u32), Activation::Gate)
        })
        .collect();
    vec![
        Step::Linear {
            label: "ppnet.fc1".into(),
            problems: fc1,
        },
        Step::Linear {
            label: "ppnet.fc2".into(),
            problems: fc2,
        },
    ]
}

pub(crate) fn validate(spec: &ModelSpec) -> Result<(), String> {
    gate_nu::validate("ppnet", spec.ppnet)
}

pub(crate) fn validate_sizes(spec: &ModelSpec) -> Result<(), String> {
    gate_nu::validate_sizes("ppnet", spec.ppnet)
}
