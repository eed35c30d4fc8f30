//! The f64 gradient reference (`pepnet_core::grad`) against central finite differences of the loss,
//! for random specs of every variant. The finite differences hold the stop-gradient inputs (E as
//! EPNet's gate reads it, O_ep as PPNet's gates read it) at their unperturbed values, so they
//! measure exactly the gradient `docs/model.md` defines; a gradient that leaked through a
//! stop-gradient would not match.
//!
//! Tolerance: |analytic − finite difference| ≤ 1e-6 + 2e-3 · max(|analytic|, |fd|), with
//! perturbations of 1e-4 (the difference uses the f32-rounded perturbation actually applied).

mod common;

use common::{random_batch, random_spec, rng};
use pepnet_core::grad;
use pepnet_core::spec::FeatureKind;
use pepnet_core::Model;
use rand::RngExt;

#[test]
fn gradients_match_finite_differences_for_every_variant() {
    let mut checked = 0;
    for seed in 0..16u64 {
        let mut r = rng(500 + seed);
        let variant = (seed % 8) as u32;
        let spec = random_spec(&mut r, variant);
        let mut model = Model::init(spec.clone(), seed).unwrap();
        let batch = random_batch(&mut r, &spec, 4);
        let t = spec.n_tasks();
        let labels: Vec<f64> = (0..batch.len() * t)
            .map(|_| r.random_range(0..2) as f64)
            .collect();
        let weights: Vec<f64> = (0..t).map(|_| r.random_range(0.5..2.0)).collect();
        let (loss, g) = grad::loss_and_gradients(&model, &batch, &labels, &weights).unwrap();
        let direct = grad::loss(&model, &batch, &labels, &weights, None);
        assert!((loss - direct).abs() <= 1e-12 * (1.0 + direct.abs()));
        let frozen = grad::frozen(&model, &batch);
        let d = spec.d();

        let names: Vec<String> = model.weights.iter().map(|(n, _)| n.to_string()).collect();
        for name in names {
            let len = model.weights.get(&name).data.len();
            let feature = name
                .strip_prefix("emb.")
                .and_then(|f| spec.features.iter().position(|x| x.name == f));
            // Elements to probe: for an embedding, rows the batch uses; else anywhere.
            let picks: Vec<usize> = match feature {
                Some(f) if spec.features[f].kind != FeatureKind::Dense => {
                    let ids: Vec<u64> = (0..batch.len())
                        .flat_map(|i| batch.columns[f].ids(i).to_vec())
                        .collect();
                    if ids.is_empty() {
                        continue;
                    }
                    (0..3)
                        .map(|_| {
                            ids[r.random_range(0..ids.len())] as usize * d + r.random_range(0..d)
                        })
                        .collect()
                }
                _ => (0..3).map(|_| r.random_range(0..len)).collect(),
            };
            for i in picks {
                let analytic = match feature {
                    Some(f) => g.rows[f]
                        .get(&((i / d) as u64))
                        .map_or(0.0, |row| row[i % d]),
                    None => g.dense.get(&name).map_or(0.0, |v| v[i]),
                };
                let x0 = model.weights.get(&name).data[i];
                let (up, down) = (x0 + 1e-4, x0 - 1e-4);
                model.weights.get_mut(&name).unwrap().data[i] = up;
                let l_up = grad::loss(&model, &batch, &labels, &weights, Some(&frozen));
                model.weights.get_mut(&name).unwrap().data[i] = down;
                let l_down = grad::loss(&model, &batch, &labels, &weights, Some(&frozen));
                model.weights.get_mut(&name).unwrap().data[i] = x0;
                let fd = (l_up - l_down) / (up as f64 - down as f64);
                let tol = 1e-6 + 2e-3 * analytic.abs().max(fd.abs());
                assert!(
                    (analytic - fd).abs() <= tol,
                    "seed {seed}, variant {variant}, {name}[{i}]: analytic {analytic}, finite difference {fd}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 500, "only {checked} elements checked");
}
