//! The training loss and every parameter's gradient, in plain f64, one sample at a time: the
//! reference the GPU backward kernels are checked against, as [`crate::reference`] is for the
//! forward pass. Written to be obviously right, not fast.
//!
//! Loss: the batch mean over samples of `Σ_t w_t · BCE(p_t, y_t)`. The stop-gradients of
//! `docs/model.md` hold: EPNet's gate reads `E_d ⊕ sg(E)`, so its loss reaches E_d's features
//! but not E's through that input; PPNet's gates read `E_p ⊕ sg(O_ep)`, likewise.

use crate::gpu::linear::Precision;
use crate::model::{epnet, mmoe, ppnet, tower};
use std::collections::BTreeMap;

use crate::batch::{Batch, Column};
use crate::error::Result;
use crate::model::Model;
use crate::reference::{concat_role, sigmoid};
use crate::spec::{FeatureKind, Pooling, Role};
use crate::weights::Weights;

/// Every parameter's gradient of the loss.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gradients {
    /// Per dense tensor (every linear layer's weight and bias), by name, as the tensor's data.
    pub dense: BTreeMap<String, Vec<f64>>,
    /// Per feature of the spec, per embedding row the batch touched (keyed by its id; 0 for a
    /// dense feature's vector v), the d-wide gradient.
    pub rows: Vec<BTreeMap<u64, Vec<f64>>>,
}

/// What the backward pass needs of one sample's forward pass.
struct Tape {
    e: Vec<f64>,
    e_d: Vec<f64>,
    e_p: Vec<f64>,
    /// EPNet's gate input and output (with EPNet).
    ep: Option<(Vec<f64>, Vec<f64>)>,
    o_ep: Vec<f64>,
    /// PPNet's gate input and per-layer outputs (with PPNet).
    pp: Option<(Vec<f64>, Vec<Vec<f64>>)>,
    /// MMoE: per expert, the input of each layer and the output; per task, the gate weights.
    experts: Vec<Vec<Vec<f64>>>,
    gates: Vec<Vec<f64>>,
    /// Per task, per tower layer, the layer's ungated input H_t(l).
    tower_in: Vec<Vec<Vec<f64>>>,
    probs: Vec<f64>,
}

/// The values a stop-gradient freezes: E as EPNet's gate reads it, O_ep as PPNet's gates read it.
/// A finite-difference check perturbs parameters with these held at the unperturbed values, so
/// that it measures the gradient the stop-gradients define.
#[derive(Debug, Clone)]
pub struct Frozen {
    pub e: Vec<Vec<f64>>,
    pub o_ep: Vec<Vec<f64>>,
}

/// A linear layer's forward as the kernels of `precision` compute it (at f16, its input and
/// weight rounded to f16). The backward always uses the f32 weights and the unrounded input, as
/// the backward kernels do: mixed precision differentiates at the rounded forward.
fn linear(w: &Weights, name: &str, x: &[f64], precision: Precision) -> Vec<f64> {
    crate::reference::linear_at(precision, w, name, x)
}

/// Adds `name`'s weight and bias gradients for input `x` and output gradient `dy`; returns the
/// input's gradient. With `weight_grad` (the backward's precision) at f16 the products take
/// `dy` rounded to f16's 11 significant bits (the tensor-core kernels block-scale dZ, so its
/// exponent is kept), and `x` (weight gradient) or the weight (input gradient) rounded to f16,
/// as `weight_grad_coop` and `input_grad_coop` do; the bias stays exact.
fn linear_back(
    w: &Weights,
    g: &mut Gradients,
    name: &str,
    x: &[f64],
    dy: &[f64],
    weight_grad: Precision,
) -> Vec<f64> {
    let weight = w.get(&format!("{name}.weight"));
    let n_in = weight.shape[1];
    let dw = g
        .dense
        .entry(format!("{name}.weight"))
        .or_insert_with(|| vec![0.0; weight.data.len()]);
    let (x_w, dy_w): (Vec<f64>, Vec<f64>) = match weight_grad {
        Precision::F32 => (x.to_vec(), dy.to_vec()),
        Precision::F16 => (
            x.iter()
                .map(|&v| crate::reference::round_f16(v as f32 as f64))
                .collect(),
            dy.iter()
                .map(|&v| round_significand(v as f32 as f64))
                .collect(),
        ),
    };
    for (o, &d) in dy_w.iter().enumerate() {
        for (i, &xi) in x_w.iter().enumerate() {
            dw[o * n_in + i] += d * xi;
        }
    }
    let db = g
        .dense
        .entry(format!("{name}.bias"))
        .or_insert_with(|| vec![0.0; dy.len()]);
    for (acc, &d) in db.iter_mut().zip(dy) {
        *acc += d;
    }
    let w_at = |o: usize, i: usize| {
        let v = weight.data[o * n_in + i] as f64;
        match weight_grad {
            Precision::F32 => v,
            Precision::F16 => crate::reference::round_f16(v),
        }
    };
    (0..n_in)
        .map(|i| dy_w.iter().enumerate().map(|(o, &d)| w_at(o, i) * d).sum())
        .collect()
}

