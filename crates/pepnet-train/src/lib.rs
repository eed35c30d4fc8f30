//! Training on the GPU: the forward plan, the loss, the backward kernels in reverse plan order,
//! and the optimizers, all recorded into one submission per batch, with no readback.
//!
//! Data flows as in scoring (batch → ids → gather → linear steps → probabilities), then back:
//! the loss kernel writes the output layer's gradient into a gradient buffer laid out as the
//! activations; each linear step's backward writes its inputs' (and gates') gradients there and
//! its weights' gradients into a buffer laid out as the packed weights; the gather's backward
//! sums the gradients of exactly the rows the batch touched. Adam then updates the packed dense
//! weights and AdaGrad the touched rows. Every sum runs in a fixed order, so training is
//! bit-for-bit repeatable on one adapter.

pub mod checkpoint;
mod data;
pub mod eval;
pub mod hashed;
mod learner;
pub mod metrics;
mod state;
mod stream;

pub use checkpoint::{CheckpointOptions, Progress};
pub use data::{
    progress, train, validate, window_line, Batches, EpochReport, LabelledData, Progressive,
    TrainOptions, TrainReport, TrainingData, Validation, Window, WindowReport,
};
pub use hashed::{HashedOptions, HashedStats, HashedTrainer, RULES_FILE};
pub use learner::{ChangedRows, Learner};
pub use state::{OptimizerState, OPTIMIZER_FILE};
pub use stream::StreamedData;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytemuck::Zeroable;

use pepnet_core::batch::Batch;
use pepnet_core::error::{Error, Result};
use pepnet_core::forward::{ForwardBuffers, ForwardPass};
use pepnet_core::gpu::gather::backward::{self as gather_backward, RowGradParams};
use pepnet_core::gpu::gather::layout::GatherLayout;
use pepnet_core::gpu::gather::row_uses::RowUses;
use pepnet_core::gpu::gather::MAX_PAGES;
use pepnet_core::gpu::linear::backward::{self as linear_backward, InputBindings, WeightBindings};
use pepnet_core::gpu::linear::{self, SpanParams};
use pepnet_core::gpu::loss::LossParams;
use pepnet_core::gpu::optimizer::{AdaGradOptions, AdaGradParams, AdamOptions, AdamParams};
use pepnet_core::gpu::{BatchParams, GpuContext};
use pepnet_core::grad::Gradients;
use pepnet_core::model::Model;
use pepnet_core::plan::{PackedWeights, Plan, Step};
use pepnet_core::spec::ModelSpec;

/// Batches the loss log holds before the trainer reads it back on its own.
const LOG_CAPACITY: u64 = 4096;

/// How a trainer is set up.
#[derive(Debug, Clone)]
pub struct TrainerOptions {
    /// The most samples of one step (the paper's 1024).
    pub batch_size: usize,
    pub adam: AdamOptions,
    pub adagrad: AdaGradOptions,
    /// Per task, the weight of its loss (1 each when `None`).
    pub task_weights: Option<Vec<f64>>,
    /// Precision of the forward pass's matrix products. At f16 (mixed precision) the forward
    /// reads an f16 copy of the weights, refreshed from the f32 master weights after every
    /// Adam step; the loss, the gradients (in f32 buffers, so no loss scaling is needed) and the
    /// optimizer state stay f32.
    pub precision: linear::Precision,
}

impl Default for TrainerOptions {
    fn default() -> Self {
        Self {
            batch_size: 1024,
            adam: AdamOptions::default(),
            adagrad: AdaGradOptions::default(),
            task_weights: None,
            precision: linear::Precision::F32,
        }
    }
}

/// A model being trained on the GPU. Its weights and optimizer state live on the device; read
/// them back with [`Trainer::model`] and [`Trainer::optimizer_state`].
pub struct Trainer {
    ctx: Arc<GpuContext>,
    model: Model,
    layout: GatherLayout,
    plan: Plan,
    packed: PackedWeights,
    options: TrainerOptions,
    steps_done: u64,
    /// Steps whose loss is still only in the GPU log.
    log_from: u64,
    losses: Vec<f32>,
    b: Buffers,
    /// The forward plan's dispatches over the trainer's buffers.
    forward: ForwardPass,
    /// Whether the backward's products run on tensor cores (`input_grad_coop`,
    /// `weight_grad_coop`: f16 where the device has them).
    coop_backward: bool,
    /// Per step of the plan, what its backward records.
    backward: Vec<Backward>,
    loss_groups: (wgpu::BindGroup, wgpu::BindGroup),
    row_grad_group: wgpu::BindGroup,
    adam_group: wgpu::BindGroup,
    adagrad_group: wgpu::BindGroup,
    /// f16 training: the f16 copy of the weights refreshed after Adam.
    to_half_group: Option<wgpu::BindGroup>,
    uses: RowUses,
    host_ids: Vec<u32>,
    host_dense: Vec<f32>,
    /// Samples of the last step's batch.
    last_rows: usize,
}

