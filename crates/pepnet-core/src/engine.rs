//! The engine: a model's weights on the GPU, the forward plan turned into pipelines' bind
//! groups, and workspaces (per-batch buffers) to score through. Everything here is built once in
//! [`Engine::new`]; scoring a batch writes ids, records the plan's dispatches into one pass, and
//! reads the probabilities back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::batch::{Batch, CheckedBatch};
use crate::cache::{CacheOptions, CacheState, CacheStats, Refused, StoreSource, UpdateOutcome};
use crate::error::{Error, Result, SampleError};
use crate::forward::{ForwardBuffers, ForwardPass};
use crate::gpu::act::ActStorage;
use crate::gpu::gather::layout::GatherLayout;
use crate::gpu::gather::{self, MAX_PAGES};
use crate::gpu::linear::{self, Precision, SpanParams, Variant};
use crate::gpu::resolve::{KeyGpu, ResolveParams};
use crate::gpu::{BatchParams, GpuContext};
use crate::model::embedding;
use crate::model::Model;
use crate::plan::{PackedWeights, Plan, Step};
use crate::spec::ModelSpec;
use crate::store::{EmbeddingStore, Key, MemoryStore};
use crate::weights::Weights;

/// How an engine is sized.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The most samples one GPU pass scores; larger batches are split. Capped further so that
    /// the activation buffer fits one storage binding.
    pub max_batch: usize,
    /// Workspaces, i.e. batches that can be in flight at once from different threads.
    pub workspaces: usize,
    /// Upper bound on the bytes of one embedding page (defaults to the device's largest storage
    /// binding); lower it to exercise paging on small tables.
    pub max_page_bytes: Option<u64>,
    /// The embedding cache of hashed features (unused by models without them).
    pub cache: CacheOptions,
    /// What the linear products store and multiply in: f32 (the default) or f16 (tensor cores
    /// where the device has them). At f16 the embedding tables and the cache store rows as f16
    /// too, so the cache's capacity in bytes holds twice the rows.
    pub precision: Precision,
    /// Run every batch on the same linear kernel variant (the one for large batches), so that
    /// a sample's scores are bit-identical whatever it is batched with; a few-row batch then
    /// runs on large tiles (slower alone). The dynamic batcher needs it.
    pub batch_invariant: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_batch: 4096,
            workspaces: 1,
            max_page_bytes: None,
            cache: CacheOptions::default(),
            precision: Precision::F32,
            batch_invariant: false,
        }
    }
}

/// Scores batches of a model on the GPU. `Send + Sync`: share it (e.g. in an `Arc`) and call
/// [`Engine::score`] from many threads.
pub struct Engine {
    ctx: Arc<GpuContext>,
    spec: ModelSpec,
    layout: GatherLayout,
    plan: Plan,
    shared: SharedBuffers,
    workspaces: Vec<Mutex<Workspace>>,
    next: AtomicUsize,
    /// Per-step timers, when the device has timestamp queries.
    timestamps: Option<Mutex<Timestamps>>,
    /// The embedding cache, for models with hashed features.
    cache: Option<Mutex<CacheState>>,
    /// A batch scores under the read side; swapping the dense weights takes the write side, so
    /// no batch sees both.
    weights_lock: RwLock<()>,
    packed_len: usize,
    precision: Precision,
    batch_invariant: bool,
    /// `batch::spec_id` of the spec: batches checked against it are not checked again.
    spec_id: u64,
    /// The threads [`Engine::score_async`] scores on, started at its first call.
    async_threads: std::sync::OnceLock<AsyncThreads>,
}

/// A batch to score off the caller's thread.
type Job = Box<dyn FnOnce() + Send>;

/// One thread per workspace (more could not score at once), fed in turn.
struct AsyncThreads {
    jobs: Mutex<std::sync::mpsc::Sender<Job>>,
}

impl AsyncThreads {
    fn start(n: usize) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..n {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("pepnet-score-{i}"))
                .spawn(move || loop {
                    // The engine's sender gone: the engine was dropped, so stop.
                    let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    job();
                })
                .map_err(|e| Error::Batch(format!("cannot start a scoring thread: {e}")))?;
        }
        Ok(Self {
            jobs: Mutex::new(tx),
        })
    }
}

/// Scores to come from [`Engine::score_async`]: `.await` them on any runtime (the future is
/// woken by the scoring thread, with the caller's own waker), or [`Scoring::wait`].
pub struct Scoring {
    reply: Arc<crate::reply::Reply<Result<Vec<f32>>>>,
}

impl Scoring {
    /// Blocks until the scores are ready.
    pub fn wait(self) -> Result<Vec<f32>> {
        self.reply
            .wait(None)
            .expect("a wait without a deadline ends with the result")
    }
}

