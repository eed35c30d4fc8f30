//! The GPU embedding cache for hashed features: a fixed number of rows on the GPU (one page
//! of the gather's row space), an id→slot hash table beside them that the resolve kernel
//! probes, and the host state that decides what enters and what leaves.
//!
//! A batch goes: the resolve kernel looks up every id on the GPU and reports misses → the host
//! fetches the missed rows from the [`EmbeddingStore`] in one call, evicts the lowest-priority
//! rows the batch does not use ([`evict`]), and stages the new rows and changed table entries →
//! one scatter dispatch each applies them, and the resolve runs again, now all hits, in the
//! same submission as the forward pass. Hits never touch the host's table; the host only
//! updates per-slot counters indexed by the slot the GPU returned.
//!
//! Everything here runs under the engine's cache lock, and every change reaches the GPU
//! through the queue, so a batch submitted before a change never sees it and one submitted
//! after always does.

pub mod evict;
pub mod frequency;
pub use crate::gpu::resolve::table;
pub mod updates;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::gpu::gather::{row_to_words, row_words};
use crate::gpu::linear::Precision;
use crate::gpu::resolve::{MISS, UNKNOWN};
use crate::gpu::scatter::ScatterParams;
use crate::gpu::GpuContext;
use crate::spec::ModelSpec;
pub use crate::store::UpdatePolicy;
use crate::store::{EmbeddingStore, Fetched, Key};
pub use evict::EvictionPolicy;
use evict::Evictor;
use frequency::Frequency;
use table::HostTable;
use updates::UpdateTracker;

/// How many rows the cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheCapacity {
    /// This many rows, whatever their size.
    Rows(u64),
    /// Rows, as the engine stores them (d f32s, or at f16 d f16s padded to a whole word), that
    /// fit in this many bytes of GPU memory with their index (the id→slot hash table, with
    /// room for as many ids cached as unknown: [`CacheCapacity::index_bytes`]).
    Bytes(u64),
}

impl CacheCapacity {
    /// Rows of d f32s.
    pub fn rows(&self, d: usize) -> u64 {
        self.rows_of(4 * d as u64)
    }