struct Buffers {
    weights: wgpu::Buffer,
    /// The forward's f16 copy of `weights`, for f16 training.
    weights_half: Option<wgpu::Buffer>,
    page: wgpu::Buffer,
    m: wgpu::Buffer,
    v: wgpu::Buffer,
    sum_sq: wgpu::Buffer,
    wgrad: wgpu::Buffer,
    act: wgpu::Buffer,
    grad: wgpu::Buffer,
    batch: wgpu::Buffer,
    ids: wgpu::Buffer,
    dense: wgpu::Buffer,
    labels: wgpu::Buffer,
    loss_params: wgpu::Buffer,
    loss_log: wgpu::Buffer,
    starts: wgpu::Buffer,
    uses: wgpu::Buffer,
    touched: wgpu::Buffer,
    row_grad: wgpu::Buffer,
    row_params: wgpu::Buffer,
    adam_params: wgpu::Buffer,
    adagrad_params: wgpu::Buffer,
}

enum Backward {
    Linear {
        input: Option<(wgpu::BindGroup, u32)>,
        weight: (wgpu::BindGroup, u32),
    },
    Mix([wgpu::BindGroup; 2], pepnet_core::gpu::mmoe_mix::MixParams),
    Gather,
}

/// Per linear step of the plan, its spans and dispatch sizes in the shared tables.
struct LinearStep {
    /// The forward's (and `weight_grad`'s) span of problems.
    problems: SpanParams,
    column_tiles: u32,
    /// `input_grad`'s span of input groups.
    groups: SpanParams,
    input_tiles: u32,
    weight_tiles: u32,
}

/// The problem table every linear step indexes, the backward's input groups beside it, and
/// each step's place in them (`None` for other steps).
fn linear_tables(
    plan: &Plan,
) -> (
    Vec<linear::ProblemGpu>,
    Vec<linear_backward::InputGroupGpu>,
    Vec<Option<LinearStep>>,
) {
    let span = SpanParams::new;
    let (mut table, mut groups, mut steps) = (Vec::new(), Vec::new(), Vec::new());
    for step in &plan.steps {
        let Step::Linear { problems, .. } = step else {
            steps.push(None);
            continue;
        };
        let (gpu, column_tiles) = linear::lay_out(problems);
        let (g, input_tiles) = linear_backward::input_groups(problems, table.len() as u32);
        steps.push(Some(LinearStep {
            problems: span(table.len(), gpu.len()),
            column_tiles,
            groups: span(groups.len(), g.len()),
            input_tiles,
            weight_tiles: problems.iter().map(linear::weight_tiles).sum(),
        }));
        table.extend(gpu);
        groups.extend(g);
    }
    (table, groups, steps)
}

/// Checks the options against the spec; returns the task weights.
fn check_options(spec: &ModelSpec, options: &TrainerOptions) -> Result<Vec<f32>> {
    if let Some(f) = spec.features.iter().find(|f| f.hashed) {
        return Err(Error::Gpu(format!(
            "feature '{}' is hashed: training hashed features (rows in a store) is not \
             supported yet; train with a vocabulary",
            f.name
        )));
    }
    if options.batch_size == 0 || options.batch_size > u32::MAX as usize / 2 {
        return Err(Error::Batch(format!(
            "the batch size must be at least 1 (and below 2^31), found {}",
            options.batch_size
        )));
    }
    let rates = [
        ("Adam's learning rate", options.adam.lr, false),
        ("Adam's epsilon", options.adam.eps, true),
        ("AdaGrad's learning rate", options.adagrad.lr, false),
        ("AdaGrad's epsilon", options.adagrad.eps, true),
    ];
    for (what, x, positive) in rates {
        if !x.is_finite() || x < 0.0 || (positive && x == 0.0) {
            let must = if positive { "above 0" } else { "at least 0" };
            return Err(Error::Batch(format!(
                "{what} must be finite and {must}, found {x}"
            )));
        }
    }
    for (name, beta) in [("beta1", options.adam.beta1), ("beta2", options.adam.beta2)] {
        if !(0.0..1.0).contains(&beta) {
            return Err(Error::Batch(format!(
                "Adam's {name} must be in [0, 1), found {beta}"
            )));
        }
    }
    let t = spec.n_tasks();
    match &options.task_weights {
        Some(w) if w.len() != t => Err(Error::Batch(format!(
            "{} task weights given for {t} tasks",
            w.len()
        ))),
        Some(w) => match w.iter().position(|x| !x.is_finite() || *x < 0.0) {
            Some(i) => Err(Error::Batch(format!(
                "task '{}': a loss weight must be finite and at least 0, found {}",
                spec.tasks[i], w[i]
            ))),
            None => Ok(w.iter().map(|&x| x as f32).collect()),
        },
        None => Ok(vec![1.0; t]),
    }
}