impl std::future::Future for Scoring {
    type Output = Result<Vec<f32>>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.reply.poll(cx)
    }
}

/// Buffers every workspace reads: weights, pages, and the plan's constant tables.
struct SharedBuffers {
    weights: wgpu::Buffer,
    /// The dense weights as f16, for the f16 precision.
    weights_half: Option<wgpu::Buffer>,
    pages: Vec<wgpu::Buffer>,
    features: wgpu::Buffer,
    gather_params: wgpu::Buffer,
    problems: wgpu::Buffer,
    /// Per step: its span (linear) or params (mix) uniform; `None` for the gather.
    step_uniforms: Vec<Option<wgpu::Buffer>>,
    /// Per step: column tiles of a linear dispatch (0 for others).
    step_tiles: Vec<u32>,
}

/// Per-batch buffers and their bind groups.
struct Workspace {
    batch: wgpu::Buffer,
    ids: wgpu::Buffer,
    dense: wgpu::Buffer,
    act: wgpu::Buffer,
    /// The probabilities, where they are apart from the activations (over f16 storage).
    scores: Option<wgpu::Buffer>,
    staging: wgpu::Buffer,
    /// The resolve step's bind group, for models with hashed features.
    resolve_group: Option<wgpu::BindGroup>,
    /// Every other step's.
    forward: ForwardPass,
    host_ids: Vec<u32>,
    host_dense: Vec<f32>,
    /// Hashed features' ids, for models that have them.
    resolve: Option<ResolveSpace>,
}

/// A workspace's buffers for the resolve kernel: the ids to look up and what it found.
struct ResolveSpace {
    params: wgpu::Buffer,
    keys: wgpu::Buffer,
    resolved: wgpu::Buffer,
    staging: wgpu::Buffer,
    host_keys: Vec<KeyGpu>,
}

impl Engine {
    /// Uploads the model and builds every buffer, bind group and table scoring needs. Hashed
    /// features' rows are served from the store `options.cache.store` names: by default a
    /// [`MemoryStore`] of the model's stored rows. The cache is filled with the rows of
    /// `options.cache.warm_up`'s ids.
    pub fn new(ctx: Arc<GpuContext>, model: &Model, options: &EngineOptions) -> Result<Self> {
        let store: Box<dyn EmbeddingStore> = match &options.cache.store {
            StoreSource::Open(opener) if model.spec.has_hashed() => opener.open(&model.spec)?,
            _ => Box::new(MemoryStore::from_weights(&model.spec, &model.weights)),
        };
        let engine = Self::with_store(ctx, model, options, store)?;
        if let Some(cache) = &engine.cache {
            if !options.cache.warm_up.is_empty() {
                engine
                    .lock_cache(cache)?
                    .warm_up(&engine.ctx, &options.cache.warm_up)?;
            }
        }
        Ok(engine)
    }

