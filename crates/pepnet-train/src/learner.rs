//! What the training loop drives: a trainer of vocabulary tables or of hashed features, seen
//! through one trait so that the loop, validation and checkpoints serve both.

use std::sync::Arc;

use pepnet_core::batch::Batch;
use pepnet_core::error::Result;
use pepnet_core::gpu::GpuContext;
use pepnet_core::model::Model;
use pepnet_core::spec::ModelSpec;

use crate::{OptimizerState, Trainer};

/// What [`crate::train`] drives: a [`Trainer`] (vocabulary tables) or a [`crate::HashedTrainer`]
/// (hashed features through a working set).
pub trait Learner {
    /// One step on a batch and its labels (`len × T`).
    fn step(&mut self, batch: &Batch, labels: &[f32]) -> Result<()>;
    /// The losses of the steps since the last call (waits for the GPU).
    fn losses(&mut self) -> Result<Vec<f32>>;
    fn steps_done(&self) -> u64;
    fn batch_size(&self) -> usize;
    /// The spec trained, as the caller gave it.
    fn spec(&self) -> &ModelSpec;
    fn context(&self) -> &Arc<GpuContext>;
    /// Per task, its loss weight.
    fn task_weights(&self) -> Vec<f64>;
    /// The model as trained so far, in the caller's form (waits for the GPU).
    fn trained_model(&mut self) -> Result<Model>;
    /// The optimizer state a resume continues bit for bit from, where the learner keeps one.
    fn resumable_state(&mut self) -> Result<Option<OptimizerState>>;
    /// The last step's probabilities, from the weights before its update (`rows × T`).
    fn last_scores(&self) -> Result<Vec<f32>>;
    /// Files a checkpoint holds beside the model and optimizer state (name, bytes): the hashed
    /// features' admission and expiry state.
    fn extra_files(&mut self) -> Result<Vec<(&'static str, Vec<u8>)>> {
        Ok(Vec::new())
    }
    /// What the hashed features' working sets did, for a learner that has them.
    fn hashed_stats(&self) -> Option<crate::HashedStats> {
        None
    }
    /// Per hashed feature, the rows the steps after step `since` changed and the rows dropped
    /// since the last call: what a publisher writes to a row store. None without hashed
    /// features.
    fn changed_rows(&mut self, since: u64) -> Result<Vec<ChangedRows>> {
        let _ = since;
        Ok(Vec::new())
    }
}

impl Learner for Trainer {
    fn step(&mut self, batch: &Batch, labels: &[f32]) -> Result<()> {
        Trainer::step(self, batch, labels)
    }
    fn losses(&mut self) -> Result<Vec<f32>> {
        Trainer::losses(self)
    }
    fn steps_done(&self) -> u64 {
        Trainer::steps_done(self)
    }
    fn batch_size(&self) -> usize {
        self.options.batch_size
    }
    fn spec(&self) -> &ModelSpec {
        Trainer::spec(self)
    }
    fn context(&self) -> &Arc<GpuContext> {
        Trainer::context(self)
    }
    fn task_weights(&self) -> Vec<f64> {
        Trainer::task_weights(self)
    }
    fn trained_model(&mut self) -> Result<Model> {
        self.model()
    }
    fn resumable_state(&mut self) -> Result<Option<OptimizerState>> {
        self.optimizer_state().map(Some)
    }
    fn last_scores(&self) -> Result<Vec<f32>> {
        Trainer::last_scores(self)
    }
}

/// One hashed feature's rows changed over some steps (see [`crate::HashedTrainer::changed_rows`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ChangedRows {
    /// The feature's index in the spec.
    pub feature: usize,
    /// Sorted ids, and their rows now (`ids.len() × d`).
    pub ids: Vec<u64>,
    pub rows: Vec<f32>,
    /// Ids whose rows were dropped (expired), sorted.
    pub dropped: Vec<u64>,
}
