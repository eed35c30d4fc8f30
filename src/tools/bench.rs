//! The benchmark harness behind `pepnet bench`: a batch-size sweep of one model on one adapter,
//! end to end (upload, kernels, readback) and GPU-only (timestamp queries around every
//! dispatch), with each kernel's work from the plan so that achieved GFLOP/s and GB/s can be set
//! against the device's two ceilings. The JSON it writes follows `docs/bench.schema.json`.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::engine::{Engine, EngineOptions};
use crate::error::{Error, Result};
use crate::gpu::linear::{Precision, Variant};
use crate::gpu::GpuContext;
use crate::model::Model;
use crate::spec::ModelSpec;
use crate::synth;

/// Version of the JSON layout; bump on any incompatible change to [`BenchReport`].
pub const SCHEMA_VERSION: u32 = 1;

/// Built-in models: `(name, spec JSON)`.
pub const PRESETS: [(&str, &str); 3] = [
    ("tiny", include_str!("../../examples/specs/tiny.json")),
    ("paper", include_str!("../../examples/specs/paper.json")),
    (
        "paper_mmoe",
        include_str!("../../examples/specs/paper_mmoe.json"),
    ),
];

/// The spec of a built-in model.
pub fn preset(name: &str) -> Result<ModelSpec> {
    let (_, json) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
        let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
        Error::Spec {
            file: format!("preset '{name}'"),
            message: format!("no such preset; the presets are {names:?}"),
        }
    })?;
    ModelSpec::from_json(json, &format!("preset '{name}'"))
}

