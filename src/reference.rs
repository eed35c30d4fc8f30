//! The CPU reference: PEPNet's forward pass in plain f64, one sample at a time, one function per
//! block of `docs/model.md`. It is written to be obviously right, not fast; every GPU test
//! compares against it.

use crate::batch::Batch;
use crate::error::Result;
use crate::model::Model;
use crate::model::{embedding, epnet, mmoe, ppnet, tower};
use crate::spec::{FeatureKind, Pooling, Role};
use crate::weights::Weights;

/// Scores a batch: `B × T` probabilities, row-major (sample-major).
pub fn forward(model: &Model, batch: &Batch) -> Result<Vec<f64>> {
    batch.validate(&model.spec, "batch", 1)?;
    let t = model.spec.n_tasks();
    let mut out = Vec::with_capacity(batch.len() * t);
    for i in 0..batch.len() {
        out.extend(forward_sample(model, batch, i));
    }
    Ok(out)
}

/// The T probabilities of sample `i`.
pub fn forward_sample(model: &Model, batch: &Batch, i: usize) -> Vec<f64> {
    let spec = &model.spec;
    let w = &model.weights;
    let gamma = spec.gate_gamma;
    let e = concat_role(model, batch, i, Role::General);
    let e_d = concat_role(model, batch, i, Role::Domain);
    let e_p = concat_role(model, batch, i, Role::Prior);

    // EPNet: O_ep = GateNU_ep(E_d ⊕ sg(E)) ⊙ E.
    let o_ep = match spec.epnet {
        Some(_) => {
            let delta = gate_nu(w, epnet::GATE, &cat(&e_d, &e), gamma);
            hadamard(&delta, &e)
        }
        None => e,
    };

    // PPNet: one gate per tower layer, its output cut into T chunks.
    let widths = spec.tower_in_widths();
    let t_count = spec.n_tasks();
    let deltas: Vec<Vec<f64>> = (0..widths.len())
        .map(|l| match spec.ppnet {
            Some(_) => gate_nu(w, &ppnet::gate(l), &cat(&e_p, &o_ep), gamma),
            None => vec![1.0; t_count * widths[l]],
        })
        .collect();

    let h0: Vec<Vec<f64>> = match &spec.experts {
        Some(ex) => mmoe(model, &o_ep, ex.count, ex.hidden.len()),
        None => vec![o_ep.clone(); t_count],
    };

    spec.tasks
        .iter()
        .enumerate()
        .map(|(t, task)| {
            let mut h = h0[t].clone();
            for (l, &wl) in widths.iter().enumerate() {
                let delta_t = &deltas[l][t * wl..(t + 1) * wl];
                let y = linear(w, &tower::layer(task, l), &hadamard(delta_t, &h));
                h = if l + 1 < widths.len() { relu(y) } else { y };
            }
            sigmoid(h[0])
        })
        .collect()
}

/// The d-wide vector of feature `f` for sample `i`.
pub fn feature_vector(model: &Model, batch: &Batch, f: usize, i: usize) -> Vec<f64> {
    let spec = &model.spec;
    let feature = &spec.features[f];
    let d = spec.d();
    let zeros = vec![0.0f32; d];
    let row = |id: u64| -> Vec<f64> {
        let slice: &[f32] = match model.weights.hashed(&feature.name) {
            // A hashed id's stored row, or the feature's default row for an unknown id.
            Some(h) => match h.ids.iter().position(|&x| x == id) {
                Some(r) => &h.rows[r * d..(r + 1) * d],
                None => h.default.as_deref().unwrap_or(&zeros),
            },
            None => {
                let table = &model.weights.get(&embedding::table(&feature.name)).data;
                &table[id as usize * d..(id as usize + 1) * d]
            }
        };
        slice.iter().map(|&x| x as f64).collect()
    };
    let column = &batch.columns[f];
    match feature.kind {
        FeatureKind::Sparse => row(column.ids(i)[0]),
        FeatureKind::MultiHot => {
            let ids = column.ids(i);
            let mut v = vec![0.0; d];
            for &id in ids {
                for (acc, x) in v.iter_mut().zip(row(id)) {
                    *acc += x;
                }
            }
            if feature.pooling == Some(Pooling::Mean) && !ids.is_empty() {
                v.iter_mut().for_each(|x| *x /= ids.len() as f64);
            }
            v
        }
        FeatureKind::Dense => {
            let table = &model.weights.get(&embedding::table(&feature.name)).data;
            let x = match column {
                crate::batch::Column::Dense(values) => values[i] as f64,
                _ => unreachable!("validated: dense features have dense columns"),
            };
            table.iter().map(|&v| x * v as f64).collect()
        }
    }
}