    /// As [`Engine::new`], with hashed features' rows served from `store` (the model's stored
    /// rows are not used).
    pub fn with_store(
        ctx: Arc<GpuContext>,
        model: &Model,
        options: &EngineOptions,
        store: Box<dyn EmbeddingStore>,
    ) -> Result<Self> {
        let spec = model.spec.clone();
        let max_binding = ctx.max_binding_bytes();
        // At f16 the activations are stored as f16 where the device has f16 shaders.
        let has_f16 = ctx.features.contains(wgpu::Features::SHADER_F16);
        let act_storage = ActStorage::for_scoring(options.precision, has_f16);
        let per_sample = Plan::act_bytes_per_sample(&spec, act_storage);
        // The id and dense-value uploads are bindings too.
        let ids_per_sample: u64 = spec
            .features
            .iter()
            .map(|f| f.max_len.unwrap_or(1) as u64 * 4)
            .sum();
        let max_rows = (max_binding / per_sample)
            .min(max_binding / ids_per_sample)
            .min(options.max_batch.max(1) as u64);
        if per_sample > max_binding || ids_per_sample > max_binding {
            let (what, bytes) = if per_sample > max_binding {
                ("activations", per_sample)
            } else {
                ("ids (the sum of max_len over the features)", ids_per_sample)
            };
            return Err(Error::Gpu(format!(
                "one sample needs {bytes} bytes of {what}, more than a storage binding ({max_binding} bytes)"
            )));
        }
        // A linear dispatch has one workgroup row per tile of rows (of the variant with the
        // fewest rows a tile, among those that run batches).
        let max_groups = ctx.limits.max_compute_workgroups_per_dimension;
        let tile_m = linear::TILE_M.min(ctx.linear().tile_m(Variant::Coop));
        let max_rows = max_rows.min(max_groups as u64 * tile_m as u64) as u32;
        let packed = PackedWeights::new(&spec, &model.weights);
        if packed.data.len() as u64 * 4 > max_binding {
            return Err(Error::Gpu(format!(
                "the dense weights take {} bytes, more than a storage binding ({max_binding} bytes)",
                packed.data.len() * 4
            )));
        }
        let plan = Plan::new(&spec, &packed.layout, max_rows, act_storage);
        for step in &plan.steps {
            if let Step::Linear { label, problems } = step {
                let (_, tiles) = plan.lay_out(problems);
                if tiles > max_groups {
                    return Err(Error::Gpu(format!(
                        "dispatch {label} needs {tiles} column tiles, more than the device's {max_groups} workgroups per dimension"
                    )));
                }
            }
        }
        let page_bytes = options
            .max_page_bytes
            .unwrap_or(max_binding)
            .min(max_binding);
        // At f16 the tables and the cache store rows as f16: twice the rows per byte.
        let row_bytes = 4 * gather::row_words(spec.d(), options.precision) as u64;
        let cache_rows = if spec.has_hashed() {
            options.cache.capacity.rows_of(row_bytes)
        } else {
            0
        };
        let layout = GatherLayout::with_precision(
            &spec,
            &plan.destinations,
            page_bytes,
            cache_rows,
            options.precision,
        )?;
        let keys_per_row: u32 = layout
            .features
            .iter()
            .filter(|g| g.hashed != 0)
            .map(|g| g.n_slots)
            .sum();
        let max_keys = plan.max_rows as usize * keys_per_row as usize;

        let out_of_memory = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let invalid = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let cache = if spec.has_hashed() {
            let defaults = layout.default_rows(&spec);
            Some(CacheState::new(
                &ctx,
                &spec,
                &options.cache,
                store,
                &defaults,
                max_keys,
                options.precision,
            )?)
        } else {
            None
        };
        let shared = SharedBuffers::new(
            &ctx,
            model,
            &layout,
            &plan,
            &packed,
            cache.as_ref(),
            options.precision,
        );
        let workspaces = (0..options.workspaces.max(1))
            .map(|_| {
                let ws = Workspace::new(
                    &ctx,
                    &spec,
                    &layout,
                    &plan,
                    &shared,
                    cache.as_ref(),
                    (max_keys, options.precision),
                );
                let mut ws = ws;
                if options.batch_invariant {
                    ws.forward
                        .fix_variant(ctx.linear().variant_for(options.precision, u32::MAX));
                }
                Mutex::new(ws)
            })
            .collect();
        // Scopes pop innermost first.
        let errors = [invalid, out_of_memory].map(|scope| pollster::block_on(scope.pop()));
        if let Some(e) = errors.into_iter().flatten().next() {
            return Err(Error::Gpu(format!("allocating the engine's buffers: {e}")));
        }
        let timestamps = ctx
            .features
            .contains(wgpu::Features::TIMESTAMP_QUERY)
            .then(|| Mutex::new(Timestamps::new(&ctx, plan.steps.len())));
        Ok(Self {
            timestamps,
            cache: cache.map(Mutex::new),
            weights_lock: RwLock::new(()),
            packed_len: packed.data.len(),
            precision: options.precision,
            batch_invariant: options.batch_invariant,
            spec_id: crate::batch::spec_id(&spec),
            async_threads: std::sync::OnceLock::new(),
            ctx,
            spec,
            layout,
            plan,
            shared,
            workspaces,
            next: AtomicUsize::new(0),
        })
    }

    /// The spec of the model the engine scores.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The most samples one GPU pass scores.
    pub fn max_rows(&self) -> usize {
        self.plan.max_rows as usize
    }

    /// The forward plan's steps, one dispatch each.
    pub fn steps(&self) -> &[Step] {
        &self.plan.steps
    }

    /// The adapter the engine runs on.
    pub fn adapter_name(&self) -> String {
        self.ctx.info.name.clone()
    }

    /// The precision of the linear products.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// What the activation buffer stores: f16 at the f16 precision on a device with f16
    /// shaders, else f32.
    pub fn act_storage(&self) -> ActStorage {
        self.plan.act_storage
    }

    /// The linear kernel variant a batch of `rows` runs on (every linear step runs the same).
    pub fn linear_variant(&self, rows: usize) -> Variant {
        let rows = match self.batch_invariant {
            true => u32::MAX,
            false => rows.min(self.max_rows()) as u32,
        };
        self.ctx.linear().variant_for(self.precision, rows)
    }

    /// Whether every batch runs on the same kernels ([`EngineOptions::batch_invariant`]).
    pub fn is_batch_invariant(&self) -> bool {
        self.batch_invariant
    }

