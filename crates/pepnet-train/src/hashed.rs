//! Training hashed features: raw 64-bit ids, no vocabulary. Each hashed feature gets a GPU
//! working set of `capacity` rows (plus one for its default row); the full table lives on the
//! host. Before each step the host maps the batch's ids to working-set slots: a hit takes its
//! slot; a miss takes a free slot, or the least recently read one that this batch does not read,
//! whose row and AdaGrad sums are read back to the host first. A missed id's row (and sums)
//! come from the host, or are created: drawn from (seed, feature, id) by the spec's `init`, with
//! zero sums. The batch then trains as a vocabulary batch over slots.
//!
//! Every row's update depends only on its own uses (summed in sample order) and its own sums, so
//! training at any capacity gives the weights of training the same data with the ids mapped to
//! a vocabulary whose rows start as the created rows would, bit for bit (tested).
//!
//! Admission: an id gets a row in the batch where its occurrences reach `admit_after`; until
//! then it reads the default row, which no step changes. Expiry: a row not read for more than
//! `expire_after` steps is dropped when its id comes back (which then starts over, as new) or
//! when the model is exported.

use std::collections::HashMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use pepnet_core::batch::{Batch, Column};
use pepnet_core::error::{Error, Result};
use pepnet_core::model::Model;
use pepnet_core::spec::{EmbeddingInit, FeatureKind, ModelSpec};
use pepnet_core::weights::{embedding_values, names, HashedRows, Tensor};
use pepnet_core::GpuContext;

use std::sync::Arc;

use crate::checkpoint::{fnv1a, FNV_START};
use crate::learner::{ChangedRows, Learner};
use crate::{OptimizerState, Trainer, TrainerOptions};

/// The admission and expiry rules' state, beside a checkpoint's optimizer state: per hashed
/// feature, the ids waiting for admission with their occurrences so far
/// (`<f>.waiting.ids` / `<f>.waiting.counts`) and each held row's last read step
/// (`<f>.last_read.ids` / `<f>.last_read.steps`), U64, sorted by id.
pub const RULES_FILE: &str = "hashed_rules.safetensors";

/// How hashed features are trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashedOptions {
    /// GPU rows per hashed feature; a batch may read at most this many distinct ids of one.
    pub capacity: usize,
    /// An id gets a row in the batch where its occurrences reach this (1: on first sight).
    pub admit_after: u32,
    /// A row not read for more than this many steps is dropped.
    pub expire_after: Option<u64>,
    /// Seeds the created rows.
    pub seed: u64,
    /// Vocabulary tables train through working sets too: each whole table stays on the host,
    /// so a table may be larger than one GPU binding holds (or than the GPU), and only the rows
    /// a batch reads are on the GPU. Admission and expiry do not apply to them.
    pub vocab_tables: bool,
}

/// What the working sets did, summed over hashed features.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HashedStats {
    /// Rows created (first admission, or the return of an expired id).
    pub created: u64,
    /// Rows dropped for not being read for `expire_after` steps.
    pub expired: u64,
    /// Rows moved from the GPU to the host to make room.
    pub evicted: u64,
    /// Rows moved from the host to the GPU.
    pub loaded: u64,
    /// Id occurrences that read the default row (not admitted yet).
    pub not_admitted: u64,
    /// Host time mapping ids to slots and moving rows (readbacks of evicted rows included).
    pub mapping_seconds: f64,
}

/// Feature `feature`'s fresh row for `id`: d values drawn by `scheme` from a stream seeded by
/// (seed, feature name, id), so the same on every machine and in every run.
pub fn fresh_row(scheme: EmbeddingInit, seed: u64, feature: &str, id: u64, d: usize) -> Vec<f32> {
    let h = fnv1a(FNV_START, feature.bytes());
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ h);
    rng.set_stream(id);
    embedding_values(scheme, d, &mut rng)
}

/// A row held on the host, with its AdaGrad sums.
struct HostRow {
    row: Vec<f32>,
    sums: Vec<f32>,
}

