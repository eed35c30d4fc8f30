//! MMoE (optional): K experts, ReLU MLPs over O_ep, and per task a softmax gate over O_ep that
//! mixes the experts' outputs into that task's tower input.

use super::dense;
use crate::gpu::linear::{Activation, LinearProblem, Precision};
use crate::gpu::mmoe_mix::MixParams;
use crate::math::softmax;
use crate::model::gradients::Gradients;
use crate::plan::{Builder, Step};
use crate::spec::{limits, ModelSpec};
use crate::weights::Weights;

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

/// MMoE's forward on one sample.
#[derive(Debug, Clone)]
pub struct Tape {
    /// Per expert, the input of each layer, then the expert's output.
    experts: Vec<Vec<Vec<f64>>>,
    /// Per task, the softmax weights of its gate.
    weights: Vec<Vec<f64>>,
}

impl Tape {
    fn output(&self, k: usize) -> &[f64] {
        self.experts[k].last().expect("an expert has layers")
    }
}

/// H_t(0) = Σ_k softmax(Wg_t O_ep + bg_t)_k · X_k for every task t, with X_k expert k's
/// output (a ReLU MLP over O_ep).
pub fn forward(
    w: &Weights,
    spec: &ModelSpec,
    o_ep: &[f64],
    precision: Precision,
) -> (Vec<Vec<f64>>, Tape) {
    let e = spec.experts.as_ref().expect("MMoE's forward needs experts");
    let experts: Vec<Vec<Vec<f64>>> = (0..e.count)
        .map(|k| {
            let mut layers = vec![o_ep.to_vec()];
            for j in 0..e.hidden.len() {
                let y = dense::forward(precision, w, &expert(k, j), &layers[j]);
                layers.push(dense::relu(&y));
            }
            layers
        })
        .collect();
    let mut tape = Tape {
        experts,
        weights: Vec::new(),
    };
    let h0 = spec
        .tasks
        .iter()
        .map(|task| {
            let gk = softmax(&dense::forward(precision, w, &gate(task), o_ep));
            let mut h = vec![0.0; tape.output(0).len()];
            for (k, g) in gk.iter().enumerate() {
                for (acc, x) in h.iter_mut().zip(tape.output(k)) {
                    *acc += g * x;
                }
            }
            tape.weights.push(gk);
            h
        })
        .collect();
    (h0, tape)
}

/// From each task's H_t(0) gradient, adds the experts' and gates' parameter gradients;
/// returns O_ep's gradient.
pub fn backward(
    w: &Weights,
    g: &mut Gradients,
    spec: &ModelSpec,
    (tape, o_ep): (&Tape, &[f64]),
    d_h0: &[Vec<f64>],
    weight_grad: Precision,
) -> Vec<f64> {
    let count = tape.experts.len();
    let mut d_o = vec![0.0; o_ep.len()];
    let mut d_x: Vec<Vec<f64>> = (0..count)
        .map(|k| vec![0.0; tape.output(k).len()])
        .collect();
    for (t, task) in spec.tasks.iter().enumerate() {
        let gk = &tape.weights[t];
        // H_t = Σ_k g_k X_k: dX_k += g_k dH_t, dg_k = X_k · dH_t, then through the softmax.
        let dg: Vec<f64> = (0..count)
            .map(|k| {
                tape.output(k)
                    .iter()
                    .zip(&d_h0[t])
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect();
        for k in 0..count {
            for (acc, &dh) in d_x[k].iter_mut().zip(&d_h0[t]) {
                *acc += gk[k] * dh;
            }
        }
        let dot: f64 = gk.iter().zip(&dg).map(|(a, b)| a * b).sum();
        let dz: Vec<f64> = gk.iter().zip(&dg).map(|(a, b)| a * (b - dot)).collect();
        let dx = dense::backward(w, g, &gate(task), o_ep, &dz, weight_grad);
        dense::add_into(&mut d_o, &dx);
    }
    for (k, layers) in tape.experts.iter().enumerate() {
        let mut dy = d_x[k].clone();
        for j in (0..layers.len() - 1).rev() {
            let d_pre = dense::relu_backward(&dy, &layers[j + 1]);
            dy = dense::backward(w, g, &expert(k, j), &layers[j], &d_pre, weight_grad);
        }
        dense::add_into(&mut d_o, &dy);
    }
    d_o
}

/// MMoE's part of the forward plan: each depth of all experts in one dispatch (the task gates
/// beside depth 0), then the softmax mix.
pub(crate) fn plan(b: &Builder) -> Vec<Step> {
    let (spec, c) = (b.spec, &b.columns);
    let Some(e) = &spec.experts else {
        return Vec::new();
    };
    let (k_count, t_count) = (e.count as u32, spec.n_tasks() as u32);
    let mut steps = Vec::new();
    let mut n_in = spec.dg() as u32;
    for (j, &w) in e.hidden.iter().enumerate() {
        let w = w as u32;
        let mut problems: Vec<LinearProblem> = (0..k_count)
            .map(|k| {
                let a = match j {
                    0 => b.at(c.o_ep),
                    _ => b.at(c.experts[j - 1] + k * n_in),
                };
                let y = b.at(c.experts[j] + k * w);
                b.problem(&expert(k, j), (a, n_in), (y, w), Activation::Relu)
            })
            .collect();
        if j == 0 {
            for (t, task) in spec.tasks.iter().enumerate() {
                let y = b.at(c.gate_logits + t as u32 * k_count);
                let a = (b.at(c.o_ep), spec.dg() as u32);
                problems.push(b.problem(&gate(task), a, (y, k_count), Activation::None));
            }
        }
        steps.push(Step::Linear {
            label: format!("experts.{j}"),
            problems,
        });
        n_in = w;
    }
    let last = *c.experts.last().expect("validated: experts have layers");
    steps.push(Step::MmoeMix(MixParams {
        experts: k_count,
        tasks: t_count,
        width: n_in,
        x_off: last,
        x_stride: c.width,
        logit_off: c.gate_logits,
        logit_stride: c.width,
        y_off: c.mixed.expect("allocated with experts"),
        y_stride: c.width,
        _pad: [0; 3],
    }));
    steps
}

/// `experts.count` and every `experts.hidden[j]` at least 1, and at least one layer.
pub(crate) fn validate(spec: &ModelSpec) -> Result<(), String> {
    let Some(e) = &spec.experts else {
        return Ok(());
    };
    if e.count == 0 {
        return Err("key 'experts.count': must be at least 1, found 0".into());
    }
    if e.hidden.is_empty() {
        return Err("key 'experts.hidden': an expert needs at least one layer".into());
    }
    match e.hidden.iter().position(|&w| w == 0) {
        Some(j) => Err(format!(
            "key 'experts.hidden[{j}]': must be at least 1, found 0"
        )),
        None => Ok(()),
    }
}

/// The experts' count, depth and widths within the limits.
pub(crate) fn validate_sizes(spec: &ModelSpec) -> Result<(), String> {
    let Some(e) = &spec.experts else {
        return Ok(());
    };
    if e.count > limits::EXPERTS {
        return Err(format!(
            "key 'experts.count': {} is more than this engine supports ({})",
            e.count,
            limits::EXPERTS
        ));
    }
    limits::check_layers("experts.hidden", e.hidden.len())?;
    for (j, &w) in e.hidden.iter().enumerate() {
        limits::check_width(&format!("experts.hidden[{j}]"), w)?;
    }
    Ok(())
}
