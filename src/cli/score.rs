//! `pepnet score`: a CSV or Parquet file scored into one probability column per task, on the
//! GPU (or the f64 reference), through the threaded file pipeline.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use pepnet::cache::CacheStats;
use pepnet::gpu::linear::Precision;
use pepnet::pipeline::ScoreFileOptions;
use pepnet::{reference, Engine, EngineOptions, Model, Result};

use super::{at_least_one, Cache, Device};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// The WGSL kernels on the GPU adapter.
    Gpu,
    /// The f64 CPU reference (slow; for debugging).
    Reference,
}

/// Score a CSV or Parquet file: one probability column per task.
#[derive(Args)]
pub struct Score {
    /// Model directory (model.json + weights.safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// Input, one column per feature: CSV, or Parquet (.parquet, .pq).
    #[arg(long)]
    pub input: PathBuf,
    /// Output: the carried columns, then one column per task; CSV or Parquet by extension.
    #[arg(long)]
    pub output: PathBuf,
    /// Samples per batch (at least 1).
    #[arg(long, default_value_t = 4096, value_parser = at_least_one())]
    pub batch_size: usize,
    /// Input columns to copy to the output, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub carry: Vec<String>,
    #[arg(long, value_enum, default_value_t = Backend::Gpu)]
    pub backend: Backend,
    #[command(flatten)]
    pub device: Device,
    /// Write rows that do not fit the model here (CSV: row, column, value, reason) and
    /// score the rest, instead of failing on the first.
    #[arg(long)]
    pub rejects: Option<PathBuf>,
    /// No progress bar (it is only drawn on a terminal anyway).
    #[arg(long)]
    pub quiet: bool,
    /// Threads parsing and checking the input [default: the cores, at most 4].
    #[arg(long, value_parser = at_least_one())]
    pub readers: Option<usize>,
    #[command(flatten)]
    pub cache: Cache,
    /// Write the embedding cache's counters here as JSON at the end.
    #[arg(long)]
    pub cache_stats: Option<PathBuf>,
}

impl Score {
    pub fn run(self) -> Result<()> {
        let model = Model::load(&self.model)?;
        let options = ScoreFileOptions {
            batch_size: self.batch_size,
            carry: self.carry,
            rejects: self.rejects,
            progress: !self.quiet,
            readers: self
                .readers
                .unwrap_or_else(pepnet::pipeline::default_readers),
            ..Default::default()
        };
        let cache = self.cache.options(|| Ok(model.spec.clone()))?;
        let precision = self.device.precision;
        let engine = match self.backend {
            Backend::Gpu => {
                let ctx = self.device.adapter.open()?;
                // Batch-invariant: a row's scores do not depend on the batch it falls in (nor
                // on --batch-size), and equal what `pepnet serve` answers for it.
                let engine_options = EngineOptions {
                    max_batch: options.batch_size,
                    workspaces: options.scorers,
                    cache,
                    precision,
                    batch_invariant: true,
                    ..Default::default()
                };
                let engine = Engine::new(ctx, &model, &engine_options)?;
                if precision != Precision::F32 {
                    eprintln!(
                        "precision: {} ({})",
                        precision.name(),
                        engine.linear_variant(engine.max_rows()).name()
                    );
                }
                Some(engine)
            }
            Backend::Reference => None,
        };
        let score = |batch: &pepnet::batch::CheckedBatch| -> Result<Vec<f32>> {
            match &engine {
                Some(engine) => engine.score_checked(batch),
                None => Ok(reference::forward(&model, batch.batch())?
                    .into_iter()
                    .map(|p| p as f32)
                    .collect()),
            }
        };
        let summary =
            pepnet::pipeline::score_file(&model.spec, &self.input, &self.output, &options, &score)?;
        let rejected = match &options.rejects {
            Some(path) => format!(", {} rejected -> {}", summary.rejected, path.display()),
            None => String::new(),
        };
        eprintln!(
            "scored {} rows in {:.3} s ({:.0} rows/s) -> {}{rejected}",
            summary.rows,
            summary.seconds,
            summary.rows_per_second(),
            self.output.display()
        );
        if let Some(stats) = engine.as_ref().and_then(Engine::cache_stats) {
            eprint!("{}", cache_table(&stats));
            if let Some(path) = &self.cache_stats {
                let json = serde_json::to_vec_pretty(&stats).expect("stats serialize");
                pepnet::write_file(path, &json)?;
            }
        }
        Ok(())
    }
}

/// The cache's counters, one line per hashed feature and a total.
fn cache_table(stats: &CacheStats) -> String {
    let mut out = format!(
        "embedding cache ({}): {} of {} rows used, {} rows in the store\n{:<16} {:>10} {:>10} {:>8} {:>10} {:>10} {:>9} {:>8} {:>8} {:>11}\n",
        stats.policy, stats.cached_rows, stats.capacity_rows, stats.store_rows,
        "feature", "hits", "misses", "hit%", "inserted", "evicted", "unknown", "updated", "expired",
        "unavailable"
    );
    for s in stats.features.iter().chain(std::iter::once(&stats.total)) {
        out += &format!(
            "{:<16} {:>10} {:>10} {:>7.2}% {:>10} {:>10} {:>9} {:>8} {:>8} {:>11}\n",
            s.feature,
            s.hits,
            s.misses,
            100.0 * s.hit_rate(),
            s.insertions,
            s.evictions,
            s.unknown,
            s.updates,
            s.expired,
            s.unavailable
        );
    }
    out
}