    /// Rows of `row_bytes` bytes each: the most whose rows and index fit, for a capacity in
    /// bytes.
    pub fn rows_of(&self, row_bytes: u64) -> u64 {
        match *self {
            CacheCapacity::Rows(n) => n,
            CacheCapacity::Bytes(b) => {
                let fits = |n: u64| n * row_bytes.max(1) + Self::index_bytes(n) <= b;
                // Bytes used grow with the rows: the largest that fits, by bisection.
                let (mut lo, mut hi) = (0, b / row_bytes.max(1) + 1);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if fits(mid) {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                lo
            }
        }
    }

    /// The GPU bytes of the index of a cache of `rows` rows: its hash table, sized for the
    /// rows' entries and as many of ids cached as unknown.
    pub fn index_bytes(rows: u64) -> u64 {
        (table::HostTable::size_for(2 * rows as usize) * std::mem::size_of::<table::Entry>()) as u64
    }
}

/// Where hashed features' rows live beyond the cache.
#[derive(Debug, Clone, Default)]
pub enum StoreSource {
    /// The model directory's rows, in host memory ([`crate::store::MemoryStore`]).
    #[default]
    Model,
    /// A store the caller's opener opens for each engine built with these options: one that
    /// several engines and processes share (a Redis Cluster namespace, say).
    Open(std::sync::Arc<dyn crate::store::OpenStore>),
}

/// How an engine's embedding cache is sized, filled and kept.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Rows the cache holds on the GPU.
    pub capacity: CacheCapacity,
    /// Where rows come from on a miss and where live updates go.
    pub store: StoreSource,
    /// Hot ids, hottest first, whose rows fill the cache when the engine starts (those beyond
    /// the cache's rows are skipped).
    pub warm_up: Vec<Key>,
    /// Which cached row a full cache evicts.
    pub policy: EvictionPolicy,
    /// Cap on live writes per id and expiry of ids not written.
    pub updates: UpdatePolicy,
    /// The update clock's reading when the engine starts (seconds; rows loaded from the store
    /// count as written then). `None`: the system clock's Unix time.
    pub now: Option<u64>,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            capacity: CacheCapacity::Rows(1 << 16),
            store: StoreSource::Model,
            warm_up: Vec::new(),
            policy: EvictionPolicy::TinyLfu,
            updates: UpdatePolicy::default(),
            now: None,
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Counters of one hashed feature (or of all of them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FeatureStats {
    /// Name of the feature (`total` for the sum over all hashed features).
    pub feature: String,
    /// Ids found in the cache (each occurrence in a batch counts): cached rows, and ids cached
    /// as unknown to the store (which are not asked for again).
    pub hits: u64,
    /// Ids not in the cache (each occurrence), whether the store knew them or not.
    pub misses: u64,
    /// Rows fetched from the store into the cache.
    pub insertions: u64,
    /// Rows evicted to make room.
    pub evictions: u64,
    /// Id occurrences the store does not hold (it said so now, or earlier and the cache kept
    /// that): they read the feature's default row.
    pub unknown: u64,
    /// Live row writes applied, and refused by the update cap.
    pub updates: u64,
    /// Live row writes refused by the update cap.
    pub capped_updates: u64,
    /// Ids dropped because they were not written for the expiry time.
    pub expired: u64,
    /// Id occurrences whose store node did not answer, scored with the default row in
    /// degraded mode.
    pub unavailable: u64,
    /// Cached rows dropped because the store was loaded again (a new generation).
    pub reloaded: u64,
}

impl FeatureStats {
    fn add(&mut self, o: &FeatureStats) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.insertions += o.insertions;
        self.evictions += o.evictions;
        self.unknown += o.unknown;
        self.updates += o.updates;
        self.capped_updates += o.capped_updates;
        self.expired += o.expired;
        self.unavailable += o.unavailable;
        self.reloaded += o.reloaded;
    }

    /// hits / (hits + misses), 0 before any lookup.
    pub fn hit_rate(&self) -> f64 {
        let n = self.hits + self.misses;
        if n == 0 {
            0.0
        } else {
            self.hits as f64 / n as f64
        }
    }
}

/// A snapshot of the cache: its size and fill, and the counters of its hashed features.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheStats {
    /// Eviction policy, as [`EvictionPolicy::name`] spells it.
    pub policy: String,
    /// Rows the cache holds when full.
    pub capacity_rows: u64,
    /// Rows cached now (slots in use).
    pub cached_rows: u64,
    /// Rows the embedding store holds.
    pub store_rows: u64,
    /// Counters per hashed feature, in spec order.
    pub features: Vec<FeatureStats>,
    /// Counters summed over the hashed features.
    pub total: FeatureStats,
    /// Times the store said it was loaded again and the cache dropped everything it held.
    pub store_reloads: u64,
    /// The store's nodes and their health (a networked store's).
    pub store_nodes: Vec<crate::store::NodeHealth>,
}

/// What a live update did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateOutcome {
    /// Rows written (to the store, and to the cache where cached).
    pub applied: usize,
    /// Refused: the id reached its cap of writes in the current window.
    pub capped: usize,
}

/// The cache's GPU buffers that the engine binds: the hash table, the rows, and per feature
/// the default row unknown ids read.
pub struct CacheBuffers {
    /// The id→slot hash table, [`table::Entry`] records that the resolve kernel probes.
    pub table: wgpu::Buffer,
    /// The cached rows, one per slot, in the engine's row format.
    pub rows: wgpu::Buffer,
    /// One default row per feature, read by ids the store does not hold.
    pub defaults: wgpu::Buffer,
}

/// A staging area for one kind of scatter (table entries or rows).
struct Upload {
    width: u32,
    capacity: usize,
    /// `None` in a host-only simulation.
    gpu: Option<UploadBuffers>,
    pending_index: Vec<u32>,
    pending: Vec<u32>,
    /// Where each pending destination's record is: a second write to the same place in one
    /// dispatch replaces the first (two records racing word by word could mix them).
    positions: HashMap<u32, usize>,
}

