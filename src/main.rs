//! The `pepnet` command line: `score`, `train`, `ablation`, `train-bench`, `init`, `info`, `plan`, `bench`, `eval`,
//! `gen-input`, `gen-data`, `kuairand`, `apply-rows`, `cache-bench`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use pepnet::gpu::linear::Precision;
use pepnet::io::InputReader;
use pepnet::pipeline::ScoreFileOptions;
use pepnet::{reference, Engine, EngineOptions, GpuContext, Model, ModelSpec, Result};

#[derive(Parser)]
#[command(
    name = "pepnet",
    version,
    about = "GPU-native PEPNet scoring engine (WGSL on wgpu)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// The WGSL kernels on the GPU adapter.
    Gpu,
    /// The f64 CPU reference (slow; for debugging).
    Reference,
}

#[derive(Subcommand)]
enum Command {
    /// Score a CSV or Parquet file: one probability column per task.
    Score {
        /// Model directory (model.json + weights.safetensors).
        #[arg(long)]
        model: PathBuf,
        /// Input, one column per feature: CSV, or Parquet (.parquet, .pq).
        #[arg(long)]
        input: PathBuf,
        /// Output: the carried columns, then one column per task; CSV or Parquet by extension.
        #[arg(long)]
        output: PathBuf,
        /// Samples per batch (at least 1).
        #[arg(long, default_value_t = 4096, value_parser = at_least_one())]
        batch_size: usize,
        /// Input columns to copy to the output, comma-separated.
        #[arg(long, value_delimiter = ',')]
        carry: Vec<String>,
        #[arg(long, value_enum, default_value_t = Backend::Gpu)]
        backend: Backend,
        /// Adapter name substring (default: $PEPNET_ADAPTER, else the high-performance one).
        #[arg(long)]
        adapter: Option<String>,
        /// Precision of the matrix products: f32, or f16 (f16 weights and layer inputs, f32
        /// sums; tensor cores where the device has them).
        #[arg(long, default_value = "f32")]
        precision: Precision,
        /// Write rows that do not fit the model here (CSV: row, column, value, reason) and
        /// score the rest, instead of failing on the first.
        #[arg(long)]
        rejects: Option<PathBuf>,
        /// No progress bar (it is only drawn on a terminal anyway).
        #[arg(long)]
        quiet: bool,
        /// Threads parsing and checking the input [default: the cores, at most 4].
        #[arg(long, value_parser = at_least_one())]
        readers: Option<usize>,
        /// Embedding cache capacity in rows, for hashed features (default 65536).
        #[arg(long, conflicts_with = "cache_bytes")]
        cache_rows: Option<u64>,
        /// Embedding cache capacity in bytes of GPU memory.
        #[arg(long)]
        cache_bytes: Option<u64>,
        /// Cache eviction policy: score (decayed access counts, the paper's), score:<decay>,
        /// lru or lfu.
        #[arg(long, default_value = "score")]
        cache_policy: String,
    },
    /// Merge a safetensors file of new rows for hashed features (emb.<f>.ids beside emb.<f>)
    /// into a model directory: known ids' rows are replaced, new ids added.
    ApplyRows {
        /// Model directory.
        #[arg(long)]
        model: PathBuf,
        /// The rows file.
        #[arg(long)]
        rows: PathBuf,
        /// Where to write the updated model (default: in place, atomically per file).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Embedding-cache benchmark: hit rates of the score, LRU and LFU policies on Zipf id
    /// streams, and scoring throughput with the cache against the same model fully resident.
    CacheBench {
        /// Distinct ids of the hit-rate streams (at least 1).
        #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
        distinct: u64,
        /// Lookups per stream (the first fifth warms the cache; at least 1).
        #[arg(long, default_value_t = 2_000_000, value_parser = at_least_one())]
        lookups: usize,
        /// Ids per batch (at least 1).
        #[arg(long, default_value_t = 4096, value_parser = at_least_one())]
        batch: usize,
        /// Skip the GPU throughput part.
        #[arg(long)]
        no_throughput: bool,
        /// Throughput: distinct users and items of the model.
        #[arg(long, default_value_t = 20_000, value_parser = at_least_one())]
        users: usize,
        #[arg(long, default_value_t = 100_000, value_parser = at_least_one())]
        items: usize,
        /// Throughput: timed batches and samples per batch.
        #[arg(long, default_value_t = 8, value_parser = at_least_one())]
        batches: usize,
        #[arg(long, default_value_t = 2048, value_parser = at_least_one())]
        rows: usize,
        /// Write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long)]
        adapter: Option<String>,
    },
    /// Write a model directory with Xavier-initialised weights for a spec.
    Init {
        /// The model spec (model.json format).
        #[arg(long)]
        spec: PathBuf,
        /// Directory to write.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// List the GPU adapters wgpu sees, with the limits and features that matter here.
    Info,
    /// Benchmark a model over a sweep of batch sizes: samples/s, latency, per-kernel GPU time.
    Bench {
        /// A built-in model: tiny, paper or paper_mmoe.
        #[arg(long, conflicts_with = "model", default_value = "tiny")]
        preset: String,
        /// A model directory instead of a preset.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Batch sizes to sweep [default: 1,64,1024,16384,65536; 1,64,1024 on a CPU adapter
        /// such as lavapipe, where the large ones take minutes each].
        #[arg(long, value_delimiter = ',', value_parser = at_least_one())]
        batch_sizes: Vec<usize>,
        /// Timed iterations per batch size (fewer if --budget-s runs out; at least one).
        #[arg(long, default_value_t = 20, value_parser = at_least_one())]
        iters: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Seconds of timed iterations per batch size.
        #[arg(long, default_value_t = 10.0)]
        budget_s: f64,
        /// Also write the report as JSON (docs/bench.schema.json).
        #[arg(long)]
        json: Option<PathBuf>,
        /// Cut the batches from this CSV's rows (the same file the PyTorch baseline times)
        /// instead of random rows.
        #[arg(long)]
        input: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        adapter: Option<String>,
        /// Precision of the matrix products: f32 or f16.
        #[arg(long, default_value = "f32")]
        precision: Precision,
        /// The device's peaks for each kernel's floor: memory GB/s, f32 TFLOP/s, f16 tensor
        /// TFLOP/s, e.g. 4300,67,989 (known for an H200 without it).
        #[arg(long, value_delimiter = ',')]
        peaks: Vec<f64>,
        /// Measure only the host: --input read and encoded into GPU-ready buffers by 1, 2, ...
        /// threads (--readers), no GPU.
        #[arg(long, requires = "input")]
        host_only: bool,
        /// Thread counts for --host-only [default: 1 up to the cores].
        #[arg(long, value_delimiter = ',', value_parser = at_least_one())]
        readers: Vec<usize>,
    },
    /// Train a model on the GPU (AdaGrad on embeddings, Adam on dense layers) and write a
    /// model directory `score` reads, with the optimizer state to resume from.
    Train {
        /// A model.json spec (fresh Xavier initialisation from --seed) or a model directory
        /// (resume: its weights, and its optimizer.safetensors when there is one).
        #[arg(long)]
        model: PathBuf,
        /// Training data (CSV or Parquet): the features and one 0/1 label column per task.
        #[arg(long)]
        train: PathBuf,
        /// Validation data of the same form, measured after each epoch.
        #[arg(long)]
        valid: Option<PathBuf>,
        /// Model directory to write (model.json, weights.safetensors, optimizer.safetensors).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1, value_parser = at_least_one())]
        epochs: usize,
        #[arg(long, default_value_t = 1024, value_parser = at_least_one())]
        batch_size: usize,
        /// Adam's learning rate (dense layers).
        #[arg(long, default_value_t = 1e-3)]
        adam_lr: f64,
        #[arg(long, default_value_t = 1e-8)]
        adam_eps: f64,
        /// AdaGrad's learning rate (embedding rows).
        #[arg(long, default_value_t = 0.05)]
        adagrad_lr: f64,
        #[arg(long, default_value_t = 1e-10)]
        adagrad_eps: f64,
        /// Per-task loss weights, comma-separated in task order [default: 1 each].
        #[arg(long, value_delimiter = ',')]
        task_weights: Vec<f64>,
        /// Label columns as TASK=COLUMN, comma-separated (a task not named reads the column
        /// named like the task).
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        /// Seeds the initialisation (from a spec) and the shuffle.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Keep the file's order instead of shuffling each epoch.
        #[arg(long)]
        no_shuffle: bool,
        /// Also write the per-epoch report as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long)]
        adapter: Option<String>,
        /// Precision of the forward pass's matrix products: f32, or f16 (mixed precision:
        /// f16 weight copy and layer inputs, f32 sums, gradients and optimizer state).
        #[arg(long, default_value = "f32")]
        precision: Precision,
    },
    /// The paper's ablation: PEPNet, EPNet only, PPNet only, the plain DNN and MMoE built from
    /// one spec, trained on the GPU with the same data, seeds and optimizers, and their GAUC per
    /// domain × task on the validation data (mean over seeds) as a markdown table.
    Ablation {
        /// The base spec (model.json, or a model directory's): its gates' width and first tower
        /// layer size the variants.
        #[arg(long)]
        model: PathBuf,
        /// Training data (CSV or Parquet) with one 0/1 label column per task.
        #[arg(long)]
        train: PathBuf,
        /// Validation data of the same form, with the user column for GAUC.
        #[arg(long)]
        valid: PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
        seeds: Vec<u64>,
        #[arg(long, default_value_t = 2, value_parser = at_least_one())]
        epochs: usize,
        #[arg(long, default_value_t = 1024, value_parser = at_least_one())]
        batch_size: usize,
        #[arg(long, default_value = "user_id")]
        user_column: String,
        /// Label columns as TASK=COLUMN, comma-separated.
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        /// Also write every seed's GAUC as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long)]
        adapter: Option<String>,
        /// Precision of the forward pass's matrix products: f32, or f16 (mixed precision:
        /// f16 weight copy and layer inputs, f32 sums, gradients and optimizer state).
        #[arg(long, default_value = "f32")]
        precision: Precision,
    },
    /// Training samples/s of a model on random batches, with each dispatch's GPU time.
    TrainBench {
        /// A built-in model: tiny, paper or paper_mmoe.
        #[arg(long, conflicts_with = "model", default_value = "paper")]
        preset: String,
        /// A model directory or spec instead of a preset.
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long, default_value_t = 1024, value_parser = at_least_one())]
        batch_size: usize,
        /// Timed steps.
        #[arg(long, default_value_t = 10, value_parser = at_least_one())]
        steps: usize,
        /// Also write the result as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long)]
        adapter: Option<String>,
        /// Precision of the forward pass's matrix products: f32, or f16 (mixed precision:
        /// f16 weight copy and layer inputs, f32 sums, gradients and optimizer state).
        #[arg(long, default_value = "f32")]
        precision: Precision,
    },
    /// AUC and GAUC per domain × task, from labelled data and the scores written for it.
    Eval {
        /// Model directory or model.json (for the tasks and the domain feature).
        #[arg(long)]
        model: PathBuf,
        /// The labelled data (CSV or Parquet): features, the user column, one 0/1 label per task.
        #[arg(long)]
        input: PathBuf,
        /// The scores `pepnet score` wrote for that data, row for row.
        #[arg(long)]
        scores: PathBuf,
        /// Column holding the user, for GAUC.
        #[arg(long, default_value = "user_id")]
        user_column: String,
        /// Label columns as TASK=COLUMN, comma-separated (a task not named reads the column
        /// named like the task).
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        /// Also write the report as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Write a synthetic labelled impression log for a model: features, a 0/1 label per task
    /// and the true probabilities `p_<task>` (the process is in docs/data.md).
    GenData {
        /// Model directory, or a model.json spec file.
        #[arg(long)]
        model: PathBuf,
        #[arg(long, value_parser = at_least_one())]
        rows: usize,
        /// CSV or Parquet, by extension.
        #[arg(long)]
        output: PathBuf,
        /// Seeds the hidden process (interests, domain and user effects): keep it for a
        /// validation set of the same behaviour.
        #[arg(long, default_value_t = 0)]
        world: u64,
        /// Seeds the sampling of rows and labels.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Convert a KuaiRand log (with its user and video side files) into labelled input data and
    /// a model spec that fits it.
    Kuairand {
        /// The interaction log (log_*.csv).
        #[arg(long)]
        log: PathBuf,
        /// The user side file (user_features*.csv).
        #[arg(long)]
        users: PathBuf,
        /// The video side file (video_features_basic*.csv).
        #[arg(long)]
        videos: PathBuf,
        /// The data to write (CSV or Parquet): features, then one 0/1 column per task.
        #[arg(long)]
        output: PathBuf,
        /// Where to write the matching spec (model.json format).
        #[arg(long)]
        spec_out: PathBuf,
        /// Embedding width of the spec.
        #[arg(long, default_value_t = 16, value_parser = at_least_one())]
        dim: usize,
    },
    /// Write random input rows for a model, CSV or Parquet by extension (benchmarks, trials).
    GenInput {
        /// Model directory, or a model.json spec file.
        #[arg(long)]
        model: PathBuf,
        #[arg(long, value_parser = at_least_one())]
        rows: usize,
        #[arg(long)]
        output: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Show the forward plan of a model: one line per GPU dispatch, with its work per sample.
    Plan {
        /// Model directory, or a model.json spec file.
        #[arg(long)]
        model: PathBuf,
        /// Precision whose kernels and weight bytes to show: f32 or f16.
        #[arg(long, default_value = "f32")]
        precision: Precision,
    },
}

/// Opens the GPU for a command, saying which adapter runs it, and loudly when it is a slow
/// fallback.
fn open_gpu(adapter: Option<&str>) -> Result<std::sync::Arc<GpuContext>> {
    let ctx = GpuContext::new(adapter)?;
    eprintln!("adapter: {} ({:?})", ctx.info.name, ctx.info.backend);
    if let Some(warning) = ctx.fallback_warning() {
        let loud = ctx.info.backend == wgpu::Backend::Gl;
        eprintln!("{}: {warning}", if loud { "WARNING" } else { "note" });
    }
    Ok(ctx)
}

/// A count or size option: zero is refused by the parser, with the option's name.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

fn present(paths: Vec<Option<&PathBuf>>) -> Vec<&std::path::Path> {
    paths.into_iter().flatten().map(PathBuf::as_path).collect()
}

impl Command {
    /// The files and directories this command writes.
    fn outputs(&self) -> (Vec<&std::path::Path>, Vec<&std::path::Path>) {
        use Command::*;
        let (files, dirs): (Vec<Option<&PathBuf>>, Vec<Option<&PathBuf>>) = match self {
            Score {
                output, rejects, ..
            } => (vec![Some(output), rejects.as_ref()], vec![]),
            ApplyRows { out, model, .. } => (vec![], vec![Some(out.as_ref().unwrap_or(model))]),
            CacheBench { json, .. }
            | Bench { json, .. }
            | Ablation { json, .. }
            | TrainBench { json, .. }
            | Eval { json, .. } => (vec![json.as_ref()], vec![]),
            Init { out, .. } => (vec![], vec![Some(out)]),
            Train { out, json, .. } => (vec![json.as_ref()], vec![Some(out)]),
            GenData { output, .. } | GenInput { output, .. } => (vec![Some(output)], vec![]),
            Kuairand {
                output, spec_out, ..
            } => (vec![Some(output), Some(spec_out)], vec![]),
            Info | Plan { .. } => (vec![], vec![]),
        };
        (present(files), present(dirs))
    }

    fn check_outputs(&self) -> Result<()> {
        let (files, dirs) = self.outputs();
        files.into_iter().try_for_each(pepnet::check_output_file)?;
        dirs.into_iter().try_for_each(pepnet::check_output_dir)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A run stopped by SIGINT or SIGTERM leaves no half-written output behind.
    if let Err(e) = pepnet::remove_unfinished_on_interrupt() {
        eprintln!("warning: cannot watch for interrupts ({e}); an interrupted run may leave .pepnet-* files");
    }
    // Every output is checked before any work starts: a run never fails at its end for want
    // of a directory (nor loses what it computed).
    if let Err(e) = cli.command.check_outputs() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Score {
            model,
            input,
            output,
            batch_size,
            carry,
            backend,
            adapter,
            precision,
            rejects,
            quiet,
            readers,
            cache_rows,
            cache_bytes,
            cache_policy,
        } => {
            let cache = match cache_options(cache_rows, cache_bytes, &cache_policy) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let options = ScoreFileOptions {
                batch_size,
                carry,
                rejects,
                progress: !quiet,
                readers: readers.unwrap_or_else(pepnet::pipeline::default_readers),
                ..Default::default()
            };
            score(
                &model,
                &input,
                &output,
                options,
                cache,
                backend,
                (adapter.as_deref(), precision),
            )
        }
        Command::ApplyRows { model, rows, out } => apply_rows(&model, &rows, out.as_deref()),
        Command::CacheBench {
            distinct,
            lookups,
            batch,
            no_throughput,
            users,
            items,
            batches,
            rows,
            json,
            adapter,
        } => cache_bench(
            (distinct, lookups, batch),
            (!no_throughput).then_some((users, items, batches, rows)),
            json.as_deref(),
            adapter.as_deref(),
        ),
        Command::Init { spec, out, seed } => init(&spec, &out, seed),
        Command::Info => {
            info();
            Ok(())
        }
        Command::Plan { model, precision } => plan(&model, precision),
        Command::Kuairand {
            log,
            users,
            videos,
            output,
            spec_out,
            dim,
        } => pepnet::tools::kuairand::convert(&log, &users, &videos, &output, dim).and_then(|c| {
            pepnet::write_file(&spec_out, c.spec.to_json().as_bytes())?;
            eprintln!(
                "wrote {} rows to {} and the spec to {}",
                c.rows,
                output.display(),
                spec_out.display()
            );
            Ok(())
        }),
        Command::GenData {
            model,
            rows,
            output,
            world,
            seed,
        } => load_spec(&model).and_then(|spec| {
            pepnet::datagen::write(&spec, rows, world, seed, &output)?;
            eprintln!("wrote {rows} labelled rows to {}", output.display());
            Ok(())
        }),
        Command::Train {
            model,
            train: train_path,
            valid,
            out,
            epochs,
            batch_size,
            adam_lr,
            adam_eps,
            adagrad_lr,
            adagrad_eps,
            task_weights,
            labels,
            seed,
            no_shuffle,
            json,
            adapter,
            precision,
        } => {
            let options = pepnet::train::TrainerOptions {
                batch_size,
                adam: pepnet::gpu::optimizer::AdamConfig {
                    lr: adam_lr,
                    eps: adam_eps,
                    ..Default::default()
                },
                adagrad: pepnet::gpu::optimizer::AdaGradConfig {
                    lr: adagrad_lr,
                    eps: adagrad_eps,
                },
                task_weights: (!task_weights.is_empty()).then_some(task_weights),
                precision,
            };
            let config = pepnet::train::TrainConfig {
                epochs,
                seed,
                shuffle: !no_shuffle,
                progress: true,
            };
            train(
                &model,
                (&train_path, valid.as_deref()),
                &out,
                &labels,
                &options,
                &config,
                json.as_deref(),
                adapter.as_deref(),
            )
        }
        Command::Ablation {
            model,
            train: train_path,
            valid,
            seeds,
            epochs,
            batch_size,
            user_column,
            labels,
            json,
            adapter,
            precision,
        } => ablation(
            &model,
            (&train_path, &valid),
            &seeds,
            (epochs, batch_size, precision),
            user_column,
            &labels,
            json.as_deref(),
            adapter.as_deref(),
        ),
        Command::TrainBench {
            preset,
            model,
            batch_size,
            steps,
            json,
            adapter,
            precision,
        } => train_bench(
            &preset,
            model.as_deref(),
            (batch_size, precision),
            steps,
            json.as_deref(),
            adapter.as_deref(),
        ),
        Command::Eval {
            model,
            input,
            scores,
            user_column,
            labels,
            json,
        } => eval(
            &model,
            &input,
            &scores,
            user_column,
            &labels,
            json.as_deref(),
        ),
        Command::Bench {
            preset,
            model,
            batch_sizes,
            iters,
            warmup,
            budget_s,
            json,
            input,
            seed,
            adapter,
            precision,
            host_only,
            readers,
            peaks,
        } => {
            if host_only {
                return match host_bench(
                    &preset,
                    model.as_deref(),
                    input.as_deref(),
                    batch_sizes.first().copied().unwrap_or(4096),
                    readers,
                    json.as_deref(),
                ) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            let config = pepnet::tools::bench::BenchConfig {
                batch_sizes,
                warmup,
                iterations: iters,
                budget: std::time::Duration::from_secs_f64(budget_s.max(0.0)),
                seed,
                precision,
                peaks: match peaks.as_slice() {
                    [gbps, f32_tflops, f16_tflops]
                        if [gbps, f32_tflops, f16_tflops].iter().all(|&&x| x > 0.0) =>
                    {
                        Some(pepnet::tools::bench::DevicePeaks {
                            bytes_per_s: gbps * 1e9,
                            f32_flops: f32_tflops * 1e12,
                            f16_matrix_flops: f16_tflops * 1e12,
                        })
                    }
                    [] => None,
                    _ => {
                        eprintln!(
                            "error: --peaks takes three positive numbers: GB/s, f32 TFLOP/s, \
                             f16 tensor TFLOP/s"
                        );
                        return ExitCode::from(2);
                    }
                },
                ..Default::default()
            };
            bench(
                &preset,
                model.as_deref(),
                config,
                input.as_deref(),
                json.as_deref(),
                adapter.as_deref(),
            )
        }
        Command::GenInput {
            model,
            rows,
            output,
            seed,
        } => gen_input(&model, rows, &output, seed),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn score(
    model_dir: &std::path::Path,
    input: &std::path::Path,
    output: &std::path::Path,
    options: ScoreFileOptions,
    cache: pepnet::cache::CacheOptions,
    backend: Backend,
    (adapter, precision): (Option<&str>, Precision),
) -> Result<()> {
    let model = Model::load(model_dir)?;
    let engine = match backend {
        Backend::Gpu => {
            let ctx = open_gpu(adapter)?;
            let engine_options = EngineOptions {
                max_batch: options.batch_size,
                workspaces: options.scorers,
                cache,
                precision,
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
    let summary = pepnet::pipeline::score_file(&model.spec, input, output, &options, &score)?;
    let rejected = match &options.rejects {
        Some(path) => format!(", {} rejected -> {}", summary.rejected, path.display()),
        None => String::new(),
    };
    eprintln!(
        "scored {} rows in {:.3} s ({:.0} rows/s) -> {}{rejected}",
        summary.rows,
        summary.seconds,
        summary.rows_per_second(),
        output.display()
    );
    if let Some(stats) = engine.as_ref().and_then(Engine::cache_stats) {
        eprint!("{}", cache_table(&stats));
    }
    Ok(())
}

fn cache_options(
    rows: Option<u64>,
    bytes: Option<u64>,
    policy: &str,
) -> std::result::Result<pepnet::cache::CacheOptions, String> {
    use pepnet::cache::{CacheCapacity, CacheOptions, EvictionPolicy};
    let mut options = CacheOptions {
        policy: EvictionPolicy::parse(policy).map_err(|e| format!("--cache-policy {e}"))?,
        ..Default::default()
    };
    if let Some(n) = rows {
        options.capacity = CacheCapacity::Rows(n);
    }
    if let Some(b) = bytes {
        options.capacity = CacheCapacity::Bytes(b);
    }
    Ok(options)
}

/// The cache's counters, one line per hashed feature and a total.
fn cache_table(stats: &pepnet::cache::CacheStats) -> String {
    let mut out = format!(
        "embedding cache ({}): {} of {} rows used, {} rows in the store\n{:<16} {:>10} {:>10} {:>8} {:>10} {:>10} {:>9} {:>8} {:>8}\n",
        stats.policy, stats.cached_rows, stats.capacity_rows, stats.store_rows,
        "feature", "hits", "misses", "hit%", "inserted", "evicted", "unknown", "updated", "expired"
    );
    for s in stats.features.iter().chain(std::iter::once(&stats.total)) {
        out += &format!(
            "{:<16} {:>10} {:>10} {:>7.2}% {:>10} {:>10} {:>9} {:>8} {:>8}\n",
            s.feature,
            s.hits,
            s.misses,
            100.0 * s.hit_rate(),
            s.insertions,
            s.evictions,
            s.unknown,
            s.updates,
            s.expired
        );
    }
    out
}

fn apply_rows(
    model_dir: &std::path::Path,
    rows: &std::path::Path,
    out: Option<&std::path::Path>,
) -> Result<()> {
    let mut model = Model::load(model_dir)?;
    let updates = pepnet::store::read_rows_file(rows, &model.spec)?;
    for (f, update) in &updates {
        let name = model.spec.features[*f].name.clone();
        let table = model
            .weights
            .hashed_mut(&name)
            .expect("hashed features have stored rows");
        let (replaced, added) = table.merge(update);
        eprintln!("{name}: {replaced} rows replaced, {added} added");
    }
    let out = out.unwrap_or(model_dir);
    model.save(out)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

fn cache_bench(
    hit: (u64, usize, usize),
    throughput: Option<(usize, usize, usize, usize)>,
    json: Option<&std::path::Path>,
    adapter: Option<&str>,
) -> Result<()> {
    use pepnet::cache::EvictionPolicy;
    use pepnet::tools::cache_bench as bench;
    let (distinct, lookups, batch) = hit;
    let policies = [
        EvictionPolicy::score(),
        EvictionPolicy::Lru,
        EvictionPolicy::Lfu,
    ];
    let shares = [0.01, 0.05, 0.20];
    let rates = bench::hit_rates(
        distinct,
        lookups,
        batch,
        &[0.8, 1.0, 1.2],
        &shares,
        &policies,
    )?;
    println!(
        "hit rates: {distinct} distinct ids, {lookups} Zipf lookups in batches of {batch} (first fifth warms up)"
    );
    println!(
        "{:>8} {:>7} {:>9} {:>10} {:>10} {:>10}",
        "exponent", "cache", "rows", "score", "lru", "lfu"
    );
    for row in rates.chunks(policies.len()) {
        println!(
            "{:>8.1} {:>6.0}% {:>9} {:>9.2}% {:>9.2}% {:>9.2}%",
            row[0].exponent,
            100.0 * row[0].cache_share,
            row[0].capacity_rows,
            100.0 * row[0].hit_rate,
            100.0 * row[1].hit_rate,
            100.0 * row[2].hit_rate
        );
    }
    let mut speeds = Vec::new();
    if let Some((users, items, batches, rows)) = throughput {
        let ctx = open_gpu(adapter)?;
        println!(
            "\nthroughput on {}: {users} users + {items} items, Zipf 1.0, {batches} batches of {rows}",
            ctx.info.name
        );
        speeds = bench::throughput(&ctx, users, items, &[0.01, 0.05, 0.20, 1.0], batches, rows)?;
        println!(
            "{:<12} {:>12} {:>9} {:>11} {:>10}",
            "setup", "samples/s", "hit%", "resolve µs", "gather µs"
        );
        let us = |t: Option<f64>| t.map_or("-".to_string(), |t| format!("{t:.0}"));
        for s in &speeds {
            println!(
                "{:<12} {:>12.0} {:>8.2}% {:>11} {:>10}",
                s.setup,
                s.samples_per_s,
                100.0 * s.hit_rate,
                us(s.resolve_us),
                us(s.gather_us)
            );
        }
    }
    if let Some(path) = json {
        write_json(
            path,
            &serde_json::json!({"hit_rates": rates, "throughput": speeds}),
        )?;
    }
    Ok(())
}

fn init(spec_path: &std::path::Path, out: &std::path::Path, seed: u64) -> Result<()> {
    let spec = ModelSpec::load(spec_path)?;
    Model::init(spec, seed)?.save(out)?;
    eprintln!("wrote {} (seed {seed})", out.display());
    Ok(())
}

fn host_bench(
    preset: &str,
    model_dir: Option<&std::path::Path>,
    input: Option<&std::path::Path>,
    batch_size: usize,
    mut threads: Vec<usize>,
    json: Option<&std::path::Path>,
) -> Result<()> {
    let model = match model_dir {
        Some(dir) => Model::load(dir)?,
        None => Model::init(pepnet::tools::bench::preset(preset)?, 0)?,
    };
    let input = input.expect("clap requires --input with --host-only");
    if threads.is_empty() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        threads = (1..=cores).collect();
    }
    if let Some(&t) = threads.iter().find(|&&t| t == 0) {
        return Err(pepnet::Error::Batch(format!(
            "--readers {t}: at least one thread is needed"
        )));
    }
    eprintln!(
        "host only: {} read and encoded in batches of {batch_size}, {} cores",
        input.display(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let results = pepnet::tools::host_bench::run(&model, input, batch_size.max(1), &threads)?;
    print!("{}", pepnet::tools::host_bench::table(&results));
    let steps = pepnet::tools::host_bench::step_rates(&model, input, batch_size.max(1))?;
    println!(
        "one core, batches in memory: the engine's validation {:.0} rows/s, encoding {:.0} rows/s",
        steps.validate_rows_per_s, steps.encode_rows_per_s
    );
    if let Some(path) = json {
        write_json(path, &results)?;
    }
    Ok(())
}

fn bench(
    preset: &str,
    model_dir: Option<&std::path::Path>,
    mut config: pepnet::tools::bench::BenchConfig,
    input: Option<&std::path::Path>,
    json: Option<&std::path::Path>,
    adapter: Option<&str>,
) -> Result<()> {
    let (model, name) = match model_dir {
        Some(dir) => (Model::load(dir)?, dir.display().to_string()),
        None => (
            Model::init(pepnet::tools::bench::preset(preset)?, config.seed)?,
            preset.to_string(),
        ),
    };
    if let Some(path) = input {
        // One batch holding the whole file.
        let mut pool = None;
        for batch in InputReader::open(path, &model.spec, &[], usize::MAX, None)? {
            pool = Some(batch?.batch);
        }
        config.pool = pool;
    }
    let ctx = open_gpu(adapter)?;
    if config.batch_sizes.is_empty() {
        config.batch_sizes = if ctx.info.device_type == wgpu::DeviceType::Cpu {
            eprintln!("a CPU adapter: sweeping batch sizes 1, 64, 1024 (choose others with --batch-sizes)");
            vec![1, 64, 1024]
        } else {
            vec![1, 64, 1024, 16384, 65536]
        };
    }
    let config = &config;
    eprintln!(
        "benchmarking {name} on {} ({:?})",
        ctx.info.name, ctx.info.backend
    );
    let report = pepnet::tools::bench::run(&ctx, &model, &name, config, |r| {
        eprintln!(
            "  batch {:>6}: {:>10.0} samples/s, p50 {:.3} ms ({} iterations)",
            r.batch_size, r.samples_per_s, r.latency_ms_p50, r.iterations
        )
    })?;
    println!("{}", pepnet::tools::bench::table(&report));
    if let Some(path) = json {
        pepnet::tools::bench::write_json(&report, path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn eval(
    model: &std::path::Path,
    input: &std::path::Path,
    scores: &std::path::Path,
    user_column: String,
    labels: &[String],
    json: Option<&std::path::Path>,
) -> Result<()> {
    let spec = load_spec(model)?;
    let options = pepnet::eval::EvalOptions {
        user_column,
        label_columns: label_columns(&spec, labels)?,
    };
    let report = pepnet::eval::evaluate(&spec, input, scores, &options)?;
    print!("{}", pepnet::eval::table(&report));
    if let Some(path) = json {
        write_json(path, &report)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn ablation(
    model: &std::path::Path,
    (train_path, valid_path): (&std::path::Path, &std::path::Path),
    seeds: &[u64],
    (epochs, batch_size, precision): (usize, usize, Precision),
    user_column: String,
    labels: &[String],
    json: Option<&std::path::Path>,
    adapter: Option<&str>,
) -> Result<()> {
    use pepnet::tools::ablation;
    use pepnet::train::{LabelledData, TrainerOptions};
    let spec = load_spec(model)?;
    let columns = label_columns(&spec, labels)?;
    let train_data = LabelledData::read(train_path, &spec, &columns)?;
    let valid = LabelledData::read(valid_path, &spec, &columns)?;
    let truth = pepnet::eval::read_eval_data(
        &spec,
        valid_path,
        &pepnet::eval::EvalOptions {
            user_column,
            label_columns: columns,
        },
    )?;
    let ctx = open_gpu(adapter)?;
    let options = TrainerOptions {
        batch_size,
        precision,
        ..Default::default()
    };
    eprintln!(
        "ablation ({}) on {}: 5 models x {} seeds, {} epochs of {} samples",
        precision.name(),
        ctx.info.name,
        seeds.len(),
        epochs,
        train_data.len()
    );
    let cells = ablation::run(
        &ctx,
        &spec,
        (&train_data, &valid, &truth),
        seeds,
        &options,
        epochs,
        |name, seed| eprintln!("trained {name}, seed {seed}"),
    )?;
    print!("{}", ablation::table(&cells));
    if let Some(path) = json {
        write_json(path, &cells)?;
    }
    Ok(())
}

fn train_bench(
    preset: &str,
    model: Option<&std::path::Path>,
    (batch_size, precision): (usize, Precision),
    steps: usize,
    json: Option<&std::path::Path>,
    adapter: Option<&str>,
) -> Result<()> {
    let model = match model {
        Some(p) if p.is_dir() => Model::load(p)?,
        Some(p) => Model::init(ModelSpec::load(p)?, 0)?,
        None => Model::init(pepnet::tools::bench::preset(preset)?, 0)?,
    };
    let ctx = open_gpu(adapter)?;
    let r = pepnet::tools::train_bench::run(ctx, &model, (batch_size, precision), steps, 0)?;
    println!(
        "{}: batch {}, {} steps: {:.1} ms/step, {:.0} samples/s, {:.1} GFLOP/s \
         ({} FLOPs per sample)",
        r.device, r.batch_size, r.steps, r.step_ms, r.samples_per_s, r.gflops, r.flops_per_sample
    );
    if let Some(profile) = &r.profile {
        let total: f64 = profile.iter().map(|p| p.1).sum();
        for (label, us) in profile {
            println!("  {label:32} {us:10.1} us  {:5.1}%", 100.0 * us / total);
        }
        println!("  {:32} {total:10.1} us", "GPU total");
    }
    if let Some(path) = json {
        write_json(path, &r)?;
    }
    Ok(())
}

/// Per task, its label column: the task's own name unless `--labels` names another.
fn label_columns(spec: &ModelSpec, labels: &[String]) -> Result<Vec<String>> {
    let mut label_columns = spec.tasks.clone();
    for pair in labels {
        let (task, column) = pair
            .split_once('=')
            .unwrap_or((pair.as_str(), pair.as_str()));
        let t = spec
            .tasks
            .iter()
            .position(|x| x == task)
            .ok_or_else(|| pepnet::Error::Spec {
                file: "--labels".into(),
                message: format!(
                    "'{task}' is not a task of the model; the tasks are {:?}",
                    spec.tasks
                ),
            })?;
        label_columns[t] = column.to_string();
    }
    Ok(label_columns)
}

#[allow(clippy::too_many_arguments)]
fn train(
    model: &std::path::Path,
    (train_path, valid_path): (&std::path::Path, Option<&std::path::Path>),
    out: &std::path::Path,
    labels: &[String],
    options: &pepnet::train::TrainerOptions,
    config: &pepnet::train::TrainConfig,
    json: Option<&std::path::Path>,
    adapter: Option<&str>,
) -> Result<()> {
    use pepnet::train::{LabelledData, OptimizerState, Trainer};
    // A directory resumes; a spec file starts fresh.
    let (model, state) = if model.is_dir() {
        let m = Model::load(model)?;
        let state = OptimizerState::load(model, &m.spec)?;
        (m, state)
    } else {
        (Model::init(ModelSpec::load(model)?, config.seed)?, None)
    };
    let columns = label_columns(&model.spec, labels)?;
    let data = LabelledData::read(train_path, &model.spec, &columns)?;
    let valid = valid_path
        .map(|p| LabelledData::read(p, &model.spec, &columns))
        .transpose()?;
    let ctx = open_gpu(adapter)?;
    eprintln!(
        "training on {} ({} samples{}, {} epochs of batches of {})",
        ctx.info.name,
        data.len(),
        match &state {
            Some(s) => format!(", resuming after step {}", s.step),
            None => String::new(),
        },
        config.epochs,
        options.batch_size
    );
    let mut trainer = Trainer::new(ctx, &model, state.as_ref(), options)?;
    let report = pepnet::train::train(&mut trainer, &data, valid.as_ref(), config)?;
    for e in &report.epochs {
        let mut line = format!(
            "epoch {}: train loss {:.5}, {:.0} samples/s ({:.1} s)",
            e.epoch, e.train_loss, e.samples_per_s, e.seconds
        );
        if let Some(v) = &e.validation {
            line += &format!("; validation loss {:.5}, AUC", v.loss);
            for (task, auc) in model.spec.tasks.iter().zip(&v.auc) {
                match auc {
                    Some(a) => line += &format!(" {task} {a:.4}"),
                    None => line += &format!(" {task} -"),
                }
            }
        }
        eprintln!("{line}");
    }
    // Written only now, all at once: a failed run leaves the output as it was.
    let trained = trainer.model()?;
    let state = trainer.optimizer_state()?;
    if let Some(path) = json {
        write_json(path, &report)?;
    }
    state.save_with(&trained, out)?;
    eprintln!("wrote {} (step {})", out.display(), state.step);
    Ok(())
}

/// Writes a report as pretty JSON, atomically.
fn write_json(path: &std::path::Path, report: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(report).expect("a report always serialises");
    pepnet::write_file(path, text.as_bytes())
}

/// A spec from a model directory or a spec file.
fn load_spec(path: &std::path::Path) -> Result<ModelSpec> {
    if path.is_dir() {
        ModelSpec::load(&path.join(pepnet::model::SPEC_FILE))
    } else {
        ModelSpec::load(path)
    }
}

fn gen_input(
    model: &std::path::Path,
    rows: usize,
    output: &std::path::Path,
    seed: u64,
) -> Result<()> {
    let spec = load_spec(model)?;
    pepnet::synth::write_file(&spec, rows, seed, output)?;
    eprintln!("wrote {rows} rows to {}", output.display());
    Ok(())
}

fn plan(path: &std::path::Path, precision: Precision) -> Result<()> {
    // The plan comes from the spec alone: no weights are read or made.
    let spec = load_spec(path)?;
    let layout = pepnet::plan::PackedLayout::new(&spec);
    let plan = pepnet::plan::Plan::new(&spec, &layout, 1);
    // Which linear kernel runs depends on the device and the batch; name the choice.
    let linear_kernel = match precision {
        Precision::F32 => "linear f32 simt",
        Precision::F16 => "linear f16 coop|simt",
    };
    println!(
        "{:<14} {:<21} {:>8} {:>14} {:>16} {:>14}",
        "dispatch", "kernel", "problems", "FLOP/sample", "act bytes/sample", "weight bytes"
    );
    let (mut flops, mut act, mut weights) = (0, 0, 0);
    for step in &plan.steps {
        let (f, a, w) = (
            step.flops_per_sample(),
            step.activation_bytes_per_sample(&spec),
            step.weight_bytes_at(precision),
        );
        let kernel = match step {
            pepnet::plan::Step::Linear { .. } => linear_kernel,
            other => other.label(),
        };
        println!(
            "{:<14} {:<21} {:>8} {:>14} {:>16} {:>14}",
            step.label(),
            kernel,
            step.problems(),
            f,
            a,
            w
        );
        (flops, act, weights) = (flops + f, act + a, weights + w);
    }
    println!(
        "{:<14} {:<21} {:>8} {:>14} {:>16} {:>14}",
        "total",
        "",
        plan.steps.len(),
        flops,
        act,
        weights
    );
    println!(
        "activation row: {} f32 per sample",
        pepnet::plan::Plan::floats_per_sample(&spec)
    );
    if precision == Precision::F16 {
        println!(
            "f16: linear steps run on tensor cores (cooperative matrices) where the device offers \
             f16 x f16 -> f32 fragments of 8 or 16, on batches of more than {} rows; else on the \
             f16 SIMT kernels",
            pepnet::gpu::linear::SMALL_MAX_ROWS
        );
    }
    Ok(())
}

fn info() {
    let adapters = pepnet::gpu::list_adapters();
    if adapters.is_empty() {
        println!("no adapters found; install a Vulkan driver (e.g. Debian's mesa-vulkan-drivers for lavapipe)");
    }
    for (i, a) in adapters.iter().enumerate() {
        let (info, l) = (&a.info, &a.limits);
        println!("[{i}] {}", info.name);
        println!(
            "    backend {:?}, device type {:?}, driver {} {}",
            info.backend, info.device_type, info.driver, info.driver_info
        );
        println!(
            "    max storage binding {} MiB, max buffer {} MiB, storage buffers per stage {}, workgroup storage {} KiB, invocations per workgroup {}",
            l.max_storage_buffer_binding_size >> 20,
            l.max_buffer_size >> 20,
            l.max_storage_buffers_per_shader_stage,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_compute_invocations_per_workgroup
        );
        println!(
            "    subgroup size {}..{}",
            info.subgroup_min_size, info.subgroup_max_size
        );
        let shapes: Vec<String> = a
            .coop
            .iter()
            .map(|p| {
                format!(
                    "{}x{}x{} {:?}->{:?}",
                    p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type
                )
            })
            .collect();
        let usable = pepnet::gpu::linear::CoopShape::choose(
            &a.coop,
            info.subgroup_min_size,
            info.subgroup_max_size,
            l,
        );
        println!(
            "    cooperative matrices (tensor cores): {}; f16 runs on {}",
            if shapes.is_empty() {
                "none".to_string()
            } else {
                shapes.join(", ")
            },
            match usable {
                Some(shape) if a.features.contains(wgpu::Features::SHADER_F16) =>
                    format!("f16 coop {0}x{0}x{0}", shape.size),
                _ => "the f16 SIMT kernels".to_string(),
            }
        );
        let wanted = [
            ("shader-f16", wgpu::Features::SHADER_F16),
            (
                "cooperative-matrix",
                wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX,
            ),
            ("subgroup", wgpu::Features::SUBGROUP),
            ("timestamp-query", wgpu::Features::TIMESTAMP_QUERY),
        ];
        let have: Vec<&str> = wanted
            .iter()
            .filter(|(_, f)| a.features.contains(*f))
            .map(|(n, _)| *n)
            .collect();
        println!(
            "    features: {}",
            if have.is_empty() {
                "none of interest".to_string()
            } else {
                have.join(", ")
            }
        );
    }
}