impl Trainer {
    /// Uploads `model` (and, to resume, its optimizer `state`) and builds every buffer, pipeline
    /// binding and table of the training step once.
    pub fn new(
        ctx: Arc<GpuContext>,
        model: &Model,
        state: Option<&OptimizerState>,
        options: &TrainerOptions,
    ) -> Result<Self> {
        let spec = &model.spec;
        let task_weights = check_options(spec, options)?;
        let rows = options.batch_size;
        let t_count = spec.n_tasks();
        // Sized before anything is built: the plan's offsets are u32.
        let max_binding = ctx.max_binding_bytes();
        let act_bytes = (rows as u64).saturating_mul(Plan::floats_per_sample_for(spec, true) * 4);
        if act_bytes > max_binding {
            return Err(Error::Gpu(format!(
                "a batch of {rows} needs {act_bytes} bytes of activations, more than one storage \
                 binding ({max_binding} bytes) on this device; use a smaller batch"
            )));
        }
        let packed = PackedWeights::new(spec, &model.weights);
        let plan = Plan::for_training(spec, &packed.layout, rows as u32);
        let act_len = act_bytes / 4;
        let layout = GatherLayout::new(spec, &plan.destinations, max_binding, 0)?;
        if layout.n_pages > 1 {
            return Err(Error::Gpu(format!(
                "the embedding tables ({} rows of d = {}) span {} storage bindings; training \
                 needs them in one ({max_binding} bytes) on this device: train them through \
                 working sets (`--vocab-working-set`, HashedOptions::vocab_tables), which keep \
                 each whole table on the host",
                layout.total_rows,
                spec.d(),
                layout.n_pages
            )));
        }
        let page_data = layout.page(spec, &model.weights, 0);
        let (m, v, sum_sq) = match state {
            Some(s) => s.to_device_layout(spec, &packed, &layout)?,
            None => (
                vec![0.0; packed.data.len()],
                vec![0.0; packed.data.len()],
                vec![0.0; page_data.len()],
            ),
        };
        let steps_done = state.map_or(0, |s| s.step);

        let slots = layout.params.slots as usize;
        let n_dense = layout.params.n_dense as usize;
        // A batch touches at most every id slot and dense feature of each sample, and at most
        // every row of the tables.
        let max_touched = (rows * (slots + n_dense))
            .min(layout.total_rows as usize)
            .max(1);
        let max_uses = (rows * (slots + n_dense)).max(1);
        let d = spec.d();

        let out_of_memory = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let invalid = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let zeroed = |label: &str, floats: usize| ctx.zeroed_storage(label, floats as u64 * 4);
        let b = Buffers {
            weights: ctx.storage_buffer("dense weights", &packed.data),
            weights_half: (options.precision == linear::Precision::F16)
                .then(|| ctx.storage_buffer("dense weights f16", &linear::pack_half(&packed.data))),
            page: ctx.storage_buffer("embedding rows", &page_data),
            m: ctx.storage_buffer("adam m", &m),
            v: ctx.storage_buffer("adam v", &v),
            sum_sq: ctx.storage_buffer("adagrad sums", &sum_sq),
            wgrad: zeroed("weight gradients", packed.data.len()),
            act: zeroed("activations", act_len as usize),
            grad: zeroed("gradients", act_len as usize),
            batch: ctx.uniform_buffer(
                "batch",
                &BatchParams {
                    rows: 0,
                    _pad: [0; 3],
                },
            ),
            ids: zeroed("ids", rows * slots),
            dense: zeroed("dense", rows * n_dense),
            labels: zeroed("labels", rows * t_count),
            loss_params: ctx.uniform_buffer("loss params", &LossParams::zeroed()),
            loss_log: zeroed("loss log", LOG_CAPACITY as usize),
            starts: zeroed("row starts", max_touched + 1),
            uses: zeroed("row uses", max_uses * 4),
            touched: zeroed("touched rows", max_touched),
            row_grad: zeroed("row gradients", max_touched * d),
            row_params: ctx.uniform_buffer("row gradient params", &RowGradParams::zeroed()),
            adam_params: ctx.uniform_buffer("adam params", &AdamParams::zeroed()),
            adagrad_params: ctx.uniform_buffer("adagrad params", &AdaGradParams::zeroed()),
        };
        let device = &ctx.device;
        let (table, groups, linear_steps) = linear_tables(&plan);
        let problems = ctx.storage_buffer("linear problems", &table);
        let group_buf = ctx.storage_buffer("input groups", &groups);
        let features = ctx.storage_buffer("gather features", &layout.features);
        let gather_params = ctx.uniform_buffer("gather params", &layout.params);
        let grad_features = ctx.storage_buffer(
            "gather backward features",
            &gather_backward::feature_table(&layout, &plan.grad_sources),
        );
        // At f16 the backward's products run on tensor cores where the device has them.
        let coop_backward =
            options.precision == linear::Precision::F16 && ctx.linear_backward().has_coop();
        // Per step, its linear span or mix parameters, read by its forward and backward alike.
        let mut step_uniforms = Vec::new();
        let mut backward = Vec::new();
        for (step, linear_step) in plan.steps.iter().zip(&linear_steps) {
            match (step, linear_step) {
                (Step::Gather, _) => {
                    step_uniforms.push(None);
                    backward.push(Backward::Gather);
                }
                (Step::Linear { label, .. }, Some(ls)) => {
                    let problem_span = ctx.uniform_buffer(label, &ls.problems);
                    let group_span = ctx.uniform_buffer(label, &ls.groups);
                    let input = (ls.input_tiles > 0).then(|| {
                        let bindings = InputBindings {
                            span: &group_span,
                            batch: &b.batch,
                            problems: &problems,
                            weights: &b.weights,
                            act: &b.act,
                            grad: &b.grad,
                            groups: &group_buf,
                        };
                        let bg =
                            ctx.linear_backward()
                                .input_bind_group(device, bindings, coop_backward);
                        (bg, ls.input_tiles)
                    });
                    let bindings = WeightBindings {
                        span: &problem_span,
                        batch: &b.batch,
                        problems: &problems,
                        act: &b.act,
                        grad: &b.grad,
                        wgrad: &b.wgrad,
                    };
                    let weight =
                        ctx.linear_backward()
                            .weight_bind_group(device, bindings, coop_backward);
                    backward.push(Backward::Linear {
                        input,
                        weight: (weight, ls.weight_tiles),
                    });
                    step_uniforms.push(Some(problem_span));
                }
                (Step::MmoeMix(params), _) => {
                    let u = ctx.uniform_buffer("mmoe_mix", params);
                    let bgs = ctx
                        .mmoe_mix()
                        .backward_bind_groups(device, &u, &b.batch, &b.act, &b.grad);
                    backward.push(Backward::Mix(bgs, *params));
                    step_uniforms.push(Some(u));
                }
                _ => unreachable!("training plans have no resolve step"),
            }
        }
        let task_w = ctx.storage_buffer("task weights", &task_weights);
        let terms = zeroed("loss terms", rows * t_count);
        let loss_groups = ctx.loss().bind_groups(
            device,
            [
                &b.loss_params,
                &b.batch,
                &b.act,
                &b.labels,
                &task_w,
                &b.grad,
                &terms,
                &b.loss_log,
            ],
        );
        let row_grad_group = ctx.gather_backward().bind_group(
            device,
            [
                &b.row_params,
                &grad_features,
                &b.starts,
                &b.uses,
                &b.act,
                &b.grad,
                &b.row_grad,
            ],
        );
        let adam_group = ctx
            .optimizer()
            .adam_bind_group(device, [&b.adam_params, &b.wgrad, &b.weights, &b.m, &b.v]);
        let adagrad_group = ctx.optimizer().adagrad_bind_group(
            device,
            [
                &b.adagrad_params,
                &b.touched,
                &b.row_grad,
                &b.page,
                &b.sum_sq,
            ],
        );
        let to_half_group = b.weights_half.as_ref().map(|half| {
            ctx.optimizer()
                .to_half_bind_group(device, &b.adam_params, &b.weights, half)
        });
        // Scopes pop innermost first.
        let errors = [invalid, out_of_memory].map(|scope| pollster::block_on(scope.pop()));
        if let Some(e) = errors.into_iter().flatten().next() {
            return Err(Error::Gpu(format!("allocating the trainer's buffers: {e}")));
        }
        let forward_tiles = linear_steps
            .iter()
            .map(|s| s.as_ref().map_or(0, |s| s.column_tiles))
            .collect();
        let forward = ForwardPass::new(
            &ctx,
            &plan,
            forward_tiles,
            layout.params,
            options.precision,
            &ForwardBuffers {
                step_uniforms: &step_uniforms,
                gather_params: &gather_params,
                features: &features,
                pages: [&b.page; MAX_PAGES],
                problems: &problems,
                weights: &b.weights,
                weights_half: b.weights_half.as_ref(),
                batch: &b.batch,
                ids: &b.ids,
                dense: &b.dense,
                act: &b.act,
                scores: None,
            },
        );
        Ok(Self {
            ctx,
            model: model.clone(),
            layout,
            plan,
            packed,
            options: options.clone(),
            steps_done,
            log_from: steps_done,
            losses: Vec::new(),
            b,
            forward,
            coop_backward,
            backward,
            loss_groups,
            row_grad_group,
            adam_group,
            adagrad_group,
            to_half_group,
            uses: RowUses::default(),
            host_ids: Vec::new(),
            host_dense: Vec::new(),
            last_rows: 0,
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.model.spec
    }

    /// The device the trainer runs on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Per task, the weight of its loss.
    pub fn task_weights(&self) -> Vec<f64> {
        match &self.options.task_weights {
            Some(w) => w.clone(),
            None => vec![1.0; self.model.spec.n_tasks()],
        }
    }

    /// Optimizer steps taken, counting those before a resume.
    pub fn steps_done(&self) -> u64 {
        self.steps_done
    }

    /// One training step on `batch` (at most the batch size) with `labels`, `B × T` row-major,
    /// each 0 or 1 (or in between, for soft labels). Records and submits without waiting.
    pub fn step(&mut self, batch: &Batch, labels: &[f32]) -> Result<()> {
        // A device that faulted runs nothing more: say so at the next step, not at the end.
        self.ctx
            .check_faults()
            .map_err(|e| e.while_doing(format_args!("training step {}", self.steps_done + 1)))?;
        let rows = self.prepare_step(batch, labels)?;
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            self.record_gradients(&mut pass, rows);
            for dispatch in self.optimizer_dispatches() {
                self.record(&mut pass, &dispatch, rows);
            }
        }
        self.ctx.queue.submit([encoder.finish()]);
        Ok(())
    }

    /// Uploads a step's batch and sets its parameters (loss slot, Adam's step); returns its rows.
    fn prepare_step(&mut self, batch: &Batch, labels: &[f32]) -> Result<u32> {
        let rows = self.upload(batch, labels)?;
        self.last_rows = rows as usize;
        if self.steps_done - self.log_from >= LOG_CAPACITY {
            self.drain_log()?;
        }
        self.steps_done += 1;
        let queue = &self.ctx.queue;
        let slot = ((self.steps_done - 1) % LOG_CAPACITY) as u32;
        queue.write_buffer(
            &self.b.loss_params,
            0,
            bytemuck::bytes_of(&self.loss_params(slot)),
        );
        let adam = AdamParams::new(
            &self.options.adam,
            self.packed.data.len() as u32,
            self.steps_done.min(i32::MAX as u64) as u32,
        );
        queue.write_buffer(&self.b.adam_params, 0, bytemuck::bytes_of(&adam));
        queue.write_buffer(
            &self.b.adagrad_params,
            0,
            bytemuck::bytes_of(&self.adagrad_params()),
        );
        Ok(rows)
    }

    /// The loss kernel's parameters, its loss going to log `slot`.
    fn loss_params(&self, slot: u32) -> LossParams {
        LossParams {
            tasks: self.model.spec.n_tasks() as u32,
            out_off: self.plan.out.offset,
            log_slot: slot,
            _pad: 0,
        }
    }

    /// The gather backward's parameters for the batch uploaded last.
    fn row_params(&self) -> RowGradParams {
        RowGradParams {
            rows: self.uses.touched.len() as u32,
            d: self.model.spec.d() as u32,
            _pad: [0; 2],
        }
    }

    /// AdaGrad's parameters for the batch uploaded last.
    fn adagrad_params(&self) -> AdaGradParams {
        AdaGradParams {
            rows: self.uses.touched.len() as u32,
            d: self.model.spec.d() as u32,
            lr: self.options.adagrad.lr as f32,
            eps: self.options.adagrad.eps as f32,
        }
    }

    /// The loss and every parameter's gradient on `batch`, computed on the GPU, with no update:
    /// the trainer's gradients in [`pepnet_core::grad`]'s form, to check against it.
    pub fn gradients(&mut self, batch: &Batch, labels: &[f32]) -> Result<(f64, Gradients)> {
        let rows = self.upload(batch, labels)?;
        self.drain_log()?;
        let slot = (self.steps_done % LOG_CAPACITY) as u32;
        self.ctx.queue.write_buffer(
            &self.b.loss_params,
            0,
            bytemuck::bytes_of(&self.loss_params(slot)),
        );
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            self.record_gradients(&mut pass, rows);
        }
        self.ctx.queue.submit([encoder.finish()]);
        let loss = self.ctx.read_buffer(&self.b.loss_log, slot as usize + 1)?[slot as usize];
        let wgrad = self
            .ctx
            .read_buffer(&self.b.wgrad, self.packed.data.len())?;
        let d = self.model.spec.d();
        let touched = &self.uses.touched;
        let row_grad = self.ctx.read_buffer(&self.b.row_grad, touched.len() * d)?;
        let mut g = Gradients {
            dense: self
                .packed
                .unpack(&self.model.spec, &wgrad)
                .into_iter()
                .map(|(name, data)| (name, data.iter().map(|&x| x as f64).collect()))
                .collect(),
            rows: vec![BTreeMap::new(); self.model.spec.features.len()],
        };
        for (u, &row) in touched.iter().enumerate() {
            let (f, id) = self.row_owner(row);
            let grad = row_grad[u * d..(u + 1) * d].iter().map(|&x| x as f64);
            g.rows[f].insert(id, grad.collect());
        }
        Ok((loss as f64, g))
    }