struct UploadBuffers {
    index: wgpu::Buffer,
    src: wgpu::Buffer,
    params: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
}

impl Upload {
    fn host_only(width: u32, capacity: usize) -> Self {
        Self {
            width,
            capacity,
            gpu: None,
            pending_index: Vec::new(),
            pending: Vec::new(),
            positions: HashMap::new(),
        }
    }

    fn new(ctx: &GpuContext, label: &str, width: u32, capacity: usize, dst: &wgpu::Buffer) -> Self {
        let index = ctx.zeroed_storage(label, capacity as u64 * 4);
        let src = ctx.zeroed_storage(label, capacity as u64 * width as u64 * 4);
        let params = ctx.uniform_buffer(
            label,
            &ScatterParams {
                count: 0,
                width,
                _pad: [0; 2],
            },
        );
        let bind_group = ctx
            .scatter()
            .bind_group(&ctx.device, &params, &index, &src, dst);
        Self {
            gpu: Some(UploadBuffers {
                index,
                src,
                params,
                bind_group,
            }),
            ..Self::host_only(width, capacity)
        }
    }

    fn push(&mut self, at: u32, words: &[u32]) {
        if self.gpu.is_none() {
            return; // a simulation: nothing to upload to
        }
        let w = self.width as usize;
        match self.positions.get(&at) {
            Some(&r) => self.pending[r * w..(r + 1) * w].copy_from_slice(words),
            None => {
                self.positions.insert(at, self.pending_index.len());
                self.pending_index.push(at);
                self.pending.extend_from_slice(words);
            }
        }
    }

    fn is_full(&self) -> bool {
        self.pending_index.len() >= self.capacity
    }

    /// Writes the staged records and records their scatter; they reach the GPU with the
    /// encoder's submission.
    fn record(&mut self, ctx: &GpuContext, encoder: &mut wgpu::CommandEncoder) {
        let Some(gpu) = &self.gpu else {
            self.pending_index.clear();
            self.pending.clear();
            self.positions.clear();
            return;
        };
        if self.pending_index.is_empty() {
            return;
        }
        let params = ScatterParams {
            count: self.pending_index.len() as u32,
            width: self.width,
            _pad: [0; 2],
        };
        ctx.queue
            .write_buffer(&gpu.index, 0, bytemuck::cast_slice(&self.pending_index));
        ctx.queue
            .write_buffer(&gpu.src, 0, bytemuck::cast_slice(&self.pending));
        ctx.queue
            .write_buffer(&gpu.params, 0, bytemuck::bytes_of(&params));
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("cache scatter"),
            timestamp_writes: None,
        });
        ctx.scatter().dispatch(&mut pass, &gpu.bind_group, &params);
        drop(pass);
        self.pending_index.clear();
        self.pending.clear();
        self.positions.clear();
    }
}

/// A chunk needs more distinct rows at once than the cache has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyRows {
    /// Distinct cached rows the chunk needs at once.
    pub needed: u64,
}

/// Why a chunk of a batch could not be admitted (nothing changed).
#[derive(Debug)]
pub enum Refused {
    /// Too many rows: a smaller chunk may fit.
    TooManyRows(TooManyRows),
    /// The store did not answer (and was not asked to degrade).
    Store(Error),
}

/// Whether the store found a row.
fn is_row(f: &Fetched) -> bool {
    matches!(f, Fetched::Row | Fetched::Expires(_))
}

/// A frequency policy's priority for `key` in `batch`: its count, ties to the more recent (the
/// batch number is far below one count: 2⁻³² per batch).
fn frequency_priority(frequency: &Frequency, key: Key, batch: u64) -> f64 {
    frequency.estimate(key) as f64 + batch as f64 * (1.0 / 4_294_967_296.0)
}