/// One hashed feature's working set and host table.
struct Table {
    feature: usize,
    name: String,
    /// Global row of slot 0 in the trainer's page; slot `capacity` is the default row.
    base: u32,
    capacity: u32,
    default: Vec<f32>,
    slot_of: HashMap<u64, u32>,
    id_in: Vec<Option<u64>>,
    /// Per slot, the last step that read it.
    read_at: Vec<u64>,
    /// Free slots, lowest on top.
    free: Vec<u32>,
    host: HashMap<u64, HostRow>,
    /// Per id with a row, the last step that read it.
    last_read: HashMap<u64, u64>,
    /// Ids without a row yet: their occurrences so far.
    sightings: HashMap<u64, u32>,
    /// A vocabulary feature's table (its rows: every id below this), trained through the
    /// working set; `None` for a hashed feature.
    vocab: Option<usize>,
    /// Ids whose rows were dropped (expired) since [`HashedTrainer::changed_rows`] last
    /// took them.
    dropped: Vec<u64>,
}

/// A trainer for a spec with hashed features (see the module's notes).
pub struct HashedTrainer {
    trainer: Trainer,
    /// The model as the caller gave it (hashed features), for export.
    model: Model,
    tables: Vec<Table>,
    options: HashedOptions,
    stats: HashedStats,
}

impl HashedTrainer {
    /// Builds the working sets and a trainer over slots. `model`'s stored rows of hashed
    /// features start on the host, with zero sums.
    ///
    /// With `state` (written by [`HashedTrainer::export`] beside `model`), training goes on
    /// from its step with its moments and every row's sums: a run resumed so takes the steps
    /// the uninterrupted run would, bit for bit, when admission is on first sight and rows do
    /// not expire (the sightings and read steps those rules keep are not saved yet).
    pub fn new(
        ctx: std::sync::Arc<GpuContext>,
        model: &Model,
        state: Option<&OptimizerState>,
        options: &TrainerOptions,
        hashed: HashedOptions,
    ) -> Result<Self> {
        if hashed.capacity == 0 || hashed.capacity >= u32::MAX as usize / 2 {
            return Err(Error::Batch(format!(
                "the working set holds 1 to 2^31 rows per hashed feature, found {}",
                hashed.capacity
            )));
        }
        if hashed.admit_after == 0 {
            return Err(Error::Batch(
                "admission after 0 occurrences: the least is 1 (a row on first sight)".into(),
            ));
        }
        let spec = &model.spec;
        let d = spec.d();
        let cap = hashed.capacity;
        if let Some(state) = state {
            state.check(spec)?;
        }
        let mut working_state = state.cloned();
        let mut working = model.clone();
        let mut tables = Vec::new();
        for (f, feature) in spec.features.iter().enumerate() {
            let vocab = match (feature.hashed, feature.kind, feature.vocab) {
                (true, _, _) => None,
                (false, FeatureKind::Dense, _) | (false, _, None) => continue,
                (false, _, Some(_)) if !hashed.vocab_tables => continue,
                (false, _, Some(v)) => Some(v),
            };
            // A vocabulary table seen as stored rows: ids 0..V in order, no default row.
            let as_rows = vocab.map(|v| HashedRows {
                d,
                ids: (0..v as u64).collect(),
                rows: model.weights.get(&names::table(&feature.name)).data.clone(),
                default: None,
            });
            let stored = match &as_rows {
                Some(rows) => Some(rows),
                None => model.weights.hashed(&feature.name),
            };
            let default = stored
                .and_then(|h| h.default.clone())
                .unwrap_or_else(|| vec![0.0; d]);
            let mut data = vec![0.0f32; (cap + 1) * d];
            data[cap * d..].copy_from_slice(&default);
            working.weights.take_hashed(&feature.name);
            working.weights.insert(
                names::table(&feature.name),
                Tensor {
                    shape: vec![cap + 1, d],
                    data,
                },
            );
            let wf = &mut working.spec.features[f];
            wf.hashed = false;
            wf.vocab = Some(cap + 1);
            let sums_name = format!("adagrad.{}", names::table(&feature.name));
            let saved = match working_state.as_mut() {
                Some(s) => {
                    let n = stored.map_or(0, |h| h.ids.len());
                    let sums = s.tensors.remove(&sums_name).map(|(_, v)| v);
                    if sums.as_ref().map_or(0, |v| v.len() / d) != n {
                        return Err(Error::Tensor {
                            file: crate::OPTIMIZER_FILE.into(),
                            tensor: sums_name,
                            message: format!(
                                "expected the sums of the model's {n} stored rows of '{}'",
                                feature.name
                            ),
                        });
                    }
                    // The working table's sums start at zero, as its rows do.
                    let zeros = vec![0.0; (cap + 1) * d];
                    s.tensors.insert(sums_name, (vec![cap + 1, d], zeros));
                    sums
                }
                None => None,
            };
            let host = stored
                .map(|h| {
                    h.ids
                        .iter()
                        .enumerate()
                        .map(|(i, &id)| {
                            let row = h.rows[i * d..(i + 1) * d].to_vec();
                            let sums = match &saved {
                                Some(v) => v[i * d..(i + 1) * d].to_vec(),
                                None => vec![0.0; d],
                            };
                            (id, HostRow { row, sums })
                        })
                        .collect()
                })
                .unwrap_or_default();
            tables.push(Table {
                feature: f,
                name: feature.name.clone(),
                base: 0,
                capacity: cap as u32,
                default,
                slot_of: HashMap::new(),
                id_in: vec![None; cap],
                read_at: vec![0; cap],
                free: (0..cap as u32).rev().collect(),
                host,
                last_read: HashMap::new(),
                sightings: HashMap::new(),
                dropped: Vec::new(),
                vocab,
            });
        }
        let trainer = Trainer::new(ctx, &working, working_state.as_ref(), options)?;
        for t in &mut tables {
            // A hashed feature no kernel reads (a prior without PPNet) is never gathered.
            t.base = trainer.table_base(t.feature).unwrap_or(u32::MAX);
        }
        Ok(Self {
            trainer,
            model: model.clone(),
            tables,
            options: hashed,
            stats: HashedStats::default(),
        })
    }