    /// What runs `step` for a batch whose linear steps run `variant`: the linear kernel's
    /// variant (with the tensor-core shape), or the kernel's name; ", f16 act" where the
    /// activations it reads and writes are f16.
    pub fn kernel_name(&self, step: &Step, variant: Variant) -> String {
        let name = match step {
            Step::Linear { .. } => match (variant, self.ctx.linear().coop()) {
                (Variant::Coop, Some(shape)) => {
                    format!("f16 coop {0}x{0}x{0}", shape.size)
                }
                _ => variant.name().to_string(),
            },
            Step::Gather => "gather".into(),
            Step::Resolve => return "resolve".into(),
            Step::MmoeMix(_) => "mmoe_mix".into(),
        };
        // The kernels that touch the activations say when they store f16.
        match self.act_storage() {
            ActStorage::F16 => format!("{name}, f16 act"),
            ActStorage::F32 => name,
        }
    }

    /// Embedding pages the tables were split into.
    pub fn pages(&self) -> usize {
        self.layout.n_pages
    }

    /// Scores a batch: `len × T` probabilities, sample-major.
    pub fn score(&self, batch: &Batch) -> Result<Vec<f32>> {
        batch.validate(&self.spec, "batch", 1)?;
        self.score_valid(batch)
    }

    /// Scores `batch` without blocking the caller: the batch is checked, written, run and read
    /// back on one of the engine's scoring threads (one per workspace, started at the first
    /// call), and the returned future is ready as soon as that readback completes. It needs no
    /// particular async runtime; the scores equal [`Engine::score`]'s bit for bit.
    ///
    /// ```no_run
    /// # async fn f(engine: std::sync::Arc<pepnet_core::Engine>, batch: pepnet_core::Batch)
    /// #     -> pepnet_core::Result<()> {
    /// let scores = engine.score_async(batch).await?;
    /// # Ok(()) }
    /// ```
    pub fn score_async(self: &Arc<Self>, batch: Batch) -> Scoring {
        let reply = Arc::new(crate::reply::Reply::default());
        let job: Job = {
            let (engine, reply) = (self.clone(), reply.clone());
            Box::new(move || reply.send(engine.score(&batch)))
        };
        let threads = match self.async_threads.get() {
            Some(t) => Ok(t),
            None => AsyncThreads::start(self.workspaces.len())
                .map(|t| self.async_threads.get_or_init(|| t)),
        };
        let sent = threads.and_then(|t| {
            (t.jobs.lock().unwrap_or_else(|e| e.into_inner()))
                .send(job)
                .map_err(|_| Error::Batch("the engine's scoring threads have stopped".into()))
        });
        if let Err(e) = sent {
            reply.send(Err(e));
        }
        Scoring { reply }
    }

    /// The [`crate::batch::spec_id`] of the engine's spec: a [`CheckedBatch`] of it is scored
    /// without being checked again.
    pub fn spec_id(&self) -> u64 {
        self.spec_id
    }

    /// Scores a batch an input reader has checked: without checking it again when it was
    /// checked against this engine's spec (else as [`Engine::score`]).
    pub fn score_checked(&self, batch: &CheckedBatch) -> Result<Vec<f32>> {
        if batch.spec_id() == self.spec_id {
            self.score_valid(batch.batch())
        } else {
            self.score(batch.batch())
        }
    }

    /// Scores a batch known to fit the spec.
    fn score_valid(&self, batch: &Batch) -> Result<Vec<f32>> {
        let t = self.spec.n_tasks();
        let mut out = Vec::with_capacity(batch.len() * t);
        let _weights = self.weights_lock.read().unwrap_or_else(|e| e.into_inner());
        let mut ws = self.workspace();
        let mut start = 0;
        while start < batch.len() {
            let mut end = (start + self.max_rows()).min(batch.len());
            // A chunk needing more distinct cached rows than the cache has is halved until
            // it fits; one sample that does not fit is an error.
            loop {
                let scored = self.run_chunk(&mut ws, batch, start..end, None);
                let scored = scored.map_err(|e| {
                    e.while_doing(format_args!(
                        "scoring samples {}..={} of a batch of {}",
                        start + 1,
                        end,
                        batch.len()
                    ))
                })?;
                match scored {
                    Ok(scores) => {
                        out.extend(scores);
                        break;
                    }
                    Err(needed) if end - start > 1 => {
                        let _ = needed;
                        end = start + (end - start) / 2;
                    }
                    Err(needed) => {
                        return Err(Error::Samples(vec![SampleError {
                            sample: start,
                            column: String::new(),
                            message: format!(
                                "needs {needed} distinct cached embedding rows at once, more \
                                 than the cache's capacity of {} rows; raise the capacity",
                                self.cache_capacity()
                            ),
                        }]))
                    }
                }
            }
            start = end;
        }
        check_probabilities(&out, &self.spec.tasks)?;
        Ok(out)
    }