/// `v` rounded to f16's 11 significant bits (ties to even) whatever its exponent: what rounding
/// a power-of-two-scaled value to f16 and scaling back gives while it stays in f16's normal range.
fn round_significand(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let e = v.abs().log2().floor() as i32;
    let scale = 2f64.powi(14 - e);
    crate::reference::round_f16(v * scale) / scale
}

fn relu(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| x.max(0.0)).collect()
}

/// Gate NU forward.
fn gate(w: &Weights, prefix: &str, x: &[f64], gamma: f64, precision: Precision) -> Vec<f64> {
    let [fc1, fc2] = crate::model::gate_layers(prefix);
    let h = relu(&linear(w, &fc1, x, precision));
    linear(w, &fc2, &h, precision)
        .into_iter()
        .map(|z| gamma * sigmoid(z))
        .collect()
}

/// Gate NU backward from the gate's output gradient; returns the input's gradient.
fn gate_back(
    w: &Weights,
    g: &mut Gradients,
    prefix: &str,
    x: &[f64],
    d_delta: &[f64],
    gamma: f64,
    (precision, weight_grad): (Precision, Precision),
) -> Vec<f64> {
    let [fc1, fc2] = crate::model::gate_layers(prefix);
    let pre = linear(w, &fc1, x, precision);
    let h = relu(&pre);
    let z = linear(w, &fc2, &h, precision);
    let dz: Vec<f64> = z
        .iter()
        .zip(d_delta)
        .map(|(&z, &d)| {
            let s = sigmoid(z);
            d * gamma * s * (1.0 - s)
        })
        .collect();
    let dh = linear_back(w, g, &fc2, &h, &dz, weight_grad);
    let dpre: Vec<f64> = dh
        .iter()
        .zip(&pre)
        .map(|(&d, &p)| if p > 0.0 { d } else { 0.0 })
        .collect();
    linear_back(w, g, &fc1, x, &dpre, weight_grad)
}