    /// The feature and id of a global row.
    fn row_owner(&self, row: u32) -> (usize, u64) {
        let spec = &self.model.spec;
        for (f, placed) in self.layout.placement.iter().enumerate() {
            if let Some((_, base)) = placed {
                let rows = spec.features[f].rows() as u32;
                if row >= *base && row < base + rows {
                    return (f, (row - base) as u64);
                }
            }
        }
        unreachable!("every touched row belongs to a gathered feature")
    }

    /// The loss of every step since the last call, in order (reads the GPU's log back).
    pub fn losses(&mut self) -> Result<Vec<f32>> {
        self.drain_log()?;
        Ok(std::mem::take(&mut self.losses))
    }

    fn drain_log(&mut self) -> Result<()> {
        let n = self.steps_done - self.log_from;
        if n == 0 {
            return Ok(());
        }
        let log = self
            .ctx
            .read_buffer(&self.b.loss_log, LOG_CAPACITY as usize)
            .map_err(|e| {
                e.while_doing(format_args!(
                    "training steps {}..={}",
                    self.log_from + 1,
                    self.steps_done
                ))
            })?;
        for s in self.log_from..self.steps_done {
            self.losses.push(log[(s % LOG_CAPACITY) as usize]);
        }
        self.log_from = self.steps_done;
        Ok(())
    }