/// Concatenation, in spec order, of the vectors of the features that have `role`.
pub(crate) fn concat_role(model: &Model, batch: &Batch, i: usize, role: Role) -> Vec<f64> {
    (0..model.spec.features.len())
        .filter(|&f| model.spec.features[f].has_role(role))
        .flat_map(|f| feature_vector(model, batch, f, i))
        .collect()
}

/// MMoE: H_t(0) = Σ_k softmax(Wg_t O_ep + bg_t)_k · X_k, for every task t.
fn mmoe(model: &Model, o_ep: &[f64], count: usize, depth: usize) -> Vec<Vec<f64>> {
    let w = &model.weights;
    let experts: Vec<Vec<f64>> = (0..count)
        .map(|k| {
            let mut x = o_ep.to_vec();
            for j in 0..depth {
                x = relu(linear(w, &mmoe::expert(k, j), &x));
            }
            x
        })
        .collect();
    model
        .spec
        .tasks
        .iter()
        .map(|task| {
            let g = softmax(&linear(w, &mmoe::gate(task), o_ep));
            let mut h = vec![0.0; experts[0].len()];
            for (gk, xk) in g.iter().zip(&experts) {
                for (acc, x) in h.iter_mut().zip(xk) {
                    *acc += gk * x;
                }
            }
            h
        })
        .collect()
}

/// Gate NU: γ · σ(fc2(ReLU(fc1(x)))).
pub fn gate_nu(w: &Weights, prefix: &str, x: &[f64], gamma: f64) -> Vec<f64> {
    let [fc1, fc2] = crate::model::gate_layers(prefix);
    let hidden = relu(linear(w, &fc1, x));
    linear(w, &fc2, &hidden)
        .into_iter()
        .map(|z| gamma * sigmoid(z))
        .collect()
}

/// `y = x · weightᵀ + bias`, PyTorch's `nn.Linear` convention (weight is `[out, in]`).
pub fn linear(w: &Weights, name: &str, x: &[f64]) -> Vec<f64> {
    linear_at(crate::gpu::linear::Precision::F32, w, name, x)
}

/// [`linear`] as the kernels of `precision` compute it: at f16, `x` (as the f32 the GPU holds)
/// and the weight are rounded to f16 before the products; the bias stays f32.
pub fn linear_at(
    precision: crate::gpu::linear::Precision,
    w: &Weights,
    name: &str,
    x: &[f64],
) -> Vec<f64> {
    let weight = w.get(&format!("{name}.weight"));
    let bias = &w.get(&format!("{name}.bias")).data;
    let n_in = weight.shape[1];
    assert_eq!(x.len(), n_in, "{name}: input width");
    let round = |v: f64| match precision {
        crate::gpu::linear::Precision::F32 => v,
        crate::gpu::linear::Precision::F16 => round_f16(v as f32 as f64),
    };
    let x: Vec<f64> = x.iter().map(|&v| round(v)).collect();
    weight
        .data
        .chunks_exact(n_in)
        .zip(bias)
        .map(|(row, &b)| {
            b as f64
                + row
                    .iter()
                    .zip(&x)
                    .map(|(&a, &x)| round(a as f64) * x)
                    .sum::<f64>()
        })
        .collect()
}

pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn relu(v: Vec<f64>) -> Vec<f64> {
    v.into_iter().map(|x| x.max(0.0)).collect()
}

pub fn softmax(z: &[f64]) -> Vec<f64> {
    let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|x| (x - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

fn cat(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().chain(b).copied().collect()
}

fn hadamard(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x * y).collect()
}

/// `x` rounded to f16 (round to nearest even), as the f16 kernels stage their inputs.
pub fn round_f16(x: f64) -> f64 {
    half::f16::from_f64(x).to_f64()
}