fn forward(
    model: &Model,
    batch: &Batch,
    i: usize,
    frozen: Option<&Frozen>,
    precision: Precision,
) -> Tape {
    let spec = &model.spec;
    let w = &model.weights;
    let gamma = spec.gate_gamma;
    let e = concat_role(model, batch, i, Role::General);
    let e_d = concat_role(model, batch, i, Role::Domain);
    let e_p = concat_role(model, batch, i, Role::Prior);
    let (ep, o_ep) = match spec.epnet {
        Some(_) => {
            let e_in = frozen.map_or(&e, |f| &f.e[i]);
            let x: Vec<f64> = e_d.iter().chain(e_in).copied().collect();
            let delta = gate(w, epnet::GATE, &x, gamma, precision);
            let o = delta.iter().zip(&e).map(|(a, b)| a * b).collect();
            (Some((x, delta)), o)
        }
        None => (None, e.clone()),
    };
    let widths = spec.tower_in_widths();
    let t_count = spec.n_tasks();
    let pp = spec.ppnet.map(|_| {
        let o_in = frozen.map_or(&o_ep, |f| &f.o_ep[i]);
        let x: Vec<f64> = e_p.iter().chain(o_in).copied().collect();
        let deltas: Vec<Vec<f64>> = (0..widths.len())
            .map(|l| gate(w, &ppnet::gate(l), &x, gamma, precision))
            .collect();
        (x, deltas)
    });
    let (mut experts, mut gates) = (Vec::new(), Vec::new());
    let h0: Vec<Vec<f64>> = match &spec.experts {
        Some(ex) => {
            for k in 0..ex.count {
                let mut layers = vec![o_ep.clone()];
                for j in 0..ex.hidden.len() {
                    let next = relu(&linear(w, &mmoe::expert(k, j), &layers[j], precision));
                    layers.push(next);
                }
                experts.push(layers);
            }
            spec.tasks
                .iter()
                .map(|task| {
                    let z = linear(w, &mmoe::gate(task), &o_ep, precision);
                    let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let ex: Vec<f64> = z.iter().map(|v| (v - max).exp()).collect();
                    let sum: f64 = ex.iter().sum();
                    let gk: Vec<f64> = ex.iter().map(|v| v / sum).collect();
                    let width = experts[0].last().expect("layers").len();
                    let mut h = vec![0.0; width];
                    for (g, layers) in gk.iter().zip(&experts) {
                        for (acc, x) in h.iter_mut().zip(layers.last().expect("layers")) {
                            *acc += g * x;
                        }
                    }
                    gates.push(gk);
                    h
                })
                .collect()
        }
        None => vec![o_ep.clone(); t_count],
    };
    let mut tower_in = Vec::new();
    let mut probs = Vec::new();
    for (t, task) in spec.tasks.iter().enumerate() {
        let mut h = h0[t].clone();
        let mut inputs = Vec::new();
        for (l, &wl) in widths.iter().enumerate() {
            inputs.push(h.clone());
            let a: Vec<f64> = match &pp {
                Some((_, d)) => h.iter().zip(&d[l][t * wl..]).map(|(x, g)| x * g).collect(),
                None => h.clone(),
            };
            let y = linear(w, &tower::layer(task, l), &a, precision);
            h = if l + 1 < widths.len() { relu(&y) } else { y };
        }
        probs.push(sigmoid(h[0]));
        tower_in.push(inputs);
    }
    Tape {
        e,
        e_d,
        e_p,
        ep,
        o_ep,
        pp,
        experts,
        gates,
        tower_in,
        probs,
    }
}

/// Binary cross-entropy of probability `p` against label `y`, computed stably from p.
fn bce(p: f64, y: f64) -> f64 {
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
}

/// The values the stop-gradients freeze, from the model as it is.
pub fn frozen(model: &Model, batch: &Batch) -> Frozen {
    let tapes: Vec<Tape> = (0..batch.len())
        .map(|i| forward(model, batch, i, None, Precision::F32))
        .collect();
    Frozen {
        e: tapes.iter().map(|t| t.e.clone()).collect(),
        o_ep: tapes.iter().map(|t| t.o_ep.clone()).collect(),
    }
}

/// The loss alone (`labels` and the result as in [`loss_and_gradients`]), with the
/// stop-gradient inputs taken from `frozen` when given.
pub fn loss(
    model: &Model,
    batch: &Batch,
    labels: &[f64],
    task_weights: &[f64],
    frozen: Option<&Frozen>,
) -> f64 {
    let t = model.spec.n_tasks();
    (0..batch.len())
        .map(|i| {
            let tape = forward(model, batch, i, frozen, Precision::F32);
            (0..t)
                .map(|k| task_weights[k] * bce(tape.probs[k], labels[i * t + k]))
                .sum::<f64>()
        })
        .sum::<f64>()
        / batch.len().max(1) as f64
}

/// The loss and every parameter's gradient on `batch`; `labels` are `B × T` (0 or 1),
/// `task_weights` one per task.
pub fn loss_and_gradients(
    model: &Model,
    batch: &Batch,
    labels: &[f64],
    task_weights: &[f64],
) -> Result<(f64, Gradients)> {
    loss_and_gradients_at(Precision::F32, model, batch, labels, task_weights)
}