/// The host side of the cache, behind the engine's lock.
pub struct CacheState {
    d: usize,
    /// How rows are stored on the GPU (f32, or f16 for the f16 precision).
    precision: Precision,
    capacity: u64,
    policy: EvictionPolicy,
    names: Vec<String>,
    store: Box<dyn EmbeddingStore>,
    table: HostTable,
    /// The key each slot holds.
    slots: Vec<Option<Key>>,
    free: Vec<u32>,
    evictor: Evictor,
    /// Whether the store keeps the update policy (a shared store), so the tracker is idle.
    shared_policy: bool,
    /// (Unix second, slot, the slot's generation then): when cached rows of a store that
    /// expires rows must leave, soonest first.
    deadlines: BinaryHeap<Reverse<(u64, u32, u32)>>,
    /// Bumped when a row enters a slot, so a deadline of the slot's previous row is ignored.
    generation: Vec<u32>,
    /// Every id's access history, for the frequency policies.
    frequency: Option<Frequency>,
    /// Ids cached as unknown to the store (table entries with slot UNKNOWN, no row), oldest
    /// first; at most as many as the cache has rows.
    unknown: std::collections::VecDeque<Key>,
    tracker: UpdateTracker,
    /// Per slot, the last batch that used it, and its uses in that batch.
    used_in: Vec<u64>,
    uses: Vec<u64>,
    batch: u64,
    stats: Vec<FeatureStats>,
    /// Times the store was loaded again ([`EmbeddingStore::take_reloaded`]).
    reloads: u64,
    /// `None` in a host-only simulation.
    pub buffers: Option<CacheBuffers>,
    entries: Upload,
    rows: Upload,
}

impl CacheState {
    /// `max_keys` is the most ids one chunk can hold (rows per pass × hashed id slots);
    /// `default_rows` are the global rows of each feature's default row.
    pub fn new(
        ctx: &GpuContext,
        spec: &ModelSpec,
        options: &CacheOptions,
        store: Box<dyn EmbeddingStore>,
        default_rows: &[u32],
        max_keys: usize,
        precision: Precision,
    ) -> Result<Self> {
        let mut state = Self::host_only_at(spec, options, store, precision)?;
        let capacity = state.capacity;
        let words = row_words(state.d, precision);
        let table_bytes = std::mem::size_of_val(state.table.entries()) as u64;
        if table_bytes > ctx.max_binding_bytes() {
            return Err(Error::Cache(format!(
                "a cache of {capacity} rows needs a {table_bytes}-byte index, more than one storage \
                 binding ({} bytes) on this device; lower the capacity",
                ctx.max_binding_bytes()
            )));
        }
        let buffers = CacheBuffers {
            table: ctx.storage_buffer("cache table", state.table.entries()),
            rows: ctx.zeroed_storage("cache rows", capacity * words as u64 * 4),
            defaults: ctx.storage_buffer("cache default rows", default_rows),
        };
        let max_rows = (capacity as usize).min(max_keys.max(1));
        state.entries = Upload::new(ctx, "cache entry upload", 4, 2 * max_rows, &buffers.table);
        state.rows = Upload::new(ctx, "cache row upload", words, max_rows, &buffers.rows);
        state.table.take_changes();
        state.buffers = Some(buffers);
        Ok(state)
    }

    /// The cache's host state alone, with no GPU: what the cache benchmark replays id streams
    /// through to measure hit rates (lookups by [`CacheState::lookup_on_host`]).
    pub fn host_only(
        spec: &ModelSpec,
        options: &CacheOptions,
        store: Box<dyn EmbeddingStore>,
    ) -> Result<Self> {
        Self::host_only_at(spec, options, store, Precision::F32)
    }