    fn cache_capacity(&self) -> u64 {
        self.cache
            .as_ref()
            .and_then(|c| self.lock_cache(c).ok().map(|c| c.capacity()))
            .unwrap_or(0)
    }

    fn lock_cache<'a>(&self, c: &'a Mutex<CacheState>) -> Result<MutexGuard<'a, CacheState>> {
        // A panic while the cache was locked may have left the host's index and the GPU's
        // apart; scoring on could read wrong rows, so refuse instead.
        c.lock().map_err(|_| {
            Error::Cache(
                "a thread panicked while updating the embedding cache, which may be inconsistent \
                 now; build a new engine"
                    .into(),
            )
        })
    }

    /// The embedding cache's counters; `None` for a model without hashed features.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        let hashed: Vec<bool> = self.spec.features.iter().map(|f| f.hashed).collect();
        self.cache
            .as_ref()
            .and_then(|c| self.lock_cache(c).ok().map(|c| c.stats(&hashed)))
    }

    /// Writes new rows (`ids.len() × d`, row-major) for ids of hashed feature `feature` into
    /// the store and the cache, under the update policy; `now` is the update clock in seconds.
    /// Batches that start scoring after this returns see the new rows. With a store that keeps
    /// the policy itself (Redis), the store's clock counts the window and the expiry, `now` is
    /// not used, and other processes' batches see the rows once the store tells them.
    pub fn update_rows(
        &self,
        feature: &str,
        ids: &[u64],
        rows: &[f32],
        now: u64,
    ) -> Result<UpdateOutcome> {
        let cache = self.cache.as_ref().ok_or_else(|| {
            Error::Cache("the model has no hashed features, so no rows to update".into())
        })?;
        let f = self
            .spec
            .features
            .iter()
            .position(|f| f.name == feature && f.hashed)
            .ok_or_else(|| {
                Error::Cache(format!("'{feature}' is not a hashed feature of the model"))
            })?;
        let d = self.spec.d();
        if rows.len() != ids.len() * d {
            return Err(Error::Cache(format!(
                "feature '{feature}': {} ids need {} floats of rows (d = {d}), found {}",
                ids.len(),
                ids.len() * d,
                rows.len()
            )));
        }
        if let Some(i) = rows
            .iter()
            .position(|x| crate::weights::check_values(&[*x]).is_err())
        {
            return Err(Error::Cache(format!(
                "feature '{feature}': row of id {} holds {}; rows must be finite and within \
                 ±{} (the f16 range)",
                ids[i / d],
                rows[i],
                crate::weights::MAX_WEIGHT
            )));
        }
        self.lock_cache(cache)?.update(&self.ctx, f, ids, rows, now)
    }

    /// Drops hashed ids not written for the update policy's expiry time from the store and the
    /// cache; returns how many. `now` is the update clock in seconds.
    pub fn expire(&self, now: u64) -> Result<usize> {
        match &self.cache {
            Some(c) => self.lock_cache(c)?.expire(&self.ctx, now),
            None => Ok(0),
        }
    }

    /// Replaces every dense weight (all but the embeddings) with `weights`' at once: a batch
    /// is scored entirely with the old or entirely with the new ones.
    pub fn swap_weights(&self, weights: &Weights) -> Result<()> {
        for (name, shape) in self.spec.expected_tensors() {
            if embedding::is_embedding(&name) {
                continue;
            }
            match weights.try_get(&name) {
                Some(t) if t.shape == shape => {}
                found => {
                    return Err(Error::Tensor {
                        file: "swap_weights".into(),
                        tensor: name,
                        message: format!(
                            "expected shape {shape:?}, found {:?}",
                            found.map(|t| &t.shape)
                        ),
                    })
                }
            }
        }
        let packed = PackedWeights::new(&self.spec, weights);
        if packed.data.len() != self.packed_len {
            return Err(Error::Batch(format!(
                "the new weights pack into {} floats, the engine's into {}; they are not for this spec",
                packed.data.len(),
                self.packed_len
            )));
        }
        let _batches = self.weights_lock.write().unwrap_or_else(|e| e.into_inner());
        let queue = &self.ctx.queue;
        queue.write_buffer(&self.shared.weights, 0, bytemuck::cast_slice(&packed.data));
        if let Some(half) = &self.shared.weights_half {
            let data = linear::pack_half(&packed.data);
            queue.write_buffer(half, 0, bytemuck::cast_slice(&data));
        }
        // Every batch after this one submits after the write; flush it now all the same.
        self.ctx.queue.submit([]);
        Ok(())
    }

    /// A free workspace, or a turn at one.
    fn workspace(&self) -> MutexGuard<'_, Workspace> {
        for ws in &self.workspaces {
            if let Ok(guard) = ws.try_lock() {
                return guard;
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.workspaces.len();
        // A poisoned workspace only means another thread panicked mid-batch; every buffer is
        // rewritten before it is read, so it is safe to reuse.
        self.workspaces[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Scores up to [`Engine::max_rows`] samples of `batch` once, in one pass per dispatch with
    /// a timestamp before and after each; returns the GPU nanoseconds of each step of
    /// [`Engine::steps`]. `None` when the adapter has no timestamp queries.
    pub fn profile(&self, batch: &Batch) -> Result<Option<Vec<f64>>> {
        batch.validate(&self.spec, "batch", 1)?;
        let Some(timestamps) = &self.timestamps else {
            return Ok(None);
        };
        let timestamps = timestamps.lock().unwrap_or_else(|e| e.into_inner());
        let _weights = self.weights_lock.read().unwrap_or_else(|e| e.into_inner());
        let mut ws = self.workspace();
        let rows = batch.len().min(self.max_rows());
        self.run_chunk(&mut ws, batch, 0..rows, Some(&timestamps))?
            .map_err(|needed| {
                Error::Cache(format!(
                    "profiling needs the first {rows} samples' {needed} distinct rows in the cache at once"
                ))
            })?;
        let bytes = self
            .ctx
            .read_mapped(&timestamps.staging, timestamps.bytes(), None)?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
        let period = self.ctx.queue.get_timestamp_period() as f64;
        Ok(Some(
            ticks
                .chunks_exact(2)
                .map(|t| t[1].saturating_sub(t[0]) as f64 * period)
                .collect(),
        ))
    }

    /// Uploads samples `range`, runs the plan, and reads their probabilities back; with
    /// `timestamps`, each dispatch gets its own timed pass. The inner error says the chunk
    /// needs this many distinct cached rows, more than the cache holds.
    fn run_chunk(
        &self,
        ws: &mut Workspace,
        batch: &Batch,
        range: std::ops::Range<usize>,
        timestamps: Option<&Timestamps>,
    ) -> Result<std::result::Result<Vec<f32>, u64>> {
        let rows = range.len() as u32;
        let mut no_keys = Vec::new();
        let Workspace {
            host_ids,
            host_dense,
            resolve,
            ..
        } = ws;
        let keys = resolve.as_mut().map_or(&mut no_keys, |r| &mut r.host_keys);
        self.layout
            .encode(batch, range.clone(), host_ids, host_dense, keys);
        let queue = &self.ctx.queue;
        queue.write_buffer(
            &ws.batch,
            0,
            bytemuck::bytes_of(&BatchParams { rows, _pad: [0; 3] }),
        );
        if !ws.host_ids.is_empty() {
            queue.write_buffer(&ws.ids, 0, bytemuck::cast_slice(&ws.host_ids));
        }
        if !ws.host_dense.is_empty() {
            queue.write_buffer(&ws.dense, 0, bytemuck::cast_slice(&ws.host_dense));
        }
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        // Hashed ids: look them up, admit the misses, and keep the cache locked until the
        // forward pass is submitted, so no other batch changes what this one reads.
        let mut cache = None;
        let mut resolve_again = timestamps.is_some();
        if let (Some(state), Some(space)) = (&self.cache, &ws.resolve) {
            let mut guard = self.lock_cache(state)?;
            guard.refresh(&self.ctx);
            let n_keys = space.host_keys.len() as u32;
            let params = ResolveParams {
                n_keys,
                mask: guard.mask(),
                cache_base: self.layout.cache_base,
                _pad: 0,
            };
            // Written even for no keys: a dispatch always launches one workgroup, which must
            // find nothing to do.
            queue.write_buffer(&space.params, 0, bytemuck::bytes_of(&params));
            if n_keys > 0 {
                queue.write_buffer(&space.keys, 0, bytemuck::cast_slice(&space.host_keys));
                let mut lookup = self.ctx.device.create_command_encoder(&Default::default());
                {
                    let mut pass = lookup.begin_compute_pass(&Default::default());
                    self.ctx
                        .resolve()
                        .dispatch(&mut pass, resolve_group(ws), n_keys);
                }
                let bytes = n_keys as u64 * 4;
                lookup.copy_buffer_to_buffer(&space.resolved, 0, &space.staging, 0, bytes);
                let submission = queue.submit([lookup.finish()]);
                let resolved: Vec<u32> = bytemuck::pod_collect_to_vec(&self.ctx.read_mapped(
                    &space.staging,
                    bytes,
                    Some(submission),
                )?);
                let keys: Vec<Key> = space
                    .host_keys
                    .iter()
                    .map(|k| (k[0] - 1, k[1] as u64 | (k[2] as u64) << 32))
                    .collect();
                match guard.admit(&keys, &resolved) {
                    Err(Refused::TooManyRows(too_many)) => return Ok(Err(too_many.needed)),
                    Err(Refused::Store(e)) => return Err(e),
                    Ok(staged) => {
                        if staged {
                            guard.record_uploads(&self.ctx, &mut encoder);
                            resolve_again = true;
                        }
                    }
                }
            }
            cache = Some((guard, n_keys));
        }
        let n_keys = cache.as_ref().map_or(0, |c| c.1);
        match timestamps {
            None => {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                for i in 0..self.plan.steps.len() {
                    if self.plan.steps[i] == Step::Resolve && !resolve_again {
                        continue;
                    }
                    self.dispatch(&mut pass, ws, i, rows, n_keys);
                }
            }
            Some(ts) => {
                for i in 0..self.plan.steps.len() {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(self.plan.steps[i].label()),
                        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                            query_set: &ts.set,
                            beginning_of_pass_write_index: Some(2 * i as u32),
                            end_of_pass_write_index: Some(2 * i as u32 + 1),
                        }),
                    });
                    self.dispatch(&mut pass, ws, i, rows, n_keys);
                }
                encoder.resolve_query_set(&ts.set, 0..ts.count, &ts.resolve, 0);
                encoder.copy_buffer_to_buffer(&ts.resolve, 0, &ts.staging, 0, ts.bytes());
            }
        }
        let t = self.spec.n_tasks();
        let out_bytes = self.plan.out_byte_offset();
        encoder.copy_buffer_to_buffer(
            ws.scores.as_ref().unwrap_or(&ws.act),
            out_bytes,
            &ws.staging,
            0,
            (rows as usize * t * 4) as u64,
        );
        let submission = queue.submit([encoder.finish()]);
        drop(cache);
        let bytes = self.ctx.read_mapped(
            &ws.staging,
            (rows as usize * t * 4) as u64,
            Some(submission),
        )?;
        Ok(Ok(bytemuck::pod_collect_to_vec(&bytes)))
    }

    /// Records step `i` of the plan.
    fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass,
        ws: &Workspace,
        i: usize,
        rows: u32,
        n_keys: u32,
    ) {
        match &self.plan.steps[i] {
            Step::Resolve => self.ctx.resolve().dispatch(pass, resolve_group(ws), n_keys),
            _ => {
                ws.forward.record(&self.ctx, pass, &self.plan, i, rows);
            }
        }
    }
}

