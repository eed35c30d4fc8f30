//! The CPU reference: PEPNet's forward pass in plain f64, one sample at a time, one function per
//! block of `docs/model.md`. It is written to be obviously right, not fast; every GPU test
//! compares against it.

use crate::batch::Batch;
use crate::error::Result;
use crate::model::Model;
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
            let delta = gate_nu(w, "epnet", &cat(&e_d, &e), gamma);
            hadamard(&delta, &e)
        }
        None => e,
    };

    // PPNet: one gate per tower layer, its output cut into T chunks.
    let widths = spec.tower_in_widths();
    let t_count = spec.n_tasks();
    let deltas: Vec<Vec<f64>> = (0..widths.len())
        .map(|l| match spec.ppnet {
            Some(_) => gate_nu(w, &format!("ppnet.{l}"), &cat(&e_p, &o_ep), gamma),
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
                let y = linear(w, &format!("tower.{task}.{l}"), &hadamard(delta_t, &h));
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
                let table = &model.weights.get(&format!("emb.{}", feature.name)).data;
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
            let table = &model.weights.get(&format!("emb.{}", feature.name)).data;
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
                x = relu(linear(w, &format!("expert.{k}.{j}"), &x));
            }
            x
        })
        .collect();
    model
        .spec
        .tasks
        .iter()
        .map(|task| {
            let g = softmax(&linear(w, &format!("mmoe_gate.{task}"), o_ep));
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
    let hidden = relu(linear(w, &format!("{prefix}.fc1"), x));
    linear(w, &format!("{prefix}.fc2"), &hidden)
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
        crate::gpu::linear::Precision::F16 => kernels::round_f16(v as f32 as f64),
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

fn softmax(z: &[f64]) -> Vec<f64> {
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

/// f64 references of the individual GPU kernels, on the same flat buffers and descriptors the
/// kernels read. Kernel tests compare each kernel against these on random problems.
pub mod kernels {
    use crate::gpu::act::ActStorage;
    use crate::gpu::gather::{GatherLayout, NO_ROW};
    use crate::gpu::linear::{Activation, LinearProblem, Precision};
    use crate::gpu::mmoe_mix::MixParams;

    /// `x` rounded to f16 (round to nearest even), as the f16 kernels stage their inputs.
    pub fn round_f16(x: f64) -> f64 {
        half::f16::from_f64(x).to_f64()
    }

    /// Every problem of one linear dispatch, reading `act` as it was before the dispatch and
    /// writing each problem's output view (problems without `f32_out`). Weights are laid out
    /// by `linear::pack_layer`.
    pub fn linear_group(problems: &[LinearProblem], rows: usize, weights: &[f32], act: &mut [f64]) {
        linear_group_at(
            (Precision::F32, ActStorage::F32),
            problems,
            rows,
            weights,
            (act, &mut []),
        )
    }

    /// [`linear_group`] as the kernels of `precision` compute it over an activation buffer of
    /// `storage`: at f16, every A ⊙ G element and every weight (not the bias) is rounded to f16
    /// before the products, which are summed exactly here (in f64) and in f32 on the GPU. Over
    /// f16 storage each output is rounded to f16 as it is stored. Problems flagged `f32_out`
    /// write `scores` instead, unrounded.
    pub fn linear_group_at(
        (precision, storage): (Precision, ActStorage),
        problems: &[LinearProblem],
        rows: usize,
        weights: &[f32],
        (act, scores): (&mut [f64], &mut [f64]),
    ) {
        let round = |x: f64| match precision {
            Precision::F32 => x,
            Precision::F16 => round_f16(x),
        };
        let store = |x: f64| match storage {
            ActStorage::F32 => x,
            ActStorage::F16 => round_f16(x),
        };
        let before = act.to_vec();
        for p in problems {
            let w_stride = crate::gpu::linear::padded_k(p.k) as usize;
            let at = |v: crate::gpu::linear::View, m: usize, c: usize| {
                v.offset as usize + m * v.stride as usize + c
            };
            for m in 0..rows {
                for n in 0..p.n as usize {
                    let mut z = weights[p.bias_offset as usize + n] as f64;
                    for k in 0..p.k as usize {
                        // A and G are f32 values in the buffer, and so is their product.
                        let mut a = before[at(p.a, m, k)] as f32;
                        if let Some(g) = p.gate {
                            a *= before[at(g, m, k)] as f32;
                        }
                        let w = weights[p.w_offset as usize + n * w_stride + k] as f64;
                        z += round(a as f64) * round(w);
                    }
                    let mut y = match p.activation {
                        Activation::None => z,
                        Activation::Relu => z.max(0.0),
                        Activation::Gate => p.gamma as f64 * super::sigmoid(z),
                        Activation::Sigmoid => super::sigmoid(z),
                    };
                    if let Some(kv) = p.keep {
                        act[at(kv, m, n)] = store(y);
                    }
                    if let Some(mv) = p.multiplier {
                        y *= before[at(mv, m, n)];
                    }
                    if p.f32_out {
                        scores[at(p.y, m, n)] = y;
                    } else {
                        act[at(p.y, m, n)] = store(y);
                    }
                }
            }
        }
    }

    /// The gather: every feature's pooled vector of every sample, written to its destinations.
    /// `table(row, k)` reads element k of a global row.
    pub fn gather(
        layout: &GatherLayout,
        table: &dyn Fn(u32, usize) -> f64,
        ids: &[u32],
        dense: &[f32],
        rows: usize,
        act: &mut [f64],
    ) {
        let p = &layout.params;
        let d = p.d as usize;
        for b in 0..rows {
            for f in &layout.features {
                for k in 0..d {
                    let v = if f.kind == 2 {
                        dense[b * p.n_dense as usize + f.dense_col as usize] as f64
                            * table(f.dense_row, k)
                    } else {
                        let first = b * p.slots as usize + f.first_slot as usize;
                        let rows: Vec<u32> = ids[first..first + f.n_slots as usize]
                            .iter()
                            .copied()
                            .take_while(|&r| r != NO_ROW)
                            .collect();
                        let sum: f64 = rows.iter().map(|&r| table(r, k)).sum();
                        if f.mean != 0 && !rows.is_empty() {
                            sum / rows.len() as f64
                        } else {
                            sum
                        }
                    };
                    for dst in &f.destinations[..f.n_destinations as usize] {
                        act[dst[0] as usize + b * dst[1] as usize + k] = v;
                    }
                }
            }
        }
    }

    /// The MMoE mix of every sample and task.
    pub fn mmoe_mix(p: &MixParams, rows: usize, act: &mut [f64]) {
        mmoe_mix_stored(p, rows, act, &|x| x)
    }

    /// [`mmoe_mix`], each output passed through `stored` (the activation storage's rounding).
    pub fn mmoe_mix_stored(
        p: &MixParams,
        rows: usize,
        act: &mut [f64],
        stored: &dyn Fn(f64) -> f64,
    ) {
        let (k_count, width) = (p.experts as usize, p.width as usize);
        for b in 0..rows {
            for t in 0..p.tasks as usize {
                let logits: Vec<f64> = (0..k_count)
                    .map(|k| {
                        act[p.logit_off as usize + b * p.logit_stride as usize + t * k_count + k]
                    })
                    .collect();
                let g = super::softmax(&logits);
                for i in 0..width {
                    let x = p.x_off as usize + b * p.x_stride as usize + i;
                    let mixed: f64 = (0..k_count).map(|k| g[k] * act[x + k * width]).sum();
                    act[p.y_off as usize + b * p.y_stride as usize + t * width + i] = stored(mixed);
                }
            }
        }
    }

    /// The cache lookup: each key's slot in `table` (searched entry by entry, not probed), or
    /// MISS; its place in `ids` gets `cache_base + slot`, or its feature's default row (for a
    /// miss, and for an entry whose slot is UNKNOWN).
    pub fn resolve(
        keys: &[[u32; 4]],
        table: &[[u32; 4]],
        defaults: &[u32],
        cache_base: u32,
        ids: &mut [u32],
    ) -> Vec<u32> {
        use crate::cache::table::{EMPTY, TOMBSTONE};
        keys.iter()
            .map(|k| {
                let found = table
                    .iter()
                    .find(|e| !matches!(e[0], EMPTY | TOMBSTONE) && e[..3] == k[..3]);
                match found {
                    Some(e) if e[3] == crate::gpu::resolve::UNKNOWN => {
                        ids[k[3] as usize] = defaults[k[0] as usize - 1];
                        e[3]
                    }
                    Some(e) => {
                        ids[k[3] as usize] = cache_base + e[3];
                        e[3]
                    }
                    None => {
                        ids[k[3] as usize] = defaults[k[0] as usize - 1];
                        crate::gpu::resolve::MISS
                    }
                }
            })
            .collect()
    }

    /// The scatter: record i of `src` (`width` words) to record `index[i]` of `dst`.
    pub fn scatter(index: &[u32], src: &[u32], width: usize, dst: &mut [u32]) {
        for (i, &at) in index.iter().enumerate() {
            let at = at as usize * width;
            dst[at..at + width].copy_from_slice(&src[i * width..(i + 1) * width]);
        }
    }

    /// One Adam step (PyTorch's semantics) on every element, in f64.
    pub fn adam(
        config: &crate::gpu::optimizer::AdamOptions,
        step: u32,
        grad: &[f32],
        param: &mut [f64],
        m: &mut [f64],
        v: &mut [f64],
    ) {
        let c1 = 1.0 - config.beta1.powi(step as i32);
        let c2 = 1.0 - config.beta2.powi(step as i32);
        for i in 0..param.len() {
            let g = grad[i] as f64;
            m[i] = config.beta1 * m[i] + (1.0 - config.beta1) * g;
            v[i] = config.beta2 * v[i] + (1.0 - config.beta2) * g * g;
            param[i] -= config.lr * (m[i] / c1) / ((v[i] / c2).sqrt() + config.eps);
        }
    }

    /// One AdaGrad step on the listed rows (PyTorch's semantics), in f64.
    pub fn adagrad_rows(
        config: &crate::gpu::optimizer::AdaGradOptions,
        d: usize,
        touched: &[u32],
        row_grad: &[f32],
        table: &mut [f64],
        sum_sq: &mut [f64],
    ) {
        for (r, &row) in touched.iter().enumerate() {
            for k in 0..d {
                let (i, g) = (row as usize * d + k, row_grad[r * d + k] as f64);
                sum_sq[i] += g * g;
                table[i] -= config.lr * g / (sum_sq[i].sqrt() + config.eps);
            }
        }
    }

    /// The linear kernel's backward (`linear_backward.wgsl`) over one dispatch's problems:
    /// reads the activations `act` (after the forward) and the output gradients in `grad`,
    /// writes each input group's A gradient (first `grad_k` columns) and each gated problem's
    /// gate gradient into `grad`, and every weight and bias gradient into `wgrad` (laid out as
    /// the packed weights). Problems form groups as `linear_backward::input_groups` makes them.
    pub fn linear_backward(
        problems: &[LinearProblem],
        rows: usize,
        weights: &[f32],
        act: &[f64],
        grad: &mut [f64],
        wgrad: &mut [f64],
    ) {
        use crate::gpu::linear::View;
        let at = |v: View, m: usize, c: usize| v.offset as usize + m * v.stride as usize + c;
        let dy = grad.to_vec();
        let dz = |p: &LinearProblem, m: usize, n: usize| -> f64 {
            let mut d = dy[at(p.y, m, n)];
            // The activation's output, before the multiplier.
            let y = p.keep.map_or(act[at(p.y, m, n)], |k| act[at(k, m, n)]);
            match p.activation {
                Activation::Relu if y <= 0.0 => d = 0.0,
                Activation::Gate => d *= y * (1.0 - y / p.gamma as f64),
                _ => {}
            }
            if let Some(mv) = p.multiplier {
                d *= act[at(mv, m, n)];
            }
            d
        };
        let mut first = 0;
        while first < problems.len() {
            let a = problems[first].a;
            let count = problems[first..].iter().take_while(|p| p.a == a).count();
            let group = &problems[first..first + count];
            for m in 0..rows {
                for k in 0..group[0].grad_k as usize {
                    let mut total = 0.0;
                    for p in group {
                        let stride = crate::gpu::linear::padded_k(p.k) as usize;
                        let acc: f64 = (0..p.n as usize)
                            .map(|n| {
                                dz(p, m, n) * weights[p.w_offset as usize + n * stride + k] as f64
                            })
                            .sum();
                        match p.gate {
                            Some(g) => {
                                grad[at(g, m, k)] = acc * act[at(p.a, m, k)];
                                total += acc * act[at(g, m, k)];
                            }
                            None => total += acc,
                        }
                    }
                    grad[at(a, m, k)] = total;
                }
            }
            first += count;
        }
        for p in problems {
            let stride = crate::gpu::linear::padded_k(p.k) as usize;
            for n in 0..p.n as usize {
                for k in 0..p.k as usize {
                    wgrad[p.w_offset as usize + n * stride + k] = (0..rows)
                        .map(|m| {
                            let a = act[at(p.a, m, k)] * p.gate.map_or(1.0, |g| act[at(g, m, k)]);
                            dz(p, m, n) * a
                        })
                        .sum();
                }
                wgrad[p.bias_offset as usize + n] = (0..rows).map(|m| dz(p, m, n)).sum();
            }
        }
    }

    /// The MMoE mix's backward (`mmoe_mix.wgsl` `backward_*`): from the mixed inputs' gradient
    /// (at the output view in `grad`) to the experts' outputs' and the gate logits'.
    pub fn mmoe_mix_backward(p: &MixParams, rows: usize, act: &[f64], grad: &mut [f64]) {
        let (k_count, width) = (p.experts as usize, p.width as usize);
        for b in 0..rows {
            let x = |k: usize, i: usize| p.x_off as usize + b * p.x_stride as usize + k * width + i;
            let dh =
                |t: usize, i: usize| p.y_off as usize + b * p.y_stride as usize + t * width + i;
            let gates: Vec<Vec<f64>> = (0..p.tasks as usize)
                .map(|t| {
                    let logit = p.logit_off as usize + b * p.logit_stride as usize + t * k_count;
                    super::softmax(&act[logit..logit + k_count])
                })
                .collect();
            for k in 0..k_count {
                for i in 0..width {
                    grad[x(k, i)] = (0..p.tasks as usize)
                        .map(|t| gates[t][k] * grad[dh(t, i)])
                        .sum();
                }
            }
            for (t, g) in gates.iter().enumerate() {
                let s: Vec<f64> = (0..k_count)
                    .map(|j| (0..width).map(|i| act[x(j, i)] * grad[dh(t, i)]).sum())
                    .collect();
                let weighted: f64 = g.iter().zip(&s).map(|(a, b)| a * b).sum();
                for k in 0..k_count {
                    let logit =
                        p.logit_off as usize + b * p.logit_stride as usize + t * k_count + k;
                    grad[logit] = g[k] * (s[k] - weighted);
                }
            }
        }
    }

    /// The gather's backward (`gather_backward.wgsl`): each touched row's gradient, the sum over
    /// its uses of the use's weight times its feature's vector gradient (the sum of the feature's
    /// sources, each scaled by its scale view when it has one).
    pub fn gather_backward(
        features: &[crate::gpu::gather_backward::FeatureGradGpu],
        uses: &crate::gpu::gather_backward::RowUses,
        d: usize,
        act: &[f64],
        grad: &[f64],
    ) -> Vec<f64> {
        use crate::gpu::gather_backward::NO_VIEW;
        let mut out = vec![0.0; uses.touched.len() * d];
        for u in 0..uses.touched.len() {
            for k in 0..d {
                let range = uses.starts[u] as usize..uses.starts[u + 1] as usize;
                out[u * d + k] = uses.uses[range]
                    .iter()
                    .map(|x| {
                        let f = &features[x.feature as usize];
                        let s = x.sample as usize;
                        let v: f64 = f.sources[..f.n_sources as usize]
                            .iter()
                            .map(|src| {
                                let g = grad[src[0] as usize + s * src[1] as usize + k];
                                if src[2] == NO_VIEW {
                                    g
                                } else {
                                    g * act[src[2] as usize + s * src[3] as usize + k]
                                }
                            })
                            .sum();
                        x.weight as f64 * v
                    })
                    .sum();
            }
        }
        out
    }
}
