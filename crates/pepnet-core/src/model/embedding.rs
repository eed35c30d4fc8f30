//! The embedding tables: one per feature, `emb.<feature>` (`[rows, d]`, or `[d]`, the vector
//! v of a dense feature). A hashed feature's rows are stored apart, with their raw ids
//! (`emb.<feature>.ids`) and an optional default row (`emb.<feature>.default`), in a number the
//! spec does not fix.

use super::Model;
use crate::batch::{Batch, Column};
use crate::gpu::linear::View;
use crate::model::gradients::Gradients;
use crate::plan::Builder;
use crate::spec::{FeatureKind, ModelSpec, Pooling, Role};

/// The tables' names, as the weights file names them (`weights::names`).
pub use crate::weights::names::{default_row, ids, is_embedding, table, PREFIX};

/// The tables of every feature but the hashed ones, with their shapes.
pub(crate) fn tensors(spec: &ModelSpec, out: &mut Vec<(String, Vec<usize>)>) {
    let d = spec.d();
    for f in spec.features.iter().filter(|f| !f.hashed) {
        let shape = match f.kind {
            FeatureKind::Dense => vec![d],
            _ => vec![f.rows(), d],
        };
        out.push((table(&f.name), shape));
    }
}

/// The d-wide vector of feature `f` for sample `i`: its row (a hashed feature's stored row, or
/// its default row for an unknown id), the pooled rows of a multi-hot feature, or a dense
/// feature's value times its vector v.
pub fn vector(model: &Model, batch: &Batch, f: usize, i: usize) -> Vec<f64> {
    let spec = &model.spec;
    let feature = &spec.features[f];
    let d = spec.d();
    let zeros = vec![0.0f32; d];
    let row = |id: u64| -> Vec<f64> {
        let slice: &[f32] = match model.weights.hashed(&feature.name) {
            Some(h) => match h.ids.iter().position(|&x| x == id) {
                Some(r) => &h.rows[r * d..(r + 1) * d],
                None => h.default.as_deref().unwrap_or(&zeros),
            },
            None => {
                let rows = &model.weights.get(&table(&feature.name)).data;
                &rows[id as usize * d..(id as usize + 1) * d]
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
            let v = &model.weights.get(&table(&feature.name)).data;
            let x = match column {
                Column::Dense(values) => values[i] as f64,
                _ => unreachable!("validated: dense features have dense columns"),
            };
            v.iter().map(|&v| x * v as f64).collect()
        }
    }
}

/// Concatenation, in spec order, of the vectors of the features that have `role`: E, E_d or
/// E_p.
pub fn concat(model: &Model, batch: &Batch, i: usize, role: Role) -> Vec<f64> {
    (0..model.spec.features.len())
        .filter(|&f| model.spec.features[f].has_role(role))
        .flat_map(|f| vector(model, batch, f, i))
        .collect()
}

/// From the gradients of E, E_d and E_p (each `None` where nothing reads it: E_d without
/// EPNet, E_p without PPNet), adds each feature's row gradients for sample `i` to `g.rows`
/// (keyed by id; 0 for a dense feature's vector v).
pub fn backward(
    spec: &ModelSpec,
    batch: &Batch,
    i: usize,
    [d_e, d_e_d, d_e_p]: [Option<&[f64]>; 3],
    g: &mut Gradients,
) {
    let d = spec.d();
    let offsets = [Role::General, Role::Domain, Role::Prior].map(|r| spec.role_offsets(r));
    for (f, feature) in spec.features.iter().enumerate() {
        // The feature's vector gets the gradients of the places it was read, then its rows.
        let mut dv = vec![0.0; d];
        let mut any = false;
        for (offsets, grad) in offsets.iter().zip([d_e, d_e_d, d_e_p]) {
            if let (Some(off), Some(grad)) = (offsets[f], grad) {
                super::dense::add_into(&mut dv, &grad[off..off + d]);
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

/// Per feature, the views of the activation rows its vector is gathered into: E into EPNet's
/// input (or straight into O_ep's place without EPNet), E_d into EPNet's input, E_p in front of
/// O_ep for PPNet.
pub(crate) fn destinations(b: &Builder) -> Vec<Vec<View>> {
    let (spec, c) = (b.spec, &b.columns);
    let dd = spec.dd() as u32;
    let [general, domain, prior] =
        [Role::General, Role::Domain, Role::Prior].map(|r| spec.role_offsets(r));
    (0..spec.features.len())
        .map(|f| {
            let mut dest = Vec::new();
            if let Some(off) = general[f] {
                dest.push(b.at(match c.ep_in {
                    Some(ep_in) => ep_in + dd + off as u32,
                    None => c.o_ep + off as u32,
                }));
            }
            if let (Some(off), Some(ep_in)) = (domain[f], c.ep_in) {
                dest.push(b.at(ep_in + off as u32));
            }
            if let (Some(off), true) = (prior[f], spec.ppnet.is_some()) {
                dest.push(b.at(c.x0 + off as u32));
            }
            dest
        })
        .collect()
}

/// Per feature, where the backward pass reads its vector's gradient: per destination, a view
/// of the gradient buffer and an optional view of the activations to scale it by. The same
/// place, but for E under EPNet, whose gradient arrives through O_ep = δ ⊙ E as dO_ep ⊙ δ (its
/// place in the gate's input gets none: a stop-gradient).
pub(crate) fn grad_sources(b: &Builder) -> Vec<Vec<(View, Option<View>)>> {
    let (spec, c) = (b.spec, &b.columns);
    let [general, domain, prior] =
        [Role::General, Role::Domain, Role::Prior].map(|r| spec.role_offsets(r));
    (0..spec.features.len())
        .map(|f| {
            let mut src = Vec::new();
            if let Some(off) = general[f] {
                let off = off as u32;
                src.push((b.at(c.o_ep + off), c.ep_gate.map(|gate| b.at(gate + off))));
            }
            if let (Some(off), Some(ep_in)) = (domain[f], c.ep_in) {
                src.push((b.at(ep_in + off as u32), None));
            }
            if let (Some(off), true) = (prior[f], spec.ppnet.is_some()) {
                src.push((b.at(c.x0 + off as u32), None));
            }
            src
        })
        .collect()
}
