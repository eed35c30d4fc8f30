//! `pepnet ablation`: the paper's ablation in one command. PEPNet, EPNet only, PPNet only, the
//! plain multi-task DNN and MMoE, built from one spec, trained on the GPU on the same data with
//! the same seeds, initialisation and optimizers, scored on a validation file and measured by
//! GAUC per domain × task (mean over seeds).

use serde::Serialize;

use crate::engine::{Engine, EngineOptions};
use crate::error::Result;
use crate::eval::{report, EvalData};
use crate::gpu::GpuContext;
use crate::model::Model;
use crate::spec::{ExpertsSpec, GateSpec, ModelSpec};
use crate::train::{train, LabelledData, TrainOptions, Trainer, TrainerOptions};

/// The five models of the ablation, from `base`: its gates (or 64 wide), MMoE with 4 experts of
/// one layer as wide as the first tower layer (or 64).
pub fn variants(base: &ModelSpec) -> Vec<(&'static str, ModelSpec)> {
    let gate = base.epnet.or(base.ppnet).unwrap_or(GateSpec { hidden: 64 });
    let experts = ExpertsSpec {
        count: 4,
        hidden: vec![base.towers.first().copied().unwrap_or(64)],
    };
    [
        ("PEPNet", true, true, false),
        ("EPNet", true, false, false),
        ("PPNet", false, true, false),
        ("DNN", false, false, false),
        ("MMoE", false, false, true),
    ]
    .into_iter()
    .map(|(name, ep, pp, mmoe)| {
        let mut spec = base.clone();
        spec.epnet = ep.then_some(gate);
        spec.ppnet = pp.then_some(gate);
        spec.experts = mmoe.then(|| experts.clone());
        (name, spec)
    })
    .collect()
}

/// One variant's GAUC in one domain (or "all") for one task, per seed.
#[derive(Debug, Clone, Serialize)]
pub struct AblationCell {
    pub variant: String,
    pub domain: String,
    pub task: String,
    pub gauc: Vec<Option<f64>>,
}

impl AblationCell {
    /// The mean over seeds that had users with both labels.
    pub fn mean(&self) -> Option<f64> {
        let v: Vec<f64> = self.gauc.iter().flatten().copied().collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }
}

/// Trains every variant with every seed and measures it on `valid` (whose domains, users and
/// labels are `truth`, row for row). `progress` is called after each model with its name and
/// seed.
pub fn run(
    ctx: &std::sync::Arc<GpuContext>,
    base: &ModelSpec,
    (train_data, valid, truth): (&LabelledData, &LabelledData, &EvalData),
    seeds: &[u64],
    options: &TrainerOptions,
    epochs: usize,
    mut progress: impl FnMut(&str, u64),
) -> Result<Vec<AblationCell>> {
    let mut cells: Vec<AblationCell> = Vec::new();
    for (name, spec) in variants(base) {
        for &seed in seeds {
            let model = Model::init(spec.clone(), seed)?;
            let mut trainer = Trainer::new(ctx.clone(), &model, None, options)?;
            let config = TrainOptions {
                epochs,
                seed,
                ..Default::default()
            };
            train(&mut trainer, train_data, None, &config)?;
            let engine = Engine::new(
                ctx.clone(),
                &trainer.model()?,
                &EngineOptions {
                    max_batch: 4096,
                    ..Default::default()
                },
            )?;
            let scores = engine.score(&valid.batch)?;
            let t = spec.n_tasks();
            let predictions: Vec<Vec<f32>> = (0..t)
                .map(|k| scores.iter().skip(k).step_by(t).copied().collect())
                .collect();
            for row in report(&spec, truth, &predictions) {
                let found = cells
                    .iter_mut()
                    .find(|c| c.variant == name && c.domain == row.domain && c.task == row.task);
                match found {
                    Some(c) => c.gauc.push(row.gauc),
                    None => cells.push(AblationCell {
                        variant: name.to_string(),
                        domain: row.domain,
                        task: row.task,
                        gauc: vec![row.gauc],
                    }),
                }
            }
            progress(name, seed);
        }
    }
    Ok(cells)
}

/// The mean GAUC as a markdown table: a row per domain × task (domains first, then "all"), a
/// column per variant.
pub fn table(cells: &[AblationCell]) -> String {
    use std::fmt::Write;
    let mut names: Vec<&str> = Vec::new();
    let mut rows: Vec<(&str, &str)> = Vec::new();
    for c in cells {
        if !names.contains(&c.variant.as_str()) {
            names.push(&c.variant);
        }
        if !rows.contains(&(c.domain.as_str(), c.task.as_str())) {
            rows.push((&c.domain, &c.task));
        }
    }
    let mut out = format!("| domain | task | {} |\n", names.join(" | "));
    let _ = writeln!(out, "|---|---|{}", "---|".repeat(names.len()));
    for (domain, task) in rows {
        let values: Vec<String> = names
            .iter()
            .map(|n| {
                cells
                    .iter()
                    .find(|c| c.variant == *n && c.domain == domain && c.task == task)
                    .and_then(AblationCell::mean)
                    .map_or("-".to_string(), |v| format!("{v:.4}"))
            })
            .collect();
        let _ = writeln!(out, "| {domain} | {task} | {} |", values.join(" | "));
    }
    out
}