    /// The model as trained so far (waits for the GPU).
    pub fn model(&self) -> Result<Model> {
        let spec = &self.model.spec;
        let dense = self
            .ctx
            .read_buffer(&self.b.weights, self.packed.data.len())?;
        let page = self
            .ctx
            .read_buffer(&self.b.page, self.layout.total_rows as usize * spec.d())?;
        let mut model = self.model.clone();
        for (name, data) in self.packed.unpack(spec, &dense) {
            model.weights.get_mut(&name).expect("a spec tensor").data = data;
        }
        for (name, data) in state::unpack_page(spec, &self.layout, &page) {
            model.weights.get_mut(&name).expect("a spec tensor").data = data;
        }
        Ok(model)
    }

    /// The packed f32 master weights, as the kernels read them (waits for the GPU).
    pub fn packed_weights(&self) -> Result<Vec<f32>> {
        self.ctx
            .read_buffer(&self.b.weights, self.packed.data.len())
    }

    /// f16 training: the forward's f16 copy of the packed weights, two to a `u32` (waits for
    /// the GPU); `None` at f32.
    pub fn half_weights(&self) -> Result<Option<Vec<u32>>> {
        let Some(half) = &self.b.weights_half else {
            return Ok(None);
        };
        let words = self.packed.data.len().div_ceil(2);
        let floats = self.ctx.read_buffer(half, words)?;
        Ok(Some(bytemuck::cast_slice(&floats).to_vec()))
    }