    fn host_only_at(
        spec: &ModelSpec,
        options: &CacheOptions,
        store: Box<dyn EmbeddingStore>,
        precision: Precision,
    ) -> Result<Self> {
        let d = spec.d();
        if store.dim() != d {
            return Err(Error::Cache(format!(
                "the embedding store holds rows of {} floats, the model's d is {d}",
                store.dim()
            )));
        }
        let capacity = options.capacity.rows_of(4 * row_words(d, precision) as u64);
        if capacity == 0 {
            return Err(Error::Cache(
                "the cache capacity is 0 rows; it must hold at least one row".into(),
            ));
        }
        let now = options.now.unwrap_or_else(unix_now);
        let shared = store.keeps_update_policy();
        let tracker = match (store.keys(), shared) {
            (_, Some(kept)) if options.updates != UpdatePolicy::default() => {
                return Err(Error::Cache(format!(
                    "the embedding store keeps its own update policy ({kept:?}), set when it was \
                     loaded, so that it holds across processes; leave --max-updates, \
                     --update-window-secs and --expire-after-secs unset"
                )))
            }
            (Some(keys), None) => UpdateTracker::new(options.updates, keys, now),
            _ => UpdateTracker::new(UpdatePolicy::default(), [], now),
        };
        let slots = capacity as usize;
        Ok(Self {
            d,
            precision,
            capacity,
            policy: options.policy,
            names: spec.features.iter().map(|f| f.name.clone()).collect(),
            store,
            // Room for the rows' entries and as many of unknown ids (`index_bytes`).
            table: HostTable::new(2 * slots),
            slots: vec![None; slots],
            free: (0..slots as u32).rev().collect(),
            evictor: Evictor::new(options.policy, slots),
            shared_policy: shared.is_some(),
            deadlines: BinaryHeap::new(),
            generation: vec![0; slots],
            frequency: options.policy.frequency(slots),
            unknown: std::collections::VecDeque::new(),
            tracker,
            used_in: vec![0; slots],
            uses: vec![0; slots],
            batch: 0,
            stats: spec
                .features
                .iter()
                .map(|f| FeatureStats {
                    feature: f.name.clone(),
                    ..Default::default()
                })
                .collect(),
            reloads: 0,
            buffers: None,
            entries: Upload::host_only(4, usize::MAX),
            rows: Upload::host_only(row_words(d, precision), usize::MAX),
        })
    }

    /// What the resolve kernel computes, on the host: each key's slot or [`MISS`]. For
    /// simulations; scoring never hashes on the host.
    pub fn lookup_on_host(&self, keys: &[Key]) -> Vec<u32> {
        keys.iter()
            .map(|&(f, id)| self.table.get(table::tag(f as usize), id).unwrap_or(MISS))
            .collect()
    }

    /// Rows the cache holds when full.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The hash table's entries − 1 (a power of two less one), for the resolve kernel.
    pub fn mask(&self) -> u32 {
        self.table.mask()
    }

