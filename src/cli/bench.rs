//! `pepnet bench`: samples/s, latency and per-kernel GPU time over a sweep of batch sizes, each
//! kernel against its floors; or, with `--host-only`, the host side alone.

use std::path::PathBuf;

use clap::Args;

use pepnet::io::InputReader;
use pepnet::tools::bench::{self, BenchOptions, DevicePeaks};
use pepnet::{Model, Result};

use super::{at_least_one, Device, Report};

/// Benchmark a model over a sweep of batch sizes: samples/s, latency, per-kernel GPU time.
#[derive(Args)]
pub struct Bench {
    /// A built-in model: tiny, paper or paper_mmoe.
    #[arg(long, conflicts_with = "model", default_value = "tiny")]
    pub preset: String,
    /// A model directory instead of a preset.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Batch sizes to sweep [default: 1,64,1024,16384,65536; 1,64,1024 on a CPU adapter
    /// such as lavapipe, where the large ones take minutes each].
    #[arg(long, value_delimiter = ',', value_parser = at_least_one())]
    pub batch_sizes: Vec<usize>,
    /// Timed iterations per batch size (fewer if --budget-s runs out; at least one).
    #[arg(long, default_value_t = 20, value_parser = at_least_one())]
    pub iters: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Seconds of timed iterations per batch size.
    #[arg(long, default_value_t = 10.0)]
    pub budget_s: f64,
    #[command(flatten)]
    pub report: Report,
    /// Cut the batches from this CSV's rows (the same file the PyTorch baseline times)
    /// instead of random rows.
    #[arg(long)]
    pub input: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: Device,
    /// The device's peaks for each kernel's floor: memory GB/s, f32 TFLOP/s, f16 tensor
    /// TFLOP/s, e.g. 4300,67,989 (known for an H200 without it).
    #[arg(long, value_parser = parse_peaks)]
    pub peaks: Option<DevicePeaks>,
    /// Measure only the host: --input read and encoded into GPU-ready buffers by 1, 2, ...
    /// threads (--readers), no GPU.
    #[arg(long, requires = "input")]
    pub host_only: bool,
    /// Thread counts for --host-only [default: 1 up to the cores].
    #[arg(long, value_delimiter = ',', value_parser = at_least_one())]
    pub readers: Vec<usize>,
}

fn parse_peaks(text: &str) -> std::result::Result<DevicePeaks, String> {
    let numbers: Vec<f64> = text
        .split(',')
        .map(|x| x.trim().parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("{e}"))?;
    match numbers.as_slice() {
        [gbps, f32_tflops, f16_tflops] if numbers.iter().all(|&x| x > 0.0 && x.is_finite()) => {
            Ok(DevicePeaks {
                bytes_per_s: gbps * 1e9,
                f32_flops: f32_tflops * 1e12,
                f16_matrix_flops: f16_tflops * 1e12,
            })
        }
        _ => Err("takes three positive numbers: GB/s, f32 TFLOP/s, f16 tensor TFLOP/s".into()),
    }
}

impl Bench {
    pub fn run(self) -> Result<()> {
        if self.host_only {
            return self.host_only();
        }
        let mut config = BenchOptions {
            batch_sizes: self.batch_sizes.clone(),
            warmup: self.warmup,
            iterations: self.iters,
            budget: std::time::Duration::from_secs_f64(self.budget_s.max(0.0)),
            seed: self.seed,
            precision: self.device.precision,
            peaks: self.peaks,
            ..Default::default()
        };
        let (model, name) = match &self.model {
            Some(dir) => (Model::load(dir)?, dir.display().to_string()),
            None => (
                Model::init(bench::preset(&self.preset)?, config.seed)?,
                self.preset.clone(),
            ),
        };
        if let Some(path) = &self.input {
            // One batch holding the whole file.
            let mut pool = None;
            for batch in InputReader::open(path, &model.spec, &[], usize::MAX, None)? {
                pool = Some(batch?.batch);
            }
            config.pool = pool;
        }
        let ctx = self.device.adapter.open()?;
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
        let report = bench::run(&ctx, &model, &name, config, |r| {
            eprintln!(
                "  batch {:>6}: {:>10.0} samples/s, p50 {:.3} ms ({} iterations)",
                r.batch_size, r.samples_per_s, r.latency_ms_p50, r.iterations
            )
        })?;
        println!("{}", bench::table(&report));
        self.report.write(&report)?;
        if let Some(path) = &self.report.json {
            eprintln!("wrote {}", path.display());
        }
        Ok(())
    }

    fn host_only(&self) -> Result<()> {
        let model = match &self.model {
            Some(dir) => Model::load(dir)?,
            None => Model::init(bench::preset(&self.preset)?, 0)?,
        };
        let input = self
            .input
            .as_deref()
            .expect("clap requires --input with --host-only");
        let batch_size = self.batch_sizes.first().copied().unwrap_or(4096);
        let mut threads = self.readers.clone();
        if threads.is_empty() {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            threads = (1..=cores).collect();
        }
        eprintln!(
            "host only: {} read and encoded in batches of {batch_size}, {} cores",
            input.display(),
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        let results = pepnet::tools::host_bench::run(&model, input, batch_size, &threads)?;
        print!("{}", pepnet::tools::host_bench::table(&results));
        let steps = pepnet::tools::host_bench::step_rates(&model, input, batch_size)?;
        println!(
            "one core, batches in memory: the engine's validation {:.0} rows/s, encoding {:.0} rows/s",
            steps.validate_rows_per_s, steps.encode_rows_per_s
        );
        self.report.write(&results)
    }
}
