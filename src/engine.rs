//! The engine: a model's weights on the GPU, the forward plan turned into pipelines' bind
//! groups, and workspaces (per-batch buffers) to score through. Everything here is built once in
//! [`Engine::new`]; scoring a batch writes ids, records the plan's dispatches into one pass, and
//! reads the probabilities back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::gpu::gather::{GatherLayout, MAX_PAGES};
use crate::gpu::linear::{self, SpanParams};
use crate::gpu::{BatchParams, GpuContext};
use crate::model::Model;
use crate::plan::{PackedWeights, Plan, Step};
use crate::spec::ModelSpec;

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
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_batch: 4096,
            workspaces: 1,
            max_page_bytes: None,
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
}

/// Buffers every workspace reads: weights, pages, and the plan's constant tables.
struct SharedBuffers {
    weights: wgpu::Buffer,
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
    staging: wgpu::Buffer,
    bind_groups: Vec<wgpu::BindGroup>,
    host_ids: Vec<u32>,
    host_dense: Vec<f32>,
}

impl Engine {
    /// Uploads the model and builds every buffer, bind group and table scoring needs.
    pub fn new(ctx: Arc<GpuContext>, model: &Model, options: &EngineOptions) -> Result<Self> {
        let spec = model.spec.clone();
        let max_binding = ctx.max_binding_bytes();
        let per_sample = Plan::floats_per_sample(&spec) * 4;
        // The id and dense-value uploads are bindings too.
        let ids_per_sample: u64 = spec
            .features
            .iter()
            .map(|f| f.max_len.unwrap_or(1) as u64 * 4)
            .sum();
        let max_rows = (max_binding / per_sample)
            .min(max_binding / ids_per_sample)
            .min(options.max_batch.max(1) as u64);
        if max_rows == 0 {
            return Err(Error::Gpu(format!(
                "one sample needs {per_sample} bytes of activations, more than a storage binding ({max_binding} bytes)"
            )));
        }
        // A linear dispatch has one workgroup row per TILE_M samples.
        let max_groups = ctx.limits.max_compute_workgroups_per_dimension;
        let max_rows = max_rows.min(max_groups as u64 * linear::TILE_M as u64) as u32;
        let packed = PackedWeights::new(&spec, &model.weights);
        if packed.data.len() as u64 * 4 > max_binding {
            return Err(Error::Gpu(format!(
                "the dense weights take {} bytes, more than a storage binding ({max_binding} bytes)",
                packed.data.len() * 4
            )));
        }
        let plan = Plan::new(&spec, &packed, max_rows);
        for step in &plan.steps {
            if let Step::Linear { label, problems } = step {
                let (_, tiles) = linear::lay_out(problems);
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
        let layout = GatherLayout::new(&spec, &plan.destinations, page_bytes)?;

        let out_of_memory = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let invalid = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let shared = SharedBuffers::new(&ctx, model, &layout, &plan, &packed);
        let workspaces = (0..options.workspaces.max(1))
            .map(|_| Mutex::new(Workspace::new(&ctx, &spec, &layout, &plan, &shared)))
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
            ctx,
            spec,
            layout,
            plan,
            shared,
            workspaces,
            next: AtomicUsize::new(0),
        })
    }

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

    /// Embedding pages the tables were split into.
    pub fn pages(&self) -> usize {
        self.layout.n_pages
    }