    /// Takes in a chunk's lookups: `keys[i]` resolved on the GPU to slot `resolved[i]` or
    /// [`MISS`]. Counts the hits, fetches the misses from the store and stages their rows and
    /// table entries (evicting as needed); returns whether anything was staged. Fails, changing
    /// nothing, when the chunk needs more distinct rows than the cache has.
    pub fn admit(&mut self, keys: &[Key], resolved: &[u32]) -> std::result::Result<bool, Refused> {
        self.batch += 1;
        let batch = self.batch;
        let mut touched = Vec::new();
        let mut missed: Vec<Key> = Vec::new();
        let mut miss_uses: HashMap<Key, (usize, u64)> = HashMap::new();
        let mut known_unknown = Vec::new();
        for (&key, &slot) in keys.iter().zip(resolved) {
            if slot == UNKNOWN {
                known_unknown.push(key);
            } else if slot == MISS {
                let n = missed.len();
                miss_uses.entry(key).or_insert((n, 0)).1 += 1;
                if miss_uses[&key].0 == n {
                    missed.push(key);
                }
            } else {
                let s = slot as usize;
                if self.used_in[s] != batch {
                    self.used_in[s] = batch;
                    self.uses[s] = 0;
                    touched.push(slot);
                }
                self.uses[s] += 1;
            }
        }
        let mut fetched = vec![0.0f32; missed.len() * self.d];
        let mut known = vec![Fetched::Unknown; missed.len()];
        let forget_marks = |used_in: &mut [u64]| {
            // Forget this batch's marks: a retry is a new batch.
            for &s in &touched {
                used_in[s as usize] = 0;
            }
        };
        if !missed.is_empty() {
            if let Err(e) = self.store.get_many(&missed, &mut fetched, &mut known) {
                forget_marks(&mut self.used_in);
                return Err(Refused::Store(self.name_features(e)));
            }
        }
        let n_known = known.iter().filter(|k| is_row(k)).count() as u64;
        let needed = touched.len() as u64 + n_known;
        if needed > self.capacity {
            forget_marks(&mut self.used_in);
            return Err(Refused::TooManyRows(TooManyRows { needed }));
        }

        let mut inserted = false;
        for (&key, &slot) in keys.iter().zip(resolved) {
            if slot != MISS {
                self.stats[key.0 as usize].hits += 1;
            }
        }
        for key in known_unknown {
            self.stats[key.0 as usize].unknown += 1;
        }
        if let Some(frequency) = &mut self.frequency {
            let mut halved = false;
            for &slot in &touched {
                let key = self.slots[slot as usize].expect("a hit's slot is occupied");
                halved |= frequency.record(key, self.uses[slot as usize]);
            }
            for key in &missed {
                halved |= frequency.record(*key, miss_uses[key].1);
            }
            if halved {
                self.evictor.rescale(0.5);
            }
            for &slot in &touched {
                let key = self.slots[slot as usize].expect("occupied");
                self.evictor
                    .access_at(slot, frequency_priority(frequency, key, batch));
            }
        } else {
            for &slot in &touched {
                self.evictor.access(slot, batch, self.uses[slot as usize]);
            }
        }
        // Victims for the known misses the free slots cannot take, chosen before any new row
        // enters, among the rows this batch does not use.
        let wanted = (n_known as usize).saturating_sub(self.free.len());
        let used_in = &self.used_in;
        let victims = self
            .evictor
            .pop_victims(wanted, |s| used_in[s as usize] == batch);
        assert_eq!(
            victims.len(),
            wanted,
            "checked: enough rows the batch does not use"
        );
        for &victim in &victims {
            let old = self.slots[victim as usize].take().expect("occupied");
            self.table.remove(table::tag(old.0 as usize), old.1);
            self.stats[old.0 as usize].evictions += 1;
            self.free.push(victim);
        }
        for (i, &key) in missed.iter().enumerate() {
            let uses = miss_uses[&key].1;
            let stats = &mut self.stats[key.0 as usize];
            stats.misses += uses;
            let deadline = match known[i] {
                Fetched::Row => None,
                Fetched::Expires(at) => Some(at),
                Fetched::Unknown => {
                    stats.unknown += uses;
                    self.cache_unknown(key);
                    inserted = true;
                    continue;
                }
                Fetched::Unavailable => {
                    stats.unavailable += uses;
                    continue;
                }
            };
            let slot = self.free.pop().expect("freed above");
            self.table.insert(table::tag(key.0 as usize), key.1, slot);
            self.slots[slot as usize] = Some(key);
            self.generation[slot as usize] = self.generation[slot as usize].wrapping_add(1);
            if let Some(at) = deadline {
                self.deadlines
                    .push(Reverse((at, slot, self.generation[slot as usize])));
            }
            self.used_in[slot as usize] = batch;
            match &self.frequency {
                Some(f) => self
                    .evictor
                    .insert_at(slot, frequency_priority(f, key, batch)),
                None => self.evictor.insert(slot, batch, uses),
            }
            self.stats[key.0 as usize].insertions += 1;
            inserted = true;
            let row = &fetched[i * self.d..(i + 1) * self.d];
            self.rows.push(slot, &row_to_words(row, self.precision));
        }
        Ok(inserted)
    }

    /// Records the staged table entries and rows into `encoder` (the whole table is written
    /// instead when it was rebuilt or too much of it changed).
    pub fn record_uploads(&mut self, ctx: &GpuContext, encoder: &mut wgpu::CommandEncoder) {
        match self.table.take_changes() {
            Some(changed) if changed.len() <= self.entries.capacity => {
                for i in changed {
                    self.entries.push(i, &self.table.entries()[i as usize]);
                }
                self.entries.record(ctx, encoder);
            }
            _ => {
                if let Some(b) = &self.buffers {
                    ctx.queue
                        .write_buffer(&b.table, 0, bytemuck::cast_slice(self.table.entries()));
                }
            }
        }
        self.rows.record(ctx, encoder);
    }

