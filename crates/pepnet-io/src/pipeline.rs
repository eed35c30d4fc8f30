//! Scoring a file at scale: a pipeline of threads so that reading and parsing, scoring, and
//! writing overlap, with memory bounded by a few batches whatever the file size.
//!
//! ```text
//! reader threads (parts of the file, in turn) ──► scorer threads (2) ──(2 results)──► writer
//! ```
//!
//! The readers (`ScoreFileOptions::readers`, default the cores up to 4) each parse and check
//! every n-th CSV chunk or Parquet row group; their batches reach the scorers in file order.
//!
//! Two scorers give the engine two batches in flight (one uploading or reading back while the
//! other computes), each in its own workspace; the writer puts results back in input order.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arrow_array::ArrayRef;
use indicatif::{ProgressBar, ProgressStyle};

use crate::{InputBatch, InputReader, RejectedRow, Rejects, ScoreWriter};
use pepnet_core::batch::CheckedBatch;
use pepnet_core::error::{Error, Result, SampleError};
use pepnet_core::spec::ModelSpec;

/// How [`score_file`] runs.
#[derive(Debug, Clone)]
pub struct ScoreFileOptions {
    pub batch_size: usize,
    /// Input columns copied to the output, before the task columns.
    pub carry: Vec<String>,
    /// Where rows that do not fit the model go (with the reason); without it, the first such
    /// row fails the run.
    pub rejects: Option<std::path::PathBuf>,
    /// Show a progress bar (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Threads scoring at once (give the engine as many workspaces).
    pub scorers: usize,
    /// Threads parsing and checking the input (CSV chunks or Parquet row groups in turn; output
    /// in input order whatever the number).
    pub readers: usize,
}

/// The default number of reader threads: the machine's cores, at most 4.
pub fn default_readers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

impl Default for ScoreFileOptions {
    fn default() -> Self {
        Self {
            batch_size: 4096,
            carry: Vec::new(),
            rejects: None,
            progress: false,
            scorers: 2,
            readers: default_readers(),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreSummary {
    pub rows: usize,
    pub rejected: usize,
    pub seconds: f64,
}

impl ScoreSummary {
    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.seconds.max(1e-9)
    }
}

struct Scored {
    rows: usize,
    carried: Vec<ArrayRef>,
    scores: Vec<f32>,
    /// Rows the scorer could not score, rejected (only under `--rejects`).
    rejected: Vec<RejectedRow>,
    rows_read: usize,
    total_rows: Option<u64>,
}

/// Scores `input` into `output` (formats by extension) with `score`, which maps a batch to its
/// `len × T` probabilities. The batches come checked against `spec` by the readers (an engine
/// of the same spec scores them without checking again: `Engine::score_checked`). On any error
/// nothing is left at `output` (nor at the rejects path).
pub fn score_file(
    spec: &ModelSpec,
    input: &Path,
    output: &Path,
    options: &ScoreFileOptions,
    score: &(dyn Fn(&CheckedBatch) -> Result<Vec<f32>> + Sync),
) -> Result<ScoreSummary> {
    let start = Instant::now();
    // Before anything is read or written: no output may be the input or the other output.
    let files = [
        ("the input", Some(input)),
        ("the output", Some(output)),
        ("the rejects file", options.rejects.as_deref()),
    ];
    for (i, (what, a)) in files.iter().enumerate() {
        for (other, b) in &files[i + 1..] {
            if let (Some(a), Some(b)) = (a, b) {
                if pepnet_core::atomic_file::same_file(a, b) {
                    return Err(Error::io(
                        b,
                        std::io::Error::other(format!(
                            "{other} is the same file as {what} ({}); nothing was read or written",
                            a.display()
                        )),
                    ));
                }
            }
        }
    }
    let rejects = options
        .rejects
        .as_deref()
        .map(Rejects::create)
        .transpose()?;
    let reader = InputReader::open_parallel(
        input,
        spec,
        &options.carry,
        options.batch_size,
        rejects,
        options.readers,
    )?;
    let writer = ScoreWriter::create(output, &options.carry, &spec.tasks)?;
    let progress = if options.progress && std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {human_pos}/{human_len} rows  {msg}  ETA {eta}")
                .expect("a valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    };

    let rejecting = options.rejects.is_some();
    let (batch_tx, batch_rx) = sync_channel(2);
    let (scored_tx, scored_rx) = sync_channel::<(usize, Result<Scored>)>(2);
    // Behind an Option so that the receiver can be dropped, unblocking the reader, when the
    // writer stops early.
    let batch_rx = Mutex::new(Some(batch_rx));
    let (reader, writer) = std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let mut reader = reader;
            for (seq, batch) in (&mut reader).enumerate() {
                let failed = batch.is_err();
                if batch_tx.send((seq, batch)).is_err() || failed {
                    break;
                }
            }
            reader
        });
        for _ in 0..options.scorers.max(1) {
            let (batch_rx, scored_tx) = (&batch_rx, scored_tx.clone());
            s.spawn(move || loop {
                // Hold the lock only to take a batch, not while scoring it.
                let next = match &*batch_rx.lock().unwrap_or_else(|e| e.into_inner()) {
                    Some(rx) => rx.recv().ok(),
                    None => None,
                };
                let Some((seq, batch)) = next else { break };
                let result = batch.and_then(|b| score_batch(spec, score, b, rejecting, input));
                let failed = result.is_err();
                if scored_tx.send((seq, result)).is_err() || failed {
                    break;
                }
            });
        }
        drop(scored_tx);
        let writer = write_in_order(writer, scored_rx, &progress, input);
        // Unblock the reader if the writer stopped early.
        batch_rx.lock().unwrap_or_else(|e| e.into_inner()).take();
        (reader.join(), writer)
    });
    progress.finish_and_clear();
    let reader = reader.map_err(|_| Error::InputFile {
        source_name: input.display().to_string(),
        message: "the reader failed unexpectedly (a panic while decoding the file)".into(),
    })?;
    let (writer, rows, late_rejects) = writer?;
    let rejected = reader.rejected() + late_rejects.len();
    // The rejects file first: if the output then fails, take the rejects back, so that a failed
    // run leaves neither.
    reader.finish_with(late_rejects)?;
    if let Err(e) = writer.finish() {
        if let Some(path) = &options.rejects {
            let _ = std::fs::remove_file(path);
        }
        return Err(e);
    }
    Ok(ScoreSummary {
        rows,
        rejected,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Writes results in input order; returns the writer, the rows written and the rows the
/// scorers rejected, or the first error.
fn write_in_order(
    mut writer: ScoreWriter,
    scored: Receiver<(usize, Result<Scored>)>,
    progress: &ProgressBar,
    input: &Path,
) -> Result<(ScoreWriter, usize, Vec<RejectedRow>)> {
    let lost = || Error::InputFile {
        source_name: input.display().to_string(),
        message: "a batch was lost between scoring and writing".into(),
    };
    let mut pending = BTreeMap::new();
    let (mut next, mut rows) = (0, 0);
    let mut late_rejects = Vec::new();
    for (seq, result) in scored {
        pending.insert(seq, result);
        while let Some(result) = pending.remove(&next) {
            let s = result?;
            late_rejects.extend(s.rejected);
            writer.write(&s.carried, &s.scores)?;
            rows += s.rows;
            if let Some(total) = s.total_rows {
                progress.set_length(total);
            }
            progress.set_position(s.rows_read as u64);
            let rate = s.rows_read as f64 / progress.elapsed().as_secs_f64().max(1e-3);
            progress.set_message(format!("{rate:.0} rows/s"));
            next += 1;
        }
    }
    if let Some((_, result)) = pending.into_iter().next() {
        // A gap: a batch before these never arrived, which only happens after an error.
        result?;
        return Err(lost());
    }
    Ok((writer, rows, late_rejects))
}

/// `score(batch)`, with a panic turned into an error, so that every batch a scorer takes comes
/// back to the writer (which waits for batches in order) as scores or as an error.
fn score_caught(
    score: &(dyn Fn(&CheckedBatch) -> Result<Vec<f32>> + Sync),
    batch: &CheckedBatch,
) -> Result<Vec<f32>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| score(batch)))
        .unwrap_or_else(|_| Err(Error::Gpu("scoring a batch panicked".into())))
}