/// A workspace's resolve bind group; only models with hashed features have a resolve step.
fn resolve_group(ws: &Workspace) -> &wgpu::BindGroup {
    ws.resolve_group
        .as_ref()
        .expect("a resolve step means hashed features, whose workspaces bind the resolve kernel")
}

/// A query set with two timestamps per step, and the buffers to read them back through.
struct Timestamps {
    set: wgpu::QuerySet,
    count: u32,
    resolve: wgpu::Buffer,
    staging: wgpu::Buffer,
}

impl Timestamps {
    fn new(ctx: &GpuContext, steps: usize) -> Self {
        let count = 2 * steps as u32;
        let bytes = count as u64 * 8;
        let set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("step timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamp resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = ctx.staging_buffer("timestamp readback", bytes);
        Self {
            set,
            count,
            resolve,
            staging,
        }
    }

    fn bytes(&self) -> u64 {
        self.count as u64 * 8
    }
}

impl SharedBuffers {
    fn new(
        ctx: &GpuContext,
        model: &Model,
        layout: &GatherLayout,
        plan: &Plan,
        packed: &PackedWeights,
        cache: Option<&CacheState>,
        precision: Precision,
    ) -> Self {
        let weights = ctx.storage_buffer("dense weights", &packed.data);
        let weights_half = (precision == Precision::F16)
            .then(|| ctx.storage_buffer("dense weights f16", &linear::pack_half(&packed.data)));
        let mut pages: Vec<wgpu::Buffer> = (0..layout.resident_pages())
            .map(|p| {
                ctx.storage_buffer(
                    "embedding page",
                    &layout.page_words(&model.spec, &model.weights, p),
                )
            })
            .collect();
        if let Some(c) = cache {
            // The cache's rows are the page after the resident ones.
            pages.push(c.buffers.as_ref().expect("a GPU cache").rows.clone());
        }
        let features = ctx.storage_buffer("gather features", &layout.features);
        let gather_params = ctx.uniform_buffer("gather params", &layout.params);

        let mut table = Vec::new();
        let mut step_uniforms = Vec::new();
        let mut step_tiles = Vec::new();
        for step in &plan.steps {
            let (uniform, tiles) = match step {
                Step::Resolve | Step::Gather => (None, 0),
                Step::Linear { label, problems } => {
                    let (gpu, tiles) = plan.lay_out(problems);
                    let span = SpanParams::new(table.len(), gpu.len());
                    table.extend(gpu);
                    (Some(ctx.uniform_buffer(label, &span)), tiles)
                }
                Step::MmoeMix(params) => (Some(ctx.uniform_buffer("mmoe_mix", params)), 0),
            };
            step_uniforms.push(uniform);
            step_tiles.push(tiles);
        }
        let problems = ctx.storage_buffer("linear problems", &table);
        Self {
            weights,
            weights_half,
            pages,
            features,
            gather_params,
            problems,
            step_uniforms,
            step_tiles,
        }
    }
}

impl Workspace {
    fn new(
        ctx: &GpuContext,
        spec: &ModelSpec,
        layout: &GatherLayout,
        plan: &Plan,
        shared: &SharedBuffers,
        cache: Option<&CacheState>,
        (max_keys, precision): (usize, Precision),
    ) -> Self {
        let rows = plan.max_rows as usize;
        let batch = ctx.uniform_buffer(
            "batch",
            &BatchParams {
                rows: 0,
                _pad: [0; 3],
            },
        );
        let ids = ctx.zeroed_storage("ids", (rows * layout.params.slots as usize * 4) as u64);
        let dense = ctx.zeroed_storage("dense", (rows * layout.params.n_dense as usize * 4) as u64);
        let act = ctx.zeroed_storage("activations", plan.act_bytes());
        let scores = plan
            .scores_apart()
            .then(|| ctx.zeroed_storage("probabilities", (rows * spec.n_tasks() * 4) as u64));
        let staging = ctx.staging_buffer("scores readback", (rows * spec.n_tasks() * 4) as u64);
        let device = &ctx.device;
        let resolve = cache.map(|_| ResolveSpace {
            params: ctx.uniform_buffer(
                "resolve params",
                &ResolveParams {
                    n_keys: 0,
                    mask: 0,
                    cache_base: 0,
                    _pad: 0,
                },
            ),
            // A binding holds at least one key, even for a model whose hashed features no
            // kernel reads.
            keys: ctx.zeroed_storage("hashed ids", max_keys.max(1) as u64 * 16),
            resolved: ctx.zeroed_storage("resolved slots", max_keys.max(1) as u64 * 4),
            staging: ctx.staging_buffer("resolved readback", max_keys.max(1) as u64 * 4),
            host_keys: Vec::new(),
        });
        let page = |p: usize| &shared.pages[p.min(shared.pages.len() - 1)];
        let pages: [&wgpu::Buffer; MAX_PAGES] = std::array::from_fn(page);
        let resolve_group = resolve.as_ref().map(|r| {
            let c = cache
                .and_then(|c| c.buffers.as_ref())
                .expect("models with hashed features have a GPU cache");
            ctx.resolve().bind_group(
                device,
                [&r.params, &r.keys, &c.table, &c.defaults, &ids, &r.resolved],
            )
        });
        let forward = ForwardPass::new(
            ctx,
            plan,
            shared.step_tiles.clone(),
            layout.params,
            precision,
            &ForwardBuffers {
                step_uniforms: &shared.step_uniforms,
                gather_params: &shared.gather_params,
                features: &shared.features,
                pages,
                problems: &shared.problems,
                weights: &shared.weights,
                weights_half: shared.weights_half.as_ref(),
                batch: &batch,
                ids: &ids,
                dense: &dense,
                act: &act,
                scores: scores.as_ref(),
            },
        );
        Self {
            batch,
            ids,
            dense,
            act,
            scores,
            staging,
            resolve_group,
            forward,
            host_ids: Vec::new(),
            host_dense: Vec::new(),
            resolve,
        }
    }
}

/// Every probability of a `[samples × tasks]` block is finite, or the samples that are not,
/// as an error: a value or weight that overflowed f32 somewhere in the model comes out here
/// as NaN, and must never leave as a score.
pub fn check_probabilities(scores: &[f32], tasks: &[String]) -> Result<()> {
    let t = tasks.len().max(1);
    let bad: Vec<SampleError> = scores
        .chunks(t)
        .enumerate()
        .filter_map(|(sample, p)| {
            let task = p.iter().position(|x| !x.is_finite())?;
            Some(SampleError {
                sample,
                column: tasks.get(task).cloned().unwrap_or_default(),
                message: format!(
                    "the probability came out {}: a value overflowed the float range inside \
                     the model (f32's, or 65504 where activations are stored as f16 at \
                     --precision f16; look for a huge dense value in this row)",
                    p[task]
                ),
            })
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::Samples(bad))
    }
}