    /// Adam's moments, AdaGrad's sums and the step count, to resume from (waits for the GPU).
    pub fn optimizer_state(&self) -> Result<OptimizerState> {
        let spec = &self.model.spec;
        let len = self.packed.data.len();
        let rows = self.layout.total_rows as usize * spec.d();
        Ok(OptimizerState::from_device_layout(
            spec,
            &self.packed,
            &self.layout,
            self.steps_done,
            &self.ctx.read_buffer(&self.b.m, len)?,
            &self.ctx.read_buffer(&self.b.v, len)?,
            &self.ctx.read_buffer(&self.b.sum_sq, rows)?,
        ))
    }

    /// The probabilities the last step's forward pass gave its batch (`rows × T`), from the
    /// weights before that step's update: score-then-train, progressive validation (waits for
    /// the GPU).
    pub fn last_scores(&self) -> Result<Vec<f32>> {
        let n = self.last_rows * self.model.spec.n_tasks();
        let offset = self.plan.out.offset as u64 * 4;
        let staging = self.ctx.staging_buffer("scores readback", (n * 4) as u64);
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&self.b.act, offset, &staging, 0, (n * 4) as u64);
        self.ctx.submit_and_read(encoder, &staging, n)
    }

    /// The global row of feature `feature`'s (spec index) table row 0 in the trainer's page,
    /// or `None` for a feature no kernel reads.
    pub(crate) fn table_base(&self, feature: usize) -> Option<u32> {
        self.layout.placement[feature].map(|(_, base)| base)
    }

    /// Global rows `rows`' values and AdaGrad sums, `rows.len() × d` each (waits for the GPU).
    pub(crate) fn read_rows(&self, rows: &[u32]) -> Result<(Vec<f32>, Vec<f32>)> {
        if rows.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let d = self.model.spec.d();
        let row_bytes = (d * 4) as u64;
        let len = rows.len() * d;
        let staging = self.ctx.staging_buffer("row readback", 2 * len as u64 * 4);
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        for (k, &r) in rows.iter().enumerate() {
            let (from, to) = (r as u64 * row_bytes, k as u64 * row_bytes);
            encoder.copy_buffer_to_buffer(&self.b.page, from, &staging, to, row_bytes);
            let sums_at = len as u64 * 4 + to;
            encoder.copy_buffer_to_buffer(&self.b.sum_sq, from, &staging, sums_at, row_bytes);
        }
        let mut both = self.ctx.submit_and_read(encoder, &staging, 2 * len)?;
        let sums = both.split_off(len);
        Ok((both, sums))
    }

    /// Writes global rows `rows`' values and AdaGrad sums (`rows.len() × d` each); the next
    /// step reads them.
    pub(crate) fn write_rows(&self, rows: &[u32], values: &[f32], sums: &[f32]) {
        let d = self.model.spec.d();
        for (k, &r) in rows.iter().enumerate() {
            let at = r as u64 * (d * 4) as u64;
            let (v, s) = (&values[k * d..][..d], &sums[k * d..][..d]);
            self.ctx
                .queue
                .write_buffer(&self.b.page, at, bytemuck::cast_slice(v));
            self.ctx
                .queue
                .write_buffer(&self.b.sum_sq, at, bytemuck::cast_slice(s));
        }
    }

    /// Checks and uploads a batch, its labels and its row uses; returns its rows.
    fn upload(&mut self, batch: &Batch, labels: &[f32]) -> Result<u32> {
        let spec = &self.model.spec;
        let rows = batch.len();
        if rows == 0 || rows > self.options.batch_size {
            return Err(Error::Batch(format!(
                "a training batch has 1 to {} samples, found {rows}",
                self.options.batch_size
            )));
        }
        batch.validate(spec, "batch", 1)?;
        let t = spec.n_tasks();
        if labels.len() != rows * t {
            return Err(Error::Batch(format!(
                "expected {} labels ({rows} samples × {t} tasks), found {}",
                rows * t,
                labels.len()
            )));
        }
        if let Some(i) = labels.iter().position(|y| !(0.0..=1.0).contains(y)) {
            return Err(Error::Batch(format!(
                "row {}, task '{}': a label is between 0 and 1, found {}",
                i / t + 1,
                spec.tasks[i % t],
                labels[i]
            )));
        }
        let mut keys = Vec::new();
        self.layout.encode(
            batch,
            0..rows,
            &mut self.host_ids,
            &mut self.host_dense,
            &mut keys,
        );
        self.uses.build(spec, &self.layout, batch, 0..rows);
        let queue = &self.ctx.queue;
        let b = &self.b;
        queue.write_buffer(
            &b.batch,
            0,
            bytemuck::bytes_of(&BatchParams {
                rows: rows as u32,
                _pad: [0; 3],
            }),
        );
        let write = |buffer: &wgpu::Buffer, bytes: &[u8]| {
            if !bytes.is_empty() {
                queue.write_buffer(buffer, 0, bytes);
            }
        };
        write(&b.ids, bytemuck::cast_slice(&self.host_ids));
        write(&b.dense, bytemuck::cast_slice(&self.host_dense));
        write(&b.labels, bytemuck::cast_slice(labels));
        write(&b.starts, bytemuck::cast_slice(&self.uses.starts));
        write(&b.uses, bytemuck::cast_slice(&self.uses.uses));
        write(&b.touched, bytemuck::cast_slice(&self.uses.touched));
        queue.write_buffer(&b.row_params, 0, bytemuck::bytes_of(&self.row_params()));
        Ok(rows as u32)
    }

    /// The dispatches of a step that computes gradients, in order: the forward pass, the loss,
    /// and the backward pass in reverse plan order.
    fn gradient_dispatches(&self) -> Vec<Dispatch> {
        let mut out: Vec<Dispatch> = (0..self.plan.steps.len()).map(Dispatch::Forward).collect();
        out.push(Dispatch::Loss);
        for (i, back) in self.backward.iter().enumerate().rev() {
            match back {
                Backward::Linear { input, .. } => {
                    if input.is_some() {
                        out.push(Dispatch::InputGrad(i));
                    }
                    out.push(Dispatch::WeightGrad(i));
                }
                Backward::Mix(..) => out.push(Dispatch::MixBackward(i)),
                Backward::Gather => out.push(Dispatch::RowGrad),
            }
        }
        out
    }

    /// The optimizers' dispatches after the gradients: Adam, the f16 copy of the weights (f16
    /// training), AdaGrad.
    fn optimizer_dispatches(&self) -> Vec<Dispatch> {
        let mut out = vec![Dispatch::Adam];
        if self.to_half_group.is_some() {
            out.push(Dispatch::ToHalf);
        }
        out.push(Dispatch::AdaGrad);
        out
    }

    /// Whether the backward's products run on tensor cores (f16 where the device has them).
    pub fn backward_on_tensor_cores(&self) -> bool {
        self.coop_backward
    }

    /// The precision of the forward pass's matrix products.
    pub fn precision(&self) -> linear::Precision {
        self.options.precision
    }

    /// The linear kernel variant the forward pass of a batch of `rows` runs on.
    pub fn linear_variant(&self, rows: usize) -> linear::Variant {
        let rows = rows.min(self.options.batch_size) as u32;
        self.ctx.linear().variant_for(self.options.precision, rows)
    }

    /// What a dispatch computes, for profiles.
    fn label(&self, dispatch: &Dispatch) -> String {
        let step = |i: usize| self.plan.steps[i].label();
        match *dispatch {
            Dispatch::Forward(i) => step(i).to_string(),
            Dispatch::Loss => "loss".into(),
            Dispatch::InputGrad(i) => format!("{} input_grad", step(i)),
            Dispatch::WeightGrad(i) => format!("{} weight_grad", step(i)),
            Dispatch::MixBackward(i) => format!("{} backward", step(i)),
            Dispatch::RowGrad => "gather backward".into(),
            Dispatch::Adam => "adam".into(),
            Dispatch::ToHalf => "adam f16 copy".into(),
            Dispatch::AdaGrad => "adagrad".into(),
        }
    }

    /// Records one dispatch of a batch of `rows`.
    fn record(&self, pass: &mut wgpu::ComputePass, dispatch: &Dispatch, rows: u32) {
        let ctx = &self.ctx;
        match *dispatch {
            Dispatch::Forward(i) => {
                self.forward.record(ctx, pass, &self.plan, i, rows);
            }
            Dispatch::Loss => {
                let t = self.model.spec.n_tasks() as u32;
                ctx.loss().dispatch(pass, &self.loss_groups, rows, t);
            }
            Dispatch::InputGrad(i) => match &self.backward[i] {
                Backward::Linear {
                    input: Some((bg, tiles)),
                    ..
                } => ctx
                    .linear_backward()
                    .input_grad(pass, bg, *tiles, rows, self.coop_backward),
                _ => unreachable!("listed for linear steps whose input gets a gradient"),
            },
            Dispatch::WeightGrad(i) => match &self.backward[i] {
                Backward::Linear { weight, .. } => {
                    ctx.linear_backward()
                        .weight_grad(pass, &weight.0, weight.1, self.coop_backward)
                }
                _ => unreachable!("listed for linear steps"),
            },
            Dispatch::MixBackward(i) => match &self.backward[i] {
                Backward::Mix(bgs, params) => {
                    ctx.mmoe_mix().dispatch_backward(pass, bgs, params, rows)
                }
                _ => unreachable!("listed for mix steps"),
            },
            Dispatch::RowGrad => {
                let params = self.row_params();
                if params.rows > 0 {
                    ctx.gather_backward()
                        .dispatch(pass, &self.row_grad_group, &params);
                }
            }
            Dispatch::Adam => {
                let count = self.packed.data.len() as u32;
                ctx.optimizer().adam(pass, &self.adam_group, count);
            }
            Dispatch::ToHalf => {
                if let Some(bg) = &self.to_half_group {
                    ctx.optimizer()
                        .to_half(pass, bg, self.packed.data.len() as u32);
                }
            }
            Dispatch::AdaGrad => {
                let params = self.adagrad_params();
                if params.rows > 0 {
                    ctx.optimizer()
                        .adagrad_rows(pass, &self.adagrad_group, &params);
                }
            }
        }
    }

    /// Records the forward pass, the loss, and the backward pass into one pass.
    fn record_gradients(&self, pass: &mut wgpu::ComputePass, rows: u32) {
        for dispatch in self.gradient_dispatches() {
            self.record(pass, &dispatch, rows);
        }
    }

    /// Runs a training step on `batch` with each dispatch in its own pass between two
    /// timestamps, and returns each dispatch's label and GPU nanoseconds; `None` (and no step)
    /// when the adapter has no timestamp queries. It updates the weights as [`Trainer::step`].
    pub fn profile(&mut self, batch: &Batch, labels: &[f32]) -> Result<Option<Vec<(String, f64)>>> {
        if !self.ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Ok(None);
        }
        self.prepare_step(batch, labels)?;
        let rows = batch.len() as u32;
        let mut dispatches = self.gradient_dispatches();
        dispatches.extend(self.optimizer_dispatches());
        let count = 2 * dispatches.len() as u32;
        let set = self.ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("training timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let bytes = count as u64 * 8;
        let resolve = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamp resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = self.ctx.staging_buffer("timestamp readback", bytes);
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        for (i, dispatch) in dispatches.iter().enumerate() {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &set,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                }),
            });
            self.record(&mut pass, dispatch, rows);
        }
        encoder.resolve_query_set(&set, 0..count, &resolve, 0);
        encoder.copy_buffer_to_buffer(&resolve, 0, &staging, 0, bytes);
        let submission = self.ctx.queue.submit([encoder.finish()]);
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&self.ctx.read_mapped(
            &staging,
            bytes,
            Some(submission),
        )?);
        let period = self.ctx.queue.get_timestamp_period() as f64;
        Ok(Some(
            dispatches
                .iter()
                .zip(ticks.chunks_exact(2))
                .map(|(d, t)| (self.label(d), t[1].saturating_sub(t[0]) as f64 * period))
                .collect(),
        ))
    }
}

/// One dispatch of a training step (indices are steps of the plan).
enum Dispatch {
    Forward(usize),
    Loss,
    InputGrad(usize),
    WeightGrad(usize),
    MixBackward(usize),
    RowGrad,
    Adam,
    ToHalf,
    AdaGrad,
}