/// Scores one input batch. Samples the engine cannot score (`Error::Samples`: a non-finite
/// probability, a sample too large for the cache) fail the run naming their input row, or,
/// when `rejecting`, are rejected with the reason and the rest of the batch scored again.
fn score_batch(
    spec: &ModelSpec,
    score: &(dyn Fn(&CheckedBatch) -> Result<Vec<f32>> + Sync),
    input_batch: InputBatch,
    rejecting: bool,
    input: &Path,
) -> Result<Scored> {
    let InputBatch {
        batch,
        mut rows,
        mut carried,
        rows_read,
        total_rows,
        spec_id,
    } = input_batch;
    let mut checked = CheckedBatch::from_reader(batch, spec_id);
    let mut rejected = Vec::new();
    loop {
        let bad = match score_caught(score, &checked)
            .and_then(|s| pepnet_core::engine::check_probabilities(&s, &spec.tasks).map(|()| s))
        {
            Ok(scores) => {
                return Ok(Scored {
                    rows: rows.len(),
                    carried,
                    scores,
                    rejected,
                    rows_read,
                    total_rows,
                })
            }
            Err(Error::Samples(bad)) => bad,
            Err(e) => return Err(e),
        };
        let row_of = |s: &SampleError| rows.get(s.sample).copied().unwrap_or(0);
        if !rejecting {
            let first = &bad[0];
            return Err(Error::Input {
                source_name: input.display().to_string(),
                row: row_of(first),
                column: first.column.clone(),
                message: first.message.clone(),
            });
        }
        rejected.extend(bad.iter().map(|s| RejectedRow {
            row: row_of(s),
            column: s.column.clone(),
            value: String::new(),
            reason: s.message.clone(),
        }));
        let dropped: std::collections::HashSet<usize> = bad.iter().map(|s| s.sample).collect();
        let keep: Vec<usize> = (0..rows.len()).filter(|i| !dropped.contains(i)).collect();
        let indices = arrow_array::UInt64Array::from_iter_values(keep.iter().map(|&i| i as u64));
        carried = carried
            .iter()
            .map(|c| arrow_select::take::take(c.as_ref(), &indices, None))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::InputFile {
                source_name: input.display().to_string(),
                message: format!("dropping rejected rows from the carried columns: {e}"),
            })?;
        rows = keep.iter().map(|&i| rows[i]).collect();
        checked = checked.take(&keep);
        if rows.is_empty() {
            return Ok(Scored {
                rows: 0,
                carried,
                scores: Vec::new(),
                rejected,
                rows_read,
                total_rows,
            });
        }
    }
}