    /// Submits whatever is staged, on its own.
    fn flush(&mut self, ctx: &GpuContext) {
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        self.record_uploads(ctx, &mut encoder);
        ctx.queue.submit([encoder.finish()]);
    }

    /// Writes rows for `ids` of spec feature `feature` into the store, and into the cache where
    /// they are cached, subject to the update cap.
    pub fn update(
        &mut self,
        ctx: &GpuContext,
        feature: usize,
        ids: &[u64],
        rows: &[f32],
        now: u64,
    ) -> Result<UpdateOutcome> {
        let d = self.d;
        let mut outcome = UpdateOutcome::default();
        for (&id, row) in ids.iter().zip(rows.chunks_exact(d)) {
            let key = (feature as u32, id);
            if !self.shared_policy && !self.tracker.allow(key, now) {
                outcome.capped += 1;
                continue;
            }
            match self.store.put(key, row) {
                Err(e) => {
                    self.flush(ctx);
                    return Err(self.name_features(e));
                }
                Ok(false) => {
                    outcome.capped += 1;
                    continue;
                }
                Ok(true) => {}
            }
            if self.shared_policy {
                // The store set the row's expiry: drop the copy, so the next lookup fetches
                // the row with it (as every other process does, told by the store).
                self.drop_cached(key);
                outcome.applied += 1;
                continue;
            }
            match self.table.get(table::tag(feature), id) {
                // Known now: the next lookup misses and fetches it.
                Some(UNKNOWN) => {
                    self.drop_cached(key);
                }
                Some(slot) => {
                    if self.rows.is_full() {
                        self.flush(ctx);
                    }
                    self.rows.push(slot, &row_to_words(row, self.precision));
                }
                None => {}
            }
            outcome.applied += 1;
        }
        let stats = &mut self.stats[feature];
        stats.updates += outcome.applied as u64;
        stats.capped_updates += outcome.capped as u64;
        self.flush(ctx);
        Ok(outcome)
    }

    /// Drops every id not written for the expiry time from the store and the cache; returns
    /// how many.
    pub fn expire(&mut self, ctx: &GpuContext, now: u64) -> Result<usize> {
        if self.shared_policy {
            // The store expires rows itself; the cache drops its copies at their deadlines.
            let n = self.drop_expired(now);
            self.flush(ctx);
            return Ok(n);
        }
        let gone = self.tracker.expire(now);
        for &(f, id) in &gone {
            if let Err(e) = self.store.remove((f, id)) {
                self.flush(ctx);
                return Err(self.name_features(e));
            }
            self.drop_cached((f, id));
            self.stats[f as usize].expired += 1;
        }
        self.flush(ctx);
        Ok(gone.len())
    }

    /// Drops every cached row and every id cached as unknown (the store was loaded again),
    /// counted per feature as reloaded.
    fn drop_all(&mut self) {
        let mut rows = 0u64;
        for slot in 0..self.slots.len() {
            if let Some(key) = self.slots[slot] {
                self.drop_cached(key);
                self.stats[key.0 as usize].reloaded += 1;
                rows += 1;
            }
        }
        let unknown = std::mem::take(&mut self.unknown);
        let mut ids = 0u64;
        for key in unknown {
            if self.table.get(table::tag(key.0 as usize), key.1) == Some(UNKNOWN) {
                self.table.remove(table::tag(key.0 as usize), key.1);
                ids += 1;
            }
        }
        let _ = (rows, ids);
        self.reloads += 1;
    }

    /// Drops `key`'s cached row, if any; says whether there was one.
    fn drop_cached(&mut self, key: Key) -> bool {
        match self.table.remove(table::tag(key.0 as usize), key.1) {
            Some(UNKNOWN) => true, // its place in `unknown` is skipped when it comes up
            Some(slot) => {
                self.slots[slot as usize] = None;
                self.evictor.remove(slot);
                self.free.push(slot);
                true
            }
            None => false,
        }
    }

