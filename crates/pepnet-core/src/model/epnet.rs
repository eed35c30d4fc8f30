//! EPNet: one Gate NU over the domain features and the shared embeddings, E_d ⊕ E, whose
//! output δ_ep scales E (O_ep = δ_ep ⊙ E).

use super::{dense, gate_nu};
use crate::gpu::linear::{Activation, Precision};
use crate::model::gradients::Gradients;
use crate::plan::{Builder, Step};
use crate::spec::ModelSpec;
use crate::weights::Weights;

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

/// EPNet's forward on one sample.
#[derive(Debug, Clone)]
pub struct Tape {
    /// The gate's input, E_d ⊕ sg(E).
    x: Vec<f64>,
    gate: gate_nu::Tape,
}

/// O_ep = GateNU_ep(E_d ⊕ sg(E)) ⊙ E. The gate reads `e_in`: E itself, or the value a
/// stop-gradient holds it at (see [`crate::grad::Frozen`]).
pub fn forward(
    w: &Weights,
    gamma: f64,
    (e, e_d, e_in): (&[f64], &[f64], &[f64]),
    precision: Precision,
) -> (Vec<f64>, Tape) {
    let x: Vec<f64> = e_d.iter().chain(e_in).copied().collect();
    let gate = gate_nu::forward(w, GATE, &x, gamma, precision);
    (dense::hadamard(&gate.delta, e), Tape { x, gate })
}

/// From O_ep's gradient, adds the gate's parameter gradients; returns the gradients of E
/// (through the product only: the gate reads sg(E)) and of E_d.
pub fn backward(
    w: &Weights,
    g: &mut Gradients,
    (tape, e): (&Tape, &[f64]),
    d_o: &[f64],
    gamma: f64,
    weight_grad: Precision,
) -> (Vec<f64>, Vec<f64>) {
    let d_e = dense::hadamard(d_o, &tape.gate.delta);
    let d_delta = dense::hadamard(d_o, e);
    let dx = gate_nu::backward(
        w,
        g,
        GATE,
        (&tape.x, &tape.gate),
        &d_delta,
        gamma,
        weight_grad,
    );
    let dd = tape.x.len() - e.len();
    (d_e, dx[..dd].to_vec())
}

/// EPNet's part of the forward plan: O_ep = GateNU_ep(E_d ⊕ E) ⊙ E, the product fused into
/// fc2's epilogue (and the gate kept beside it when training).
pub(crate) fn plan(b: &Builder) -> Vec<Step> {
    let (spec, c) = (b.spec, &b.columns);
    let (Some(g), Some(ep_in), Some(ep_hidden)) = (spec.epnet, c.ep_in, c.ep_hidden) else {
        return Vec::new();
    };
    let (dg, dd, h) = (spec.dg() as u32, spec.dd() as u32, g.hidden as u32);
    let mut fc1 = b.problem(
        FC1,
        (b.at(ep_in), dd + dg),
        (b.at(ep_hidden), h),
        Activation::Relu,
    );
    // The gate reads E_d ⊕ sg(E): only E_d's columns get a gradient.
    fc1.grad_k = dd;
    let mut fc2 = b.problem(
        FC2,
        (b.at(ep_hidden), h),
        (b.at(c.o_ep), dg),
        Activation::Gate,
    );
    fc2.multiplier = Some(b.at(ep_in + dd));
    fc2.keep = c.ep_gate.map(|col| b.at(col));
    vec![
        Step::Linear {
            label: FC1.into(),
            problems: vec![fc1],
        },
        Step::Linear {
            label: FC2.into(),
            problems: vec![fc2],
        },
    ]
}

pub(crate) fn validate(spec: &ModelSpec) -> Result<(), String> {
    gate_nu::validate("epnet", spec.epnet)
}

pub(crate) fn validate_sizes(spec: &ModelSpec) -> Result<(), String> {
    gate_nu::validate_sizes("epnet", spec.epnet)
}
