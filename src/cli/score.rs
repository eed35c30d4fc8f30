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
    /// Input, one column per feature: CSV, or Parquet (.parquet, .pq); or many files: a
    /// directory (its CSV and Parquet files) or a pattern (`DIR/part-*.parquet`).
    #[arg(long)]
    pub input: PathBuf,
    /// Output: the carried columns, then one column per task; CSV or Parquet by extension.
    /// With many input files, a directory: one output file per input file, of the same name.
    #[arg(long)]
    pub output: PathBuf,
    /// Score only share I of N of the input files (task I of a job array of N, 0 <= I < N):
    /// the sorted files I, I+N, I+2N, ..., so N tasks cover every file exactly once; a rerun
    /// replaces only its own outputs.
    #[arg(long, value_parser = super::shards::parse_shard)]
    pub shard: Option<super::shards::Shard>,
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
            carry: self.carry.clone(),
            rejects: self.rejects.clone(),
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
        if super::shards::names_many(&self.input) {
            if options.rejects.is_some() {
                return Err(pepnet::Error::io(
                    &self.input,
                    std::io::Error::other(
                        "--rejects takes one input file; score the files one by one to keep \
                         their rejects",
                    ),
                ));
            }
            let files = super::shards::input_files(&self.input)?;
            let listed = files.len();
            let mine = super::shards::share(files, self.shard);
            std::fs::create_dir_all(&self.output)
                .map_err(|e| pepnet::Error::io(&self.output, e))?;
            let (mut rows, start) = (0, std::time::Instant::now());
            for file in &mine {
                let name = file.file_name().expect("a file");
                let output = self.output.join(name);
                let summary =
                    pepnet::pipeline::score_file(&model.spec, file, &output, &options, &score)?;
                rows += summary.rows;
                eprintln!(
                    "scored {} rows in {:.3} s ({:.0} rows/s) -> {}",
                    summary.rows,
                    summary.seconds,
                    summary.rows_per_second(),
                    output.display()
                );
            }
            let seconds = start.elapsed().as_secs_f64();
            let share = match self.shard {
                Some(s) => format!(" (share {} of {})", s.index, s.count),
                None => String::new(),
            };
            eprintln!(
                "scored {} of {listed} files{share}: {rows} rows in {seconds:.3} s ({:.0} rows/s) -> {}",
                mine.len(),
                rows as f64 / seconds.max(1e-9),
                self.output.display()
            );
        } else {
            if self.shard.is_some() {
                return Err(pepnet::Error::io(
                    &self.input,
                    std::io::Error::other(
                        "--shard shares many files: give --input a directory or a pattern",
                    ),
                ));
            }
            self.score_one(&model, &options, &score)?;
        }
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

impl Score {
    /// Scores the one input file into the one output.
    fn score_one(
        &self,
        model: &Model,
        options: &ScoreFileOptions,
        score: &(dyn Fn(&pepnet::batch::CheckedBatch) -> Result<Vec<f32>> + Sync),
    ) -> Result<()> {
        let summary =
            pepnet::pipeline::score_file(&model.spec, &self.input, &self.output, options, score)?;
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