    /// Fills the cache with `keys`' rows (hottest first; those beyond the cache's rows are
    /// skipped), fetched from the store in chunks; returns the rows cached. The lookups do not
    /// count in the hit and miss counters.
    pub fn warm_up(&mut self, ctx: &GpuContext, keys: &[Key]) -> Result<usize> {
        let keep = self.stats.clone();
        let mut keys = keys.to_vec();
        keys.truncate(self.capacity as usize);
        let chunk = self.rows.capacity.min(self.capacity as usize).max(1);
        for part in keys.chunks(chunk) {
            let resolved = self.lookup_on_host(part);
            match self.admit(part, &resolved) {
                Ok(_) => self.flush(ctx),
                Err(Refused::Store(e)) => return Err(e),
                Err(Refused::TooManyRows(_)) => unreachable!("a chunk is within the capacity"),
            }
        }
        for (s, k) in self.stats.iter_mut().zip(keep) {
            (s.hits, s.misses, s.unknown) = (k.hits, k.misses, k.unknown);
        }
        Ok(self.capacity as usize - self.free.len())
    }

    /// Caches `key` as unknown to the store, forgetting the oldest such id beyond the cache's
    /// row count.
    fn cache_unknown(&mut self, key: Key) {
        self.table
            .insert(table::tag(key.0 as usize), key.1, UNKNOWN);
        self.unknown.push_back(key);
        while self.unknown.len() as u64 > self.capacity {
            let old = self.unknown.pop_front().expect("non-empty");
            if self.table.get(table::tag(old.0 as usize), old.1) == Some(UNKNOWN) {
                self.table.remove(table::tag(old.0 as usize), old.1);
            }
        }
    }

    /// Drops cached rows whose store deadline is `now` or earlier; returns how many.
    fn drop_expired(&mut self, now: u64) -> usize {
        let mut n = 0;
        while let Some(&Reverse((at, slot, generation))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            if generation != self.generation[slot as usize] {
                continue; // the slot holds another row now
            }
            if let Some(key) = self.slots[slot as usize] {
                self.drop_cached(key);
                self.stats[key.0 as usize].expired += 1;
                n += 1;
            }
        }
        n
    }

    /// Before a batch's lookup: drops the cached rows other processes wrote (the store says
    /// which) and those past their expiry, and submits the table's changes, so the lookup sees
    /// neither.
    pub fn refresh(&mut self, ctx: &GpuContext) {
        let reloaded = self.store.take_reloaded();
        let changed = self.store.take_changed();
        if reloaded {
            self.drop_all();
            self.flush(ctx);
            return;
        }
        let mut dropped = 0;
        for &key in &changed {
            dropped += usize::from(self.drop_cached(key));
        }
        if !self.deadlines.is_empty() {
            dropped += self.drop_expired(unix_now());
        }
        if dropped > 0 {
            self.flush(ctx);
        }
    }

    /// A store error with its features' names in place of their spec indices (stores name
    /// keys as `feature #<index>`, not knowing the names).
    fn name_features(&self, e: Error) -> Error {
        match e {
            Error::Store(mut message) => {
                for (f, name) in self.names.iter().enumerate().rev() {
                    message =
                        message.replace(&format!("feature #{f}"), &format!("feature '{name}'"));
                }
                Error::Store(message)
            }
            other => other,
        }
    }

    /// Cache hits of feature `f` so far.
    pub fn hits_of(&self, f: usize) -> u64 {
        self.stats[f].hits
    }

    /// Counters per hashed feature (`hashed[f]` says which features are) and in total.
    pub fn stats(&self, hashed: &[bool]) -> CacheStats {
        let features: Vec<FeatureStats> = self
            .stats
            .iter()
            .zip(hashed)
            .filter(|(_, &h)| h)
            .map(|(s, _)| s.clone())
            .collect();
        let mut total = FeatureStats {
            feature: "total".into(),
            ..Default::default()
        };
        for s in &features {
            total.add(s);
        }
        CacheStats {
            policy: self.policy.name(),
            capacity_rows: self.capacity,
            cached_rows: self.capacity - self.free.len() as u64,
            store_rows: self.store.len() as u64,
            features,
            total,
            store_reloads: self.reloads,
            store_nodes: self.store.nodes(),
        }
    }

    /// The feature index of a hashed feature's name, for the update API.
    pub fn feature_index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}