    /// Scores a batch: `len × T` probabilities, sample-major.
    pub fn score(&self, batch: &Batch) -> Result<Vec<f32>> {
        batch.validate(&self.spec, "batch", 1)?;
        let t = self.spec.n_tasks();
        let mut out = Vec::with_capacity(batch.len() * t);
        let mut ws = self.workspace();
        let mut start = 0;
        while start < batch.len() {
            let end = (start + self.max_rows()).min(batch.len());
            out.extend(self.run_chunk(&mut ws, batch, start..end, None)?);
            start = end;
        }
        Ok(out)
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
        let mut ws = self.workspace();
        let rows = batch.len().min(self.max_rows());
        self.run_chunk(&mut ws, batch, 0..rows, Some(&timestamps))?;
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
    /// `timestamps`, each dispatch gets its own timed pass.
    fn run_chunk(
        &self,
        ws: &mut Workspace,
        batch: &Batch,
        range: std::ops::Range<usize>,
        timestamps: Option<&Timestamps>,
    ) -> Result<Vec<f32>> {
        let rows = range.len() as u32;
        let Workspace {
            host_ids,
            host_dense,
            ..
        } = ws;
        self.layout.encode(batch, range, host_ids, host_dense);
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
        match timestamps {
            None => {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                for i in 0..self.plan.steps.len() {
                    self.dispatch(&mut pass, ws, i, rows);
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
                    self.dispatch(&mut pass, ws, i, rows);
                }
                encoder.resolve_query_set(&ts.set, 0..ts.count, &ts.resolve, 0);
                encoder.copy_buffer_to_buffer(&ts.resolve, 0, &ts.staging, 0, ts.bytes());
            }
        }
        let t = self.spec.n_tasks();
        let out_bytes = self.plan.out.offset as u64 * 4;
        encoder.copy_buffer_to_buffer(
            &ws.act,
            out_bytes,
            &ws.staging,
            0,
            (rows as usize * t * 4) as u64,
        );
        self.ctx
            .submit_and_read(encoder, &ws.staging, rows as usize * t)
    }

    /// Records step `i` of the plan.
    fn dispatch(&self, pass: &mut wgpu::ComputePass, ws: &Workspace, i: usize, rows: u32) {
        let bind_group = &ws.bind_groups[i];
        match &self.plan.steps[i] {
            Step::Gather => self
                .ctx
                .gather
                .dispatch(pass, bind_group, &self.layout.params, rows),
            Step::Linear { .. } => {
                let tiles = self.shared.step_tiles[i];
                self.ctx.linear.dispatch(pass, bind_group, tiles, rows)
            }
            Step::MmoeMix(params) => self.ctx.mmoe_mix.dispatch(pass, bind_group, params, rows),
        }
    }
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
    ) -> Self {
        let weights = ctx.storage_buffer("dense weights", &packed.data);
        let pages = (0..layout.n_pages)
            .map(|p| {
                ctx.storage_buffer(
                    "embedding page",
                    &layout.page(&model.spec, &model.weights, p),
                )
            })
            .collect();
        let features = ctx.storage_buffer("gather features", &layout.features);
        let gather_params = ctx.uniform_buffer("gather params", &layout.params);

        let mut table = Vec::new();
        let mut step_uniforms = Vec::new();
        let mut step_tiles = Vec::new();
        for step in &plan.steps {
            let (uniform, tiles) = match step {
                Step::Gather => (None, 0),
                Step::Linear { label, problems } => {
                    let (gpu, tiles) = linear::lay_out(problems);
                    let span = SpanParams {
                        first: table.len() as u32,
                        count: gpu.len() as u32,
                        _pad: [0; 2],
                    };
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
        let act_len = rows * (plan.row_width as usize + spec.n_tasks());
        let act = ctx.zeroed_storage("activations", (act_len * 4) as u64);
        let staging = ctx.staging_buffer("scores readback", (rows * spec.n_tasks() * 4) as u64);
        let device = &ctx.device;
        let page = |p: usize| &shared.pages[p.min(shared.pages.len() - 1)];
        let pages: [&wgpu::Buffer; MAX_PAGES] = std::array::from_fn(page);
        let bind_groups = plan
            .steps
            .iter()
            .zip(&shared.step_uniforms)
            .map(|(step, uniform)| match step {
                Step::Gather => ctx.gather.bind_group(
                    device,
                    &shared.gather_params,
                    &batch,
                    &shared.features,
                    &ids,
                    &dense,
                    &act,
                    pages,
                ),
                Step::Linear { .. } => ctx.linear.bind_group(
                    device,
                    uniform.as_ref().expect("linear steps have a span"),
                    &batch,
                    &shared.problems,
                    &shared.weights,
                    &act,
                ),
                Step::MmoeMix(_) => ctx.mmoe_mix.bind_group(
                    device,
                    uniform.as_ref().expect("mix steps have params"),
                    &batch,
                    &act,
                ),
            })
            .collect();
        Self {
            batch,
            ids,
            dense,
            act,
            staging,
            bind_groups,
            host_ids: Vec::new(),
            host_dense: Vec::new(),
        }
    }
}