/// [`loss_and_gradients`] as mixed-precision training computes them at `precision`: the
/// forward's linear layers round their inputs and weights as the f16 kernels do; the backward
/// uses the f32 weights and the unrounded inputs.
pub fn loss_and_gradients_at(
    precision: Precision,
    model: &Model,
    batch: &Batch,
    labels: &[f64],
    task_weights: &[f64],
) -> Result<(f64, Gradients)> {
    loss_and_gradients_mixed(
        (precision, Precision::F32),
        model,
        batch,
        labels,
        task_weights,
    )
}

/// [`loss_and_gradients_at`] with the backward's products (input and weight gradients) at
/// `weight_grad` as well: at f16 they round their operands as the tensor-core kernels do.
pub fn loss_and_gradients_mixed(
    (precision, weight_grad): (Precision, Precision),
    model: &Model,
    batch: &Batch,
    labels: &[f64],
    task_weights: &[f64],
) -> Result<(f64, Gradients)> {
    batch.validate(&model.spec, "batch", 1)?;
    let spec = &model.spec;
    let w = &model.weights;
    let gamma = spec.gate_gamma;
    let (t_count, d, n) = (spec.n_tasks(), spec.d(), batch.len());
    let widths = spec.tower_in_widths();
    let mut g = Gradients {
        rows: vec![BTreeMap::new(); spec.features.len()],
        ..Default::default()
    };
    let mut total = 0.0;
    for i in 0..n {
        let tape = forward(model, batch, i, None, precision);
        // Towers, last layer first; PPNet's δ_t(l) gets the product's other factor.
        let mut d_h0 = Vec::with_capacity(t_count);
        let mut d_deltas: Vec<Vec<f64>> =
            widths.iter().map(|&wl| vec![0.0; t_count * wl]).collect();
        for (t, task) in spec.tasks.iter().enumerate() {
            let (p, y) = (tape.probs[t], labels[i * t_count + t]);
            total += task_weights[t] * bce(p, y);
            let mut dy = vec![task_weights[t] * (p - y) / n as f64];
            for l in (0..widths.len()).rev() {
                let h = &tape.tower_in[t][l];
                let wl = widths[l];
                let delta = tape.pp.as_ref().map(|(_, ds)| &ds[l][t * wl..(t + 1) * wl]);
                let a: Vec<f64> = match delta {
                    Some(dl) => h.iter().zip(dl).map(|(x, g)| x * g).collect(),
                    None => h.clone(),
                };
                let da = linear_back(w, &mut g, &tower::layer(task, l), &a, &dy, weight_grad);
                let dh: Vec<f64> = match delta {
                    Some(dl) => {
                        for (k, (&dak, &hk)) in da.iter().zip(h).enumerate() {
                            d_deltas[l][t * wl + k] += dak * hk;
                        }
                        da.iter().zip(dl).map(|(x, g)| x * g).collect()
                    }
                    None => da,
                };
                // Through the previous layer's ReLU (its output is this layer's input h).
                dy = if l > 0 {
                    dh.iter()
                        .zip(h)
                        .map(|(&dv, &hv)| if hv > 0.0 { dv } else { 0.0 })
                        .collect()
                } else {
                    dh
                };
            }
            d_h0.push(dy);
        }

        // PPNet: its gates' input is E_p ⊕ sg(O_ep): only E_p's part flows on.
        let mut d_e_p = vec![0.0; tape.e_p.len()];
        if let Some((x, _)) = &tape.pp {
            for (l, dd) in d_deltas.iter().enumerate() {
                let dx = gate_back(
                    w,
                    &mut g,
                    &ppnet::gate(l),
                    x,
                    dd,
                    gamma,
                    (precision, weight_grad),
                );
                for (acc, v) in d_e_p.iter_mut().zip(&dx) {
                    *acc += v;
                }
            }
        }

        // MMoE, or the towers reading O_ep directly.
        let mut d_o = vec![0.0; tape.o_ep.len()];
        match &spec.experts {
            Some(ex) => {
                let mut d_x: Vec<Vec<f64>> = tape
                    .experts
                    .iter()
                    .map(|layers| vec![0.0; layers.last().expect("layers").len()])
                    .collect();
                for (t, task) in spec.tasks.iter().enumerate() {
                    let gk = &tape.gates[t];
                    let dg: Vec<f64> = (0..ex.count)
                        .map(|k| {
                            let xk = tape.experts[k].last().expect("layers");
                            xk.iter().zip(&d_h0[t]).map(|(a, b)| a * b).sum()
                        })
                        .collect();
                    for k in 0..ex.count {
                        for (acc, &dh) in d_x[k].iter_mut().zip(&d_h0[t]) {
                            *acc += gk[k] * dh;
                        }
                    }
                    let dot: f64 = gk.iter().zip(&dg).map(|(a, b)| a * b).sum();
                    let dz: Vec<f64> = gk.iter().zip(&dg).map(|(a, b)| a * (b - dot)).collect();
                    let dx =
                        linear_back(w, &mut g, &mmoe::gate(task), &tape.o_ep, &dz, weight_grad);
                    d_o.iter_mut().zip(&dx).for_each(|(acc, v)| *acc += v);
                }
                for (k, layers) in tape.experts.iter().enumerate() {
                    let mut dy = d_x[k].clone();
                    for j in (0..ex.hidden.len()).rev() {
                        let out = &layers[j + 1];
                        let dpre: Vec<f64> = dy
                            .iter()
                            .zip(out)
                            .map(|(&dv, &o)| if o > 0.0 { dv } else { 0.0 })
                            .collect();
                        dy = linear_back(
                            w,
                            &mut g,
                            &mmoe::expert(k, j),
                            &layers[j],
                            &dpre,
                            weight_grad,
                        );
                    }
                    d_o.iter_mut().zip(&dy).for_each(|(acc, v)| *acc += v);
                }
            }
            None => {
                for dh in &d_h0 {
                    d_o.iter_mut().zip(dh).for_each(|(acc, v)| *acc += v);
                }
            }
        }

        // EPNet: O_ep = δ ⊙ E, and its gate reads E_d ⊕ sg(E): only E_d's part flows on.
        let (d_e, d_e_d) = match &tape.ep {
            Some((x, delta)) => {
                let d_e: Vec<f64> = d_o.iter().zip(delta).map(|(a, b)| a * b).collect();
                let d_delta: Vec<f64> = d_o.iter().zip(&tape.e).map(|(a, b)| a * b).collect();
                let dx = gate_back(
                    w,
                    &mut g,
                    epnet::GATE,
                    x,
                    &d_delta,
                    gamma,
                    (precision, weight_grad),
                );
                (d_e, dx[..tape.e_d.len()].to_vec())
            }
            None => (d_o, vec![0.0; tape.e_d.len()]),
        };

        // Each feature's vector gets the gradients of the places it was read, then its rows.
        let offsets = [Role::General, Role::Domain, Role::Prior].map(|r| spec.role_offsets(r));
        for (f, feature) in spec.features.iter().enumerate() {
            let mut dv = vec![0.0; d];
            let mut any = false;
            for (offsets, grad, on) in [
                (&offsets[0], &d_e, true),
                (&offsets[1], &d_e_d, spec.epnet.is_some()),
                (&offsets[2], &d_e_p, spec.ppnet.is_some()),
            ] {
                if let (Some(off), true) = (offsets[f], on) {
                    dv.iter_mut()
                        .zip(&grad[off..off + d])
                        .for_each(|(a, b)| *a += b);
                    any = true;
                }
            }
            if !any {
                continue;
            }
            let rows = &mut g.rows[f];
            let mut add = |id: u64, scale: f64| {
                let r = rows.entry(id).or_insert_with(|| vec![0.0; d]);
                r.iter_mut().zip(&dv).for_each(|(a, b)| *a += scale * b);
            };
            match (&batch.columns[f], feature.kind) {
                (Column::Dense(x), _) => add(0, x[i] as f64),
                (col, FeatureKind::MultiHot) => {
                    let ids = col.ids(i);
                    let scale = match feature.pooling {
                        Some(Pooling::Mean) if !ids.is_empty() => 1.0 / ids.len() as f64,
                        _ => 1.0,
                    };
                    for &id in ids {
                        add(id, scale);
                    }
                }
                (col, _) => add(col.ids(i)[0], 1.0),
            }
        }
    }
    Ok((total / n.max(1) as f64, g))
}