/// How a sweep runs.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub batch_sizes: Vec<usize>,
    /// Untimed iterations before each batch size's timed ones.
    pub warmup: usize,
    /// Timed iterations per batch size, unless `budget` runs out first (at least one runs).
    pub iterations: usize,
    pub budget: Duration,
    /// Distinct random batches cycled through, so no run scores one cached input.
    pub distinct_inputs: usize,
    pub seed: u64,
    /// Rows to cut the batches from (e.g. a file shared with the PyTorch baseline, so both time
    /// the same inputs); random rows from `seed` when absent.
    pub pool: Option<crate::Batch>,
    /// Precision of the linear products.
    pub precision: Precision,
    /// The device's peak rates, for each kernel's floor; known devices' are used when absent.
    pub peaks: Option<DevicePeaks>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            batch_sizes: vec![1, 64, 1024, 16384, 65536],
            warmup: 2,
            iterations: 20,
            budget: Duration::from_secs(10),
            distinct_inputs: 4,
            seed: 0,
            pool: None,
            precision: Precision::F32,
            peaks: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchReport {
    pub schema_version: u32,
    /// Which implementation measured: "pepnet" here; the PyTorch baseline writes its own.
    pub engine: String,
    pub model: ModelSummary,
    pub device: DeviceSummary,
    /// Precision of the linear products: "f32" or "f16" (absent in reports written before
    /// there was a choice: f32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    pub results: Vec<BatchResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSummary {
    pub name: String,
    pub tasks: usize,
    pub features: usize,
    pub embedding_dim: usize,
    pub flops_per_sample: u64,
    pub dispatches: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchResult {
    pub batch_size: usize,
    pub iterations: usize,
    /// End to end: batches × batch size over the summed batch latencies.
    pub samples_per_s: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    /// GPU-only figures from timestamps (absent without timestamp queries).
    pub gpu: Option<GpuResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuResult {
    /// Rows of the timed pass (a batch larger than the engine's workspace runs in several).
    pub rows: usize,
    /// Sum of the kernels' median times.
    pub ms: f64,
    pub samples_per_s: f64,
    pub kernels: Vec<KernelResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelResult {
    pub name: String,
    /// The kernel variant the dispatch ran, e.g. "f16 coop 16x16x16" (absent in older reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    pub problems: usize,
    pub ms: f64,
    pub flops: u64,
    /// Fewest bytes the kernel must move: activations read and written, weights read once (at
    /// the precision's width).
    pub bytes: u64,
    pub gflop_per_s: f64,
    pub gb_per_s: f64,
    /// The kernel's floor on this device, where its peak rates are known: the larger of its
    /// bytes over the memory bandwidth and its FLOPs over the rate of the units it runs on
    /// (tensor cores for the cooperative-matrix kernel, the f32 units otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor_ms: Option<f64>,
}

/// A device's peak rates, for the floors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DevicePeaks {
    /// Memory bandwidth, bytes/s.
    pub bytes_per_s: f64,
    /// f32 FLOP/s on the ordinary (SIMT) units.
    pub f32_flops: f64,
    /// f16 × f16 → f32 FLOP/s on the matrix units (tensor cores), dense.
    pub f16_matrix_flops: f64,
}

impl DevicePeaks {
    /// Known devices, by adapter name: the NVIDIA H200 (bandwidth as measured by a
    /// device-to-device copy, rates from the SXM datasheet).
    pub fn known(adapter: &str) -> Option<Self> {
        adapter.contains("H200").then_some(Self {
            bytes_per_s: 4.3e12,
            f32_flops: 67e12,
            f16_matrix_flops: 989e12,
        })
    }

    /// The floor of a kernel moving `bytes` and doing `flops` on the units `variant` uses.
    pub fn floor_ms(&self, bytes: u64, flops: u64, variant: Option<Variant>) -> f64 {
        let rate = match variant {
            Some(Variant::Coop) => self.f16_matrix_flops,
            _ => self.f32_flops,
        };
        (bytes as f64 / self.bytes_per_s).max(flops as f64 / rate) * 1e3
    }
}

/// Runs the sweep for `model` (named `name` in the report).
pub fn run(
    ctx: &std::sync::Arc<GpuContext>,
    model: &Model,
    name: &str,
    config: &BenchOptions,
    mut progress: impl FnMut(&BatchResult),
) -> Result<BenchReport> {
    let info = &ctx.info;
    let mut results = Vec::new();
    let mut summary = None;
    for &batch_size in &config.batch_sizes {
        let options = EngineOptions {
            max_batch: batch_size,
            precision: config.precision,
            ..Default::default()
        };
        let engine = Engine::new(ctx.clone(), model, &options)?;
        summary.get_or_insert_with(|| ModelSummary {
            name: name.to_string(),
            tasks: model.spec.n_tasks(),
            features: model.spec.features.len(),
            embedding_dim: model.spec.d(),
            flops_per_sample: engine.steps().iter().map(|s| s.flops_per_sample()).sum(),
            dispatches: engine.steps().len(),
        });
        let inputs = batches(model, config, batch_size)?;
        for i in 0..config.warmup {
            engine.score(&inputs[i % inputs.len()])?;
        }
        let start = Instant::now();
        let mut latencies = Vec::new();
        while latencies.is_empty()
            || (latencies.len() < config.iterations && start.elapsed() < config.budget)
        {
            let input = &inputs[latencies.len() % inputs.len()];
            let t = Instant::now();
            engine.score(input)?;
            latencies.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let total_ms: f64 = latencies.iter().sum();
        let gpu = gpu_result(
            &engine,
            model,
            &inputs,
            latencies.len().min(5),
            config.peaks,
        )?;
        let result = BatchResult {
            batch_size,
            iterations: latencies.len(),
            samples_per_s: (batch_size * latencies.len()) as f64 / (total_ms / 1e3),
            latency_ms_p50: percentile(&mut latencies, 50.0),
            latency_ms_p99: percentile(&mut latencies, 99.0),
            gpu,
        };
        progress(&result);
        results.push(result);
    }
    Ok(BenchReport {
        schema_version: SCHEMA_VERSION,
        // f32 is "pepnet" (the name every earlier report uses); another precision is named.
        engine: match config.precision {
            Precision::F32 => "pepnet".into(),
            other => format!("pepnet-{}", other.name()),
        },
        model: summary.ok_or_else(|| Error::Batch("no batch sizes to run".into()))?,
        device: DeviceSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: format!("{} {}", info.driver, info.driver_info)
                .trim()
                .to_string(),
        },
        precision: Some(config.precision.name().to_string()),
        results,
    })
}

/// The distinct batches of `batch_size` a sweep cycles through: windows spread over the pool,
/// or fresh random rows.
fn batches(model: &Model, config: &BenchOptions, batch_size: usize) -> Result<Vec<crate::Batch>> {
    let count = config.distinct_inputs.max(1);
    match &config.pool {
        Some(pool) => {
            if pool.len() < batch_size {
                return Err(Error::Batch(format!(
                    "the input has {} rows; batch size {batch_size} needs at least that many",
                    pool.len()
                )));
            }
            let spread = (pool.len() - batch_size) / count;
            Ok((0..count)
                .map(|i| pool.slice(i * spread..i * spread + batch_size))
                .collect())
        }
        None => Ok((0..count)
            .map(|i| {
                let seed = config.seed ^ ((batch_size as u64) << 8) ^ i as u64;
                synth::random_batch(&model.spec, batch_size, seed)
            })
            .collect()),
    }
}

/// Median per-kernel times over `runs` timed passes.
fn gpu_result(
    engine: &Engine,
    model: &Model,
    inputs: &[crate::Batch],
    runs: usize,
    peaks: Option<DevicePeaks>,
) -> Result<Option<GpuResult>> {
    let mut per_step: Vec<Vec<f64>> = vec![Vec::new(); engine.steps().len()];
    for i in 0..runs.max(1) {
        let Some(ns) = engine.profile(&inputs[i % inputs.len()])? else {
            return Ok(None);
        };
        for (times, t) in per_step.iter_mut().zip(ns) {
            times.push(t / 1e6);
        }
    }
    let rows = inputs[0].len().min(engine.max_rows());
    let variant = engine.linear_variant(rows);
    let peaks = peaks.or_else(|| DevicePeaks::known(&engine.adapter_name()));
    let kernels: Vec<KernelResult> = engine
        .steps()
        .iter()
        .zip(&mut per_step)
        .map(|(step, times)| {
            let ms = percentile(times, 50.0);
            let flops = step.flops_per_sample() * rows as u64;
            let bytes = step.activation_bytes_per_sample(&model.spec, engine.act_storage())
                * rows as u64
                + step.weight_bytes_at(engine.precision());
            let per_s = |x: u64| {
                if ms > 0.0 {
                    x as f64 / (ms / 1e3) / 1e9
                } else {
                    0.0
                }
            };
            let runs_on = matches!(step, crate::plan::Step::Linear { .. }).then_some(variant);
            KernelResult {
                floor_ms: peaks.map(|p| p.floor_ms(bytes, flops, runs_on)),
                name: step.label().to_string(),
                kernel: Some(engine.kernel_name(step, variant)),
                problems: step.problems(),
                ms,
                flops,
                bytes,
                gflop_per_s: per_s(flops),
                gb_per_s: per_s(bytes),
            }
        })
        .collect();
    let ms: f64 = kernels.iter().map(|k| k.ms).sum();
    Ok(Some(GpuResult {
        rows,
        ms,
        samples_per_s: if ms > 0.0 {
            rows as f64 / (ms / 1e3)
        } else {
            0.0
        },
        kernels,
    }))
}

/// Nearest-rank percentile (sorts `values`).
fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// The report as a terminal table.
pub fn table(report: &BenchReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let m = &report.model;
    let _ = writeln!(
        out,
        "{} on {} ({}, {}): {} tasks, {} features, d = {}, {:.2} MFLOP/sample, {} dispatches",
        m.name,
        report.device.name,
        report.device.backend,
        report.device.driver,
        m.tasks,
        m.features,
        m.embedding_dim,
        m.flops_per_sample as f64 / 1e6,
        m.dispatches
    );
    if let Some(p) = &report.precision {
        let _ = writeln!(out, "precision: {p}");
    }
    let _ = writeln!(
        out,
        "{:>7} {:>5} {:>14} {:>10} {:>10} {:>14} {:>10}",
        "batch", "iters", "samples/s", "p50 ms", "p99 ms", "GPU samples/s", "GPU ms"
    );
    for r in &report.results {
        let (gs, gm) = match &r.gpu {
            Some(g) => (format!("{:.0}", g.samples_per_s), format!("{:.3}", g.ms)),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "{:>7} {:>5} {:>14.0} {:>10.3} {:>10.3} {:>14} {:>10}",
            r.batch_size, r.iterations, r.samples_per_s, r.latency_ms_p50, r.latency_ms_p99, gs, gm
        );
    }
    if let Some(g) = report.results.iter().rev().find_map(|r| r.gpu.as_ref()) {
        let _ = writeln!(out, "\nper kernel, {} rows:", g.rows);
        let _ = writeln!(
            out,
            "{:<12} {:<22} {:>8} {:>10} {:>12} {:>12} {:>10} {:>8} {:>10} {:>7}",
            "dispatch",
            "kernel",
            "problems",
            "ms",
            "MFLOP",
            "MB",
            "GFLOP/s",
            "GB/s",
            "floor ms",
            "floor%"
        );
        for k in &g.kernels {
            let (floor, share) = match k.floor_ms {
                Some(f) if k.ms > 0.0 => (format!("{f:.4}"), format!("{:.0}", 100.0 * f / k.ms)),
                _ => ("-".into(), "-".into()),
            };
            let _ = writeln!(
                out,
                "{:<12} {:<22} {:>8} {:>10.3} {:>12.1} {:>12.2} {:>10.2} {:>8.2} {:>10} {:>7}",
                k.name,
                k.kernel.as_deref().unwrap_or("-"),
                k.problems,
                k.ms,
                k.flops as f64 / 1e6,
                k.bytes as f64 / 1e6,
                k.gflop_per_s,
                k.gb_per_s,
                floor,
                share
            );
        }
    }
    out
}