    /// The trainer over slots (its spec has a vocabulary of capacity + 1 per hashed feature).
    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }

    pub fn stats(&self) -> &HashedStats {
        &self.stats
    }

    pub fn steps_done(&self) -> u64 {
        self.trainer.steps_done()
    }

    /// Maps the batch's hashed ids to slots (moving rows as needed), then takes one step.
    pub fn step(&mut self, batch: &Batch, labels: &[f32]) -> Result<()> {
        batch.validate(&self.model.spec, "training batch", 1)?;
        let begun = std::time::Instant::now();
        let slots = self.place(batch)?;
        self.stats.mapping_seconds += begun.elapsed().as_secs_f64();
        self.trainer.step(&slots, labels)
    }

    /// `batch` with every hashed id replaced by its slot.
    fn place(&mut self, batch: &Batch) -> Result<Batch> {
        let step = self.trainer.steps_done();
        let d = self.model.spec.d();
        let mut out = batch.clone();
        for t in 0..self.tables.len() {
            let table = &mut self.tables[t];
            if table.base == u32::MAX {
                // No kernel reads this feature (a prior without PPNet): any slot will do, and
                // no row is made for it.
                match &mut out.columns[table.feature] {
                    Column::Sparse(v) => v.iter_mut().for_each(|id| *id = 0),
                    Column::MultiHot { ids, .. } => ids.iter_mut().for_each(|id| *id = 0),
                    Column::Dense(_) => {}
                }
                continue;
            }
            let ids: &[u64] = match &batch.columns[table.feature] {
                Column::Sparse(v) => v,
                Column::MultiHot { ids, .. } => ids,
                Column::Dense(_) => unreachable!("validated: hashed features have ids"),
            };
            // Distinct ids in order of first occurrence, with their counts.
            let mut count: HashMap<u64, u32> = HashMap::new();
            let mut order = Vec::new();
            for &id in ids {
                let c = count.entry(id).or_insert(0);
                if *c == 0 {
                    order.push(id);
                }
                *c += 1;
            }
            let default_slot = table.capacity;
            let mut mapping: HashMap<u64, u32> = HashMap::with_capacity(order.len());
            let mut needed: Vec<(u64, bool)> = Vec::new();
            for &id in &order {
                let expiry = self.options.expire_after.filter(|_| table.vocab.is_none());
                if let (Some(limit), Some(&last)) = (expiry, table.last_read.get(&id)) {
                    if step - last > limit {
                        table.drop_row(id);
                        self.stats.expired += 1;
                    }
                }
                let has_row = table.slot_of.contains_key(&id) || table.host.contains_key(&id);
                let mut created = false;
                if !has_row {
                    let seen = table.sightings.entry(id).or_insert(0);
                    *seen = seen.saturating_add(count[&id]);
                    if *seen < self.options.admit_after {
                        mapping.insert(id, default_slot);
                        self.stats.not_admitted += count[&id] as u64;
                        continue;
                    }
                    table.sightings.remove(&id);
                    created = true;
                }
                table.last_read.insert(id, step);
                match table.slot_of.get(&id) {
                    Some(&slot) => {
                        table.read_at[slot as usize] = step;
                        mapping.insert(id, slot);
                    }
                    None => needed.push((id, created)),
                }
            }
            // Room: the least recently read slots this batch does not read.
            let short = needed.len().saturating_sub(table.free.len());
            if short > 0 {
                let mut candidates: Vec<(u64, u32)> = (0..table.capacity)
                    .filter(|&s| {
                        table.id_in[s as usize].is_some() && table.read_at[s as usize] < step
                    })
                    .map(|s| (table.read_at[s as usize], s))
                    .collect();
                if candidates.len() < short {
                    return Err(Error::Batch(format!(
                        "hashed feature '{}': a batch reads {} distinct ids with rows, more than \
                         the working set's {} rows; raise the working set (--working-set)",
                        table.name,
                        mapping.values().filter(|&&s| s != default_slot).count() + needed.len(),
                        table.capacity
                    )));
                }
                candidates.select_nth_unstable(short - 1);
                let mut victims: Vec<u32> = candidates[..short].iter().map(|&(_, s)| s).collect();
                victims.sort_unstable();
                let rows: Vec<u32> = victims.iter().map(|&s| table.base + s).collect();
                let (values, sums) = self.trainer.read_rows(&rows)?;
                for (k, &slot) in victims.iter().enumerate() {
                    let id = table.id_in[slot as usize]
                        .take()
                        .expect("a victim holds an id");
                    table.slot_of.remove(&id);
                    let row = values[k * d..(k + 1) * d].to_vec();
                    let s = sums[k * d..(k + 1) * d].to_vec();
                    table.host.insert(id, HostRow { row, sums: s });
                    table.free.push(slot);
                    self.stats.evicted += 1;
                }
                table.free.sort_unstable_by(|a, b| b.cmp(a));
            }
            let scheme = self.model.spec.init.unwrap_or_default().embedding;
            let mut rows = Vec::with_capacity(needed.len());
            let (mut values, mut sums) = (Vec::new(), Vec::new());
            for (id, created) in needed {
                let slot = table.free.pop().expect("room was made");
                let held = table.host.remove(&id);
                let (row, s) = match (created, held) {
                    (false, Some(h)) => {
                        self.stats.loaded += 1;
                        (h.row, h.sums)
                    }
                    _ => {
                        self.stats.created += 1;
                        let row = fresh_row(scheme, self.options.seed, &table.name, id, d);
                        (row, vec![0.0; d])
                    }
                };
                values.extend_from_slice(&row);
                sums.extend_from_slice(&s);
                rows.push(table.base + slot);
                table.slot_of.insert(id, slot);
                table.id_in[slot as usize] = Some(id);
                table.read_at[slot as usize] = step;
                mapping.insert(id, slot);
            }
            self.trainer.write_rows(&rows, &values, &sums);
            if self.options.admit_after > 1 {
                // The default row reads as it was: undo the last step's update of it.
                let zeros = vec![0.0; d];
                self.trainer
                    .write_rows(&[table.base + default_slot], &table.default, &zeros);
            }
            let translate = |ids: &mut Vec<u64>| {
                for id in ids.iter_mut() {
                    *id = mapping[id] as u64;
                }
            };
            match &mut out.columns[table.feature] {
                Column::Sparse(v) => translate(v),
                Column::MultiHot { ids, .. } => translate(ids),
                Column::Dense(_) => {}
            }
        }
        Ok(out)
    }

    /// The model as trained so far, in the caller's form: each hashed feature's rows (working
    /// set and host, rows past their expiry dropped) as stored ids and rows, sorted by id.
    pub fn model(&mut self) -> Result<Model> {
        self.export().map(|(model, _)| model)
    }

    /// The model (as [`HashedTrainer::model`]) and its optimizer state: Adam's moments, the
    /// vocabulary tables' sums, and each hashed feature's rows' sums as `adagrad.emb.<f>`,
    /// `[rows, d]` in the order of the model's stored ids.
    pub fn export(&mut self) -> Result<(Model, OptimizerState)> {
        let trained = self.trainer.model()?;
        let mut state = self.trainer.optimizer_state()?;
        let d = self.model.spec.d();
        let step = self.trainer.steps_done();
        let mut model = self.model.clone();
        for (name, tensor) in trained.weights.iter() {
            if let Some(t) = model.weights.get_mut(name) {
                t.data.clone_from(&tensor.data);
            }
        }
        for table in &mut self.tables {
            if let Some(limit) = self.options.expire_after.filter(|_| table.vocab.is_none()) {
                let stale: Vec<u64> = table
                    .last_read
                    .iter()
                    .filter(|&(_, &last)| step - last > limit)
                    .map(|(&id, _)| id)
                    .collect();
                for id in stale {
                    table.drop_row(id);
                    self.stats.expired += 1;
                }
            }
            let name = names::table(&table.name);
            let slots = &trained.weights.get(&name).data;
            let sums_name = format!("adagrad.{name}");
            let slot_sums = state
                .tensors
                .remove(&sums_name)
                .map(|(_, v)| v)
                .unwrap_or_default();
            let at = |s: u32| s as usize * d..(s as usize + 1) * d;
            let mut rows: Vec<(u64, &[f32], &[f32])> = table
                .slot_of
                .iter()
                .map(|(&id, &s)| (id, &slots[at(s)], &slot_sums[at(s)]))
                .chain(
                    table
                        .host
                        .iter()
                        .map(|(&id, h)| (id, h.row.as_slice(), h.sums.as_slice())),
                )
                .collect();
            rows.sort_unstable_by_key(|&(id, _, _)| id);
            let sums: Vec<f32> = rows.iter().flat_map(|r| r.2.iter().copied()).collect();
            state.tensors.insert(sums_name, (vec![rows.len(), d], sums));
            if table.vocab.is_some() {
                // Every id of the vocabulary has its row, in id order: the table again.
                let values: Vec<f32> = rows.iter().flat_map(|r| r.1.iter().copied()).collect();
                model
                    .weights
                    .get_mut(&name)
                    .expect("the vocabulary table")
                    .data = values;
                continue;
            }
            let stored = HashedRows {
                d,
                ids: rows.iter().map(|r| r.0).collect(),
                rows: rows.iter().flat_map(|r| r.1.iter().copied()).collect(),
                default: model
                    .weights
                    .hashed(&table.name)
                    .and_then(|h| h.default.clone()),
            };
            model.weights.set_hashed(table.name.clone(), stored);
        }
        Ok((model, state))
    }

    /// The admission and expiry rules' state as the bytes of [`RULES_FILE`], or `None` when
    /// neither rule is on (then there is none).
    pub fn rules_state(&self) -> Option<Vec<u8>> {
        if self.options.admit_after == 1 && self.options.expire_after.is_none() {
            return None;
        }
        let mut tensors: Vec<(String, Vec<u64>)> = Vec::new();
        for table in &self.tables {
            let mut waiting: Vec<(u64, u64)> = table
                .sightings
                .iter()
                .map(|(&id, &c)| (id, c as u64))
                .collect();
            waiting.sort_unstable();
            let mut read: Vec<(u64, u64)> = table.last_read.iter().map(|(&i, &s)| (i, s)).collect();
            read.sort_unstable();
            let f = &table.name;
            tensors.push((
                format!("{f}.waiting.ids"),
                waiting.iter().map(|p| p.0).collect(),
            ));
            tensors.push((
                format!("{f}.waiting.counts"),
                waiting.iter().map(|p| p.1).collect(),
            ));
            tensors.push((
                format!("{f}.last_read.ids"),
                read.iter().map(|p| p.0).collect(),
            ));
            tensors.push((
                format!("{f}.last_read.steps"),
                read.iter().map(|p| p.1).collect(),
            ));
        }
        let views = tensors.iter().map(|(name, data)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::U64,
                vec![data.len()],
                bytemuck::cast_slice(data),
            )
            .expect("shape and data agree");
            (name.as_str(), view)
        });
        Some(safetensors::serialize(views, None).expect("in-memory serialisation cannot fail"))
    }

    /// Restores the rules' state from [`RULES_FILE`]'s bytes (`file` names them in errors),
    /// before the first step; a resumed run then admits and expires as the uninterrupted one.
    pub fn restore_rules(&mut self, bytes: &[u8], file: &str) -> Result<()> {
        let st = pepnet_core::weights::parse_safetensors(bytes, file)?;
        let read = |name: String| -> Result<Vec<u64>> {
            let err = |message: String| Error::Tensor {
                file: file.into(),
                tensor: name.clone(),
                message,
            };
            let view = st.tensor(&name).map_err(|_| err("missing".into()))?;
            if view.dtype() != safetensors::Dtype::U64 || view.shape().len() != 1 {
                return Err(err(format!(
                    "expected U64 of shape [n], found {:?} of shape {:?}",
                    view.dtype(),
                    view.shape()
                )));
            }
            Ok(bytemuck::pod_collect_to_vec(view.data()))
        };
        let step = self.trainer.steps_done();
        for table in &mut self.tables {
            let f = table.name.clone();
            let (ids, counts) = (
                read(format!("{f}.waiting.ids"))?,
                read(format!("{f}.waiting.counts"))?,
            );
            let (held, steps) = (
                read(format!("{f}.last_read.ids"))?,
                read(format!("{f}.last_read.steps"))?,
            );
            if ids.len() != counts.len() || held.len() != steps.len() {
                return Err(Error::Tensor {
                    file: file.into(),
                    tensor: format!("{f}.*"),
                    message: "ids and their values differ in length".into(),
                });
            }
            if let Some(&s) = steps.iter().find(|&&s| s > step) {
                return Err(Error::Tensor {
                    file: file.into(),
                    tensor: format!("{f}.last_read.steps"),
                    message: format!("step {s} is after the state's step {step}"),
                });
            }
            table.sightings = ids
                .into_iter()
                .zip(counts)
                .map(|(id, c)| (id, c.min(u32::MAX as u64) as u32))
                .collect();
            table.last_read = held.into_iter().zip(steps).collect();
        }
        Ok(())
    }

    /// The spec the caller trains (with its hashed features).
    pub fn spec(&self) -> &ModelSpec {
        &self.model.spec
    }

    /// What changed since step `since` (a step count: rows read by the steps after it), per
    /// hashed feature: the rows those steps read, as they are now, and the ids whose rows were
    /// dropped since the last call (TorchRec's delta tracking: what a publisher sends to the
    /// row store instead of the whole table). Reads back only those rows.
    pub fn changed_rows(&mut self, since: u64) -> Result<Vec<ChangedRows>> {
        let d = self.model.spec.d();
        let mut out = Vec::new();
        for table in self.tables.iter_mut().filter(|t| t.vocab.is_none()) {
            let mut ids: Vec<u64> = table
                .last_read
                .iter()
                .filter(|&(_, &step)| step >= since)
                .map(|(&id, _)| id)
                .collect();
            ids.sort_unstable();
            let on_gpu: Vec<u32> = ids
                .iter()
                .filter_map(|id| table.slot_of.get(id).map(|&s| table.base + s))
                .collect();
            let (gpu_rows, _) = self.trainer.read_rows(&on_gpu)?;
            let mut rows = Vec::with_capacity(ids.len() * d);
            let mut next_gpu = 0;
            for id in &ids {
                match table.slot_of.contains_key(id) {
                    true => {
                        rows.extend_from_slice(&gpu_rows[next_gpu * d..(next_gpu + 1) * d]);
                        next_gpu += 1;
                    }
                    false => rows.extend_from_slice(&table.host[id].row),
                }
            }
            let mut dropped = std::mem::take(&mut table.dropped);
            dropped.sort_unstable();
            dropped.dedup();
            // An id dropped and then created again has a row: it is changed, not dropped.
            dropped.retain(|id| !table.last_read.contains_key(id));
            out.push(ChangedRows {
                feature: table.feature,
                ids,
                rows,
                dropped,
            });
        }
        Ok(out)
    }
}

