//! How fast the host turns a file into GPU-ready buffers, with no GPU: the ceiling the host puts
//! on scoring. For each thread count `t` it runs what `pepnet score` runs before the GPU:
//! `t` reader threads parsing and checking the file (CSV chunks or Parquet row groups in turn)
//! and `t` encoder threads encoding each batch into the global row ids and dense values the
//! engine uploads (an engine does not check a reader's batches again); it also times the read
//! alone.

use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::gpu::act::ActStorage;
use crate::gpu::gather::layout::GatherLayout;
use crate::io::InputReader;
use crate::model::Model;
use crate::plan::{PackedWeights, Plan};

/// One core's rates of the two steps after reading, on batches already in memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRates {
    /// Checking a batch again as `Engine::score` does for a batch of unknown origin (the
    /// scoring pipeline skips it: its readers have checked every value).
    pub validate_rows_per_s: f64,
    /// Encoding into global row ids and dense values.
    pub encode_rows_per_s: f64,
}

/// One thread count's rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostResult {
    /// Reader threads, and as many encoder threads.
    pub threads: usize,
    pub rows: usize,
    /// File → checked batches (parse and check only).
    pub read_rows_per_s: f64,
    /// File → GPU-ready buffers (parse, check, encode).
    pub host_rows_per_s: f64,
}

/// How the engine would encode `model`'s batches, as if on the largest binding any device
/// offers: only the id layout matters here, not the paging.
fn id_layout(model: &Model, batch_size: usize) -> Result<GatherLayout> {
    let packed = PackedWeights::new(&model.spec, &model.weights);
    let rows = batch_size.max(1) as u32;
    let plan = Plan::new(&model.spec, &packed.layout, rows, ActStorage::F32);
    GatherLayout::new(&model.spec, &plan.destinations, u32::MAX as u64 & !3, 0)
}

/// Times validation and encoding alone, on one core, over `input`'s batches held in memory.
pub fn step_rates(model: &Model, input: &Path, batch_size: usize) -> Result<StepRates> {
    let spec = &model.spec;
    let layout = id_layout(model, batch_size)?;
    let batches = InputReader::open(input, spec, &[], batch_size, None)?
        .map(|b| b.map(|b| b.batch))
        .collect::<Result<Vec<_>>>()?;
    let rows: usize = batches.iter().map(|b| b.len()).sum();
    let start = Instant::now();
    for b in &batches {
        b.validate(spec, "batch", 1)?;
    }
    let validate_s = start.elapsed().as_secs_f64();
    let (mut ids, mut dense, mut keys) = (Vec::new(), Vec::new(), Vec::new());
    let start = Instant::now();
    for b in &batches {
        layout.encode(b, 0..b.len(), &mut ids, &mut dense, &mut keys);
    }
    let encode_s = start.elapsed().as_secs_f64();
    Ok(StepRates {
        validate_rows_per_s: rows as f64 / validate_s.max(1e-9),
        encode_rows_per_s: rows as f64 / encode_s.max(1e-9),
    })
}

/// Measures `input` (CSV or Parquet with `model`'s features) at each of `threads`, in batches
/// of `batch_size`.
pub fn run(
    model: &Model,
    input: &Path,
    batch_size: usize,
    threads: &[usize],
) -> Result<Vec<HostResult>> {
    let spec = &model.spec;
    let layout = id_layout(model, batch_size)?;
    let mut results = Vec::new();
    for &t in threads {
        let t = t.max(1);
        // The read alone.
        let start = Instant::now();
        let mut rows = 0;
        for batch in InputReader::open_parallel(input, spec, &[], batch_size, None, t)? {
            rows += batch?.batch.len();
        }
        let read_s = start.elapsed().as_secs_f64();

        // Read and encode, as the scoring pipeline does before the GPU.
        let start = Instant::now();
        let (tx, rx) = sync_channel::<crate::batch::Batch>(2 * t);
        let rx = Mutex::new(rx);
        let encoded = std::thread::scope(|s| -> Result<usize> {
            let workers: Vec<_> = (0..t)
                .map(|_| {
                    let (rx, layout) = (&rx, &layout);
                    s.spawn(move || -> Result<usize> {
                        let (mut ids, mut dense, mut keys) = (Vec::new(), Vec::new(), Vec::new());
                        let mut done = 0;
                        loop {
                            let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                            let Ok(batch) = next else { break };
                            layout.encode(&batch, 0..batch.len(), &mut ids, &mut dense, &mut keys);
                            done += batch.len();
                        }
                        Ok(done)
                    })
                })
                .collect();
            let mut read = Ok(());
            for batch in InputReader::open_parallel(input, spec, &[], batch_size, None, t)? {
                match batch {
                    Ok(b) => {
                        if tx.send(b.batch).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        read = Err(e);
                        break;
                    }
                }
            }
            drop(tx);
            let mut total = 0;
            for w in workers {
                total += w.join().expect("an encoder thread does not panic")?;
            }
            read.map(|()| total)
        })?;
        let host_s = start.elapsed().as_secs_f64();
        debug_assert_eq!(encoded, rows);
        results.push(HostResult {
            threads: t,
            rows,
            read_rows_per_s: rows as f64 / read_s.max(1e-9),
            host_rows_per_s: encoded as f64 / host_s.max(1e-9),
        });
    }
    Ok(results)
}

/// The results as a table, with the per-thread rate and what 10 M rows/s on a 16-core host
/// would need of each core.
pub fn table(results: &[HostResult]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>7} {:>9} {:>14} {:>16} {:>20}",
        "threads", "rows", "read rows/s", "host rows/s", "host rows/s/thread"
    );
    for r in results {
        let _ = writeln!(
            out,
            "{:>7} {:>9} {:>14.0} {:>16.0} {:>20.0}",
            r.threads,
            r.rows,
            r.read_rows_per_s,
            r.host_rows_per_s,
            r.host_rows_per_s / r.threads as f64
        );
    }
    let _ = writeln!(
        out,
        "10 M rows/s on a 16-core GPU host needs {:.0} rows/s per core",
        10e6 / 16.0
    );
    out
}
