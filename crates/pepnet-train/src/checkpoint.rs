//! Periodic checkpoints of a training run. Every N steps or minutes the model, its optimizer
//! state and where the run stands (`progress.json`) are written as one directory `step-<S>`
//! under the checkpoint directory: staged under a hidden name, then renamed, so a checkpoint
//! is whole or absent. Only the last K are kept. A run resumed from any of them takes the same
//! batches in the same order as the uninterrupted run from there on (the shuffle of epoch e is
//! a function of the seed and e), so it ends with the same weights bit for bit.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use pepnet_core::error::{Error, Result};

use crate::learner::Learner;

/// The file in each checkpoint that says where its run stands.
pub const PROGRESS_FILE: &str = "progress.json";
/// Checkpoints are `step-<S>`, S zero-padded so that names sort as steps do.
const PREFIX: &str = "step-";
/// A checkpoint being written; left behind only by a run killed mid-write.
const STAGING_PREFIX: &str = ".staging-step-";

/// When and where checkpoints are written.
#[derive(Debug, Clone)]
pub struct CheckpointOptions {
    pub dir: PathBuf,
    /// After every this many steps.
    pub every_steps: Option<u64>,
    /// After the first step that ends this long after the last checkpoint (or the start).
    pub every: Option<Duration>,
    /// How many to keep (the newest); at least 1.
    pub keep: usize,
}

/// Where a run stands, and what fixes its sequence of batches: resuming with other data, batch
/// size, seed or shuffle would not continue the same run, so [`Progress::check_resume`]
/// refuses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// Steps taken (the optimizer's count).
    pub step: u64,
    /// The run's length in epochs.
    pub epochs: usize,
    /// Samples in the training data.
    pub samples: u64,
    /// Identifies the training data (FNV-1a of an in-memory file's labels; of streamed files'
    /// names and row counts): a cheap check that it is the same.
    pub data: String,
    pub batch_size: usize,
    pub seed: u64,
    pub shuffle: bool,
}

impl Progress {
    /// Refuses to resume `self` (read from `file`) as `run`, naming the first field that
    /// differs.
    pub fn check_resume(&self, run: &Progress, file: &str) -> Result<()> {
        let fields = [
            ("samples", self.samples.to_string(), run.samples.to_string()),
            ("data", self.data.clone(), run.data.clone()),
            (
                "batch_size",
                self.batch_size.to_string(),
                run.batch_size.to_string(),
            ),
            ("seed", self.seed.to_string(), run.seed.to_string()),
            ("shuffle", self.shuffle.to_string(), run.shuffle.to_string()),
        ];
        for (key, was, now) in fields {
            if was != now {
                return Err(Error::Spec {
                    file: file.into(),
                    message: format!(
                        "key '{key}': the checkpoint's run had {was}, this run has {now}; \
                         resume with the same data, --batch-size, --seed and shuffle"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// FNV-1a's starting value.
pub(crate) const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a of `bytes`, going on from `h` (start from [`FNV_START`]): a cheap, stable hash of
/// names and data for fingerprints and seeds.
pub(crate) fn fnv1a(h: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes
        .into_iter()
        .fold(h, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// FNV-1a over `labels`' bytes, as hex.
pub fn labels_fingerprint(labels: &[f32]) -> String {
    let bytes = bytemuck::cast_slice::<f32, u8>(labels).iter().copied();
    format!("{:016x}", fnv1a(FNV_START, bytes))
}

/// Writes a run's checkpoints when they are due.
pub struct Checkpointer {
    options: CheckpointOptions,
    last: Instant,
}

impl Checkpointer {
    /// Makes the directory if needed and removes what a run killed mid-write left staged.
    pub fn new(options: CheckpointOptions) -> Result<Self> {
        let dir = &options.dir;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let path = entry.map_err(|e| Error::io(dir, e))?.path();
            let staged = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(STAGING_PREFIX));
            if staged {
                std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        Ok(Self {
            options: CheckpointOptions {
                keep: options.keep.max(1),
                ..options
            },
            last: Instant::now(),
        })
    }

    /// Whether the step just taken, the `step`-th, ends with a checkpoint.
    pub fn due(&self, step: u64) -> bool {
        let by_steps = self
            .options
            .every_steps
            .is_some_and(|n| step.is_multiple_of(n));
        let by_time = self.options.every.is_some_and(|t| self.last.elapsed() >= t);
        by_steps || by_time
    }

    /// Writes `trainer`'s model and optimizer state with `progress` as `step-<S>`, then
    /// removes all but the newest `keep`. Returns the checkpoint's path.
    pub fn write(&mut self, trainer: &mut dyn Learner, progress: &Progress) -> Result<PathBuf> {
        self.write_with(trainer, progress, &[])
    }

    /// As [`Checkpointer::write`], with more files of the caller's in the checkpoint (name,
    /// bytes): an online run's stream position, say.
    pub fn write_with(
        &mut self,
        trainer: &mut dyn Learner,
        progress: &Progress,
        more: &[(&str, Vec<u8>)],
    ) -> Result<PathBuf> {
        let dir = &self.options.dir;
        let name = format!("{PREFIX}{:012}", progress.step);
        let staged = dir.join(format!("{STAGING_PREFIX}{:012}", progress.step));
        let done = dir.join(&name);
        let _ = std::fs::remove_dir_all(&staged);
        let mut write = || -> Result<()> {
            let Some(state) = trainer.resumable_state()? else {
                return Err(Error::Batch(
                    "checkpoints of this trainer could not be resumed bit for bit (hashed \
                     features keep their rows' optimizer sums on the host): not written"
                        .into(),
                ));
            };
            std::fs::create_dir_all(&staged).map_err(|e| Error::io(&staged, e))?;
            trainer.trained_model()?.save(&staged)?;
            state.save(&staged)?;
            for (name, bytes) in trainer.extra_files()? {
                pepnet_core::atomic_file::write(&staged.join(name), &bytes)?;
            }
            for (name, bytes) in more {
                pepnet_core::atomic_file::write(&staged.join(name), bytes)?;
            }
            let json = serde_json::to_string_pretty(progress).expect("progress serialises");
            pepnet_core::atomic_file::write(&staged.join(PROGRESS_FILE), json.as_bytes())?;
            if done.exists() {
                std::fs::remove_dir_all(&done).map_err(|e| Error::io(&done, e))?;
            }
            std::fs::rename(&staged, &done).map_err(|e| Error::io(&done, e))
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_dir_all(&staged);
            return Err(e);
        }
        self.last = Instant::now();
        let all = list(dir)?;
        for (_, old) in &all[..all.len().saturating_sub(self.options.keep)] {
            std::fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
        }
        Ok(done)
    }
}

/// The checkpoints in `dir`, oldest first, by step.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let step = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|s| s.parse::<u64>().ok());
        if let Some(step) = step.filter(|_| path.join(PROGRESS_FILE).is_file()) {
            out.push((step, path));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest checkpoint in `dir`, if any.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>> {
    Ok(list(dir)?.pop().map(|(_, p)| p))
}

/// A checkpoint's `progress.json`.
pub fn read_progress(checkpoint: &Path) -> Result<Progress> {
    let path = checkpoint.join(PROGRESS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Spec {
        file: path.display().to_string(),
        message: format!("not a checkpoint's progress: {e}"),
    })
}