impl Learner for HashedTrainer {
    fn step(&mut self, batch: &Batch, labels: &[f32]) -> Result<()> {
        HashedTrainer::step(self, batch, labels)
    }
    fn losses(&mut self) -> Result<Vec<f32>> {
        self.trainer.losses()
    }
    fn steps_done(&self) -> u64 {
        self.trainer.steps_done()
    }
    fn batch_size(&self) -> usize {
        self.trainer.options.batch_size
    }
    fn spec(&self) -> &ModelSpec {
        &self.model.spec
    }
    fn context(&self) -> &Arc<GpuContext> {
        self.trainer.context()
    }
    fn task_weights(&self) -> Vec<f64> {
        self.trainer.task_weights()
    }
    fn trained_model(&mut self) -> Result<Model> {
        self.model()
    }
    fn last_scores(&self) -> Result<Vec<f32>> {
        self.trainer.last_scores()
    }
    fn hashed_stats(&self) -> Option<HashedStats> {
        Some(self.stats.clone())
    }
    fn changed_rows(&mut self, since: u64) -> Result<Vec<ChangedRows>> {
        HashedTrainer::changed_rows(self, since)
    }
    fn resumable_state(&mut self) -> Result<Option<OptimizerState>> {
        self.export().map(|(_, state)| Some(state))
    }
    fn extra_files(&mut self) -> Result<Vec<(&'static str, Vec<u8>)>> {
        Ok(self
            .rules_state()
            .map(|b| (RULES_FILE, b))
            .into_iter()
            .collect())
    }
}

impl Table {
    /// Forgets `id`'s row, wherever it is; its slot becomes free.
    fn drop_row(&mut self, id: u64) {
        if let Some(slot) = self.slot_of.remove(&id) {
            self.id_in[slot as usize] = None;
            self.free.push(slot);
            self.free.sort_unstable_by(|a, b| b.cmp(a));
        }
        self.host.remove(&id);
        if self.last_read.remove(&id).is_some() {
            self.dropped.push(id);
        }
    }
}
