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

pub mod bench;
mod data;
mod state;

pub use data::{train, validate, EpochReport, LabelledData, TrainConfig, TrainReport, Validation};
pub use state::{OptimizerState, OPTIMIZER_FILE};

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::gpu::gather::{GatherLayout, MAX_PAGES};
use crate::gpu::gather_backward::{self, RowGradParams, RowUses};
use crate::gpu::linear::{self, SpanParams};
use crate::gpu::linear_backward;
use crate::gpu::loss::LossParams;
use crate::gpu::optimizer::{AdaGradConfig, AdaGradParams, AdamConfig, AdamParams};
use crate::gpu::{BatchParams, GpuContext};
use crate::grad::Gradients;
use crate::model::Model;
use crate::plan::{PackedWeights, Plan, Step};
use crate::spec::ModelSpec;

/// Batches the loss log holds before the trainer reads it back on its own.
const LOG_CAPACITY: u64 = 4096;

/// How a trainer is set up.
#[derive(Debug, Clone)]
pub struct TrainerOptions {
    /// The most samples of one step (the paper's 1024).
    pub batch_size: usize,
    pub adam: AdamConfig,
    pub adagrad: AdaGradConfig,
    /// Per task, the weight of its loss (1 each when `None`).
    pub task_weights: Option<Vec<f64>>,
}

impl Default for TrainerOptions {
    fn default() -> Self {
        Self {
            batch_size: 1024,
            adam: AdamConfig::default(),
            adagrad: AdaGradConfig::default(),
            task_weights: None,
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
    forward: Vec<wgpu::BindGroup>,
    /// Per step of the plan, the column tiles of a linear dispatch.
    forward_tiles: Vec<u32>,
    /// Per step of the plan, what its backward records.
    backward: Vec<Backward>,
    loss_groups: (wgpu::BindGroup, wgpu::BindGroup),
    row_grad_group: wgpu::BindGroup,
    adam_group: wgpu::BindGroup,
    adagrad_group: wgpu::BindGroup,
    uses: RowUses,
    host_ids: Vec<u32>,
    host_dense: Vec<f32>,
}

struct Buffers {
    weights: wgpu::Buffer,
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
    /// Keeps the per-step uniforms and tables alive.
    _keep: Vec<wgpu::Buffer>,
}

enum Backward {
    Linear {
        input: Option<(wgpu::BindGroup, u32)>,
        weight: (wgpu::BindGroup, u32),
    },
    Mix([wgpu::BindGroup; 2], crate::gpu::mmoe_mix::MixParams),
    Gather,
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
        if let Some(f) = spec.features.iter().find(|f| f.hashed) {
            return Err(Error::Gpu(format!(
                "feature '{}' is hashed: training hashed features (rows in a store) is not \
                 supported yet; train with a vocabulary",
                f.name
            )));
        }
        let t_count = spec.n_tasks();
        let task_weights: Vec<f32> = match &options.task_weights {
            Some(w) if w.len() != t_count => {
                return Err(Error::Batch(format!(
                    "{} task weights given for {t_count} tasks",
                    w.len()
                )))
            }
            Some(w) => w.iter().map(|&x| x as f32).collect(),
            None => vec![1.0; t_count],
        };
        if options.batch_size == 0 {
            return Err(Error::Batch("the batch size must be at least 1".into()));
        }
        let rows = options.batch_size;
        let per_sample = Plan::for_training(spec, &PackedWeights::new(spec, &model.weights), 1)
            .row_width as u64
            + t_count as u64;
        let max_binding = ctx.max_binding_bytes();
        if per_sample * 4 * rows as u64 > max_binding {
            return Err(Error::Gpu(format!(
                "a batch of {rows} needs {} bytes of activations, more than one storage binding \
                 ({max_binding} bytes) on this device; use a smaller batch",
                per_sample * 4 * rows as u64
            )));
        }
        let packed = PackedWeights::new(spec, &model.weights);
        let plan = Plan::for_training(spec, &packed, rows as u32);
        let layout = GatherLayout::new(spec, &plan.destinations, max_binding, 0)?;
        if layout.n_pages > 1 {
            return Err(Error::Gpu(format!(
                "the embedding tables ({} rows of d = {}) span {} storage bindings; training \
                 needs them in one ({max_binding} bytes) on this device",
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
        let max_uses = (rows * (slots + n_dense)).max(1);
        let d = spec.d();
        let act_len = rows * per_sample as usize;
        let b = Buffers {
            weights: ctx.storage_buffer("dense weights", &packed.data),
            page: ctx.storage_buffer("embedding rows", &page_data),
            m: ctx.storage_buffer("adam m", &m),
            v: ctx.storage_buffer("adam v", &v),
            sum_sq: ctx.storage_buffer("adagrad sums", &sum_sq),
            wgrad: ctx.zeroed_storage("weight gradients", packed.data.len() as u64 * 4),
            act: ctx.zeroed_storage("activations", act_len as u64 * 4),
            grad: ctx.zeroed_storage("gradients", act_len as u64 * 4),
            batch: ctx.uniform_buffer(
                "batch",
                &BatchParams {
                    rows: 0,
                    _pad: [0; 3],
                },
            ),
            ids: ctx.zeroed_storage("ids", (rows * slots) as u64 * 4),
            dense: ctx.zeroed_storage("dense", (rows * n_dense) as u64 * 4),
            labels: ctx.zeroed_storage("labels", (rows * t_count) as u64 * 4),
            loss_params: ctx.uniform_buffer(
                "loss params",
                &LossParams {
                    tasks: t_count as u32,
                    out_off: plan.out.offset,
                    log_slot: 0,
                    _pad: 0,
                },
            ),
            loss_log: ctx.zeroed_storage("loss log", LOG_CAPACITY * 4),
            starts: ctx.zeroed_storage("row starts", (max_uses + 1) as u64 * 4),
            uses: ctx.zeroed_storage("row uses", max_uses as u64 * 16),
            touched: ctx.zeroed_storage("touched rows", max_uses as u64 * 4),
            row_grad: ctx.zeroed_storage("row gradients", (max_uses * d) as u64 * 4),
            row_params: ctx.uniform_buffer(
                "row gradient params",
                &RowGradParams {
                    rows: 0,
                    d: d as u32,
                    _pad: [0; 2],
                },
            ),
            adam_params: ctx.uniform_buffer(
                "adam params",
                &AdamParams::new(&options.adam, packed.data.len() as u32, 1),
            ),
            adagrad_params: ctx.uniform_buffer(
                "adagrad params",
                &AdaGradParams {
                    rows: 0,
                    d: d as u32,
                    lr: options.adagrad.lr as f32,
                    eps: options.adagrad.eps as f32,
                },
            ),
            _keep: Vec::new(),
        };
        let mut keep = Vec::new();
        let device = &ctx.device;

        // The forward's tables, as the engine builds them; the backward's beside them.
        let mut table = Vec::new();
        let mut groups = Vec::new();
        let mut spans = Vec::new();
        for step in &plan.steps {
            if let Step::Linear { problems, .. } = step {
                let first = table.len() as u32;
                let (gpu, tiles) = linear::lay_out(problems);
                let (g, in_tiles) = linear_backward::input_groups(problems, first);
                let w_tiles: u32 = problems.iter().map(linear::weight_tiles).sum();
                let span = |first, count| SpanParams {
                    first,
                    count,
                    _pad: [0; 2],
                };
                spans.push(Some((
                    span(first, gpu.len() as u32),
                    tiles,
                    span(groups.len() as u32, g.len() as u32),
                    in_tiles,
                    w_tiles,
                )));
                table.extend(gpu);
                groups.extend(g);
            } else {
                spans.push(None);
            }
        }
        let problems = ctx.storage_buffer("linear problems", &table);
        let group_buf = ctx.storage_buffer("input groups", &groups);
        let features = ctx.storage_buffer("gather features", &layout.features);
        let gather_params = ctx.uniform_buffer("gather params", &layout.params);
        let grad_features = ctx.storage_buffer(
            "gather backward features",
            &gather_backward::feature_table(&layout, &plan.grad_sources),
        );
        let pages: [&wgpu::Buffer; MAX_PAGES] = [&b.page; MAX_PAGES];
        let mut forward = Vec::new();
        let mut backward = Vec::new();
        for (step, span) in plan.steps.iter().zip(&spans) {
            match (step, span) {
                (Step::Gather, _) => {
                    forward.push(ctx.gather.bind_group(
                        device,
                        &gather_params,
                        &b.batch,
                        &features,
                        &b.ids,
                        &b.dense,
                        &b.act,
                        pages,
                    ));
                    backward.push(Backward::Gather);
                }
                (Step::Linear { label, .. }, Some((fwd, _, back, in_tiles, w_tiles))) => {
                    let fwd_u = ctx.uniform_buffer(label, fwd);
                    let back_u = ctx.uniform_buffer(label, back);
                    forward.push(
                        ctx.linear
                            .bind_group(device, &fwd_u, &b.batch, &problems, &b.weights, &b.act),
                    );
                    let input = (*in_tiles > 0).then(|| {
                        let bg = ctx.linear_backward.input_bind_group(
                            device, &back_u, &b.batch, &problems, &b.weights, &b.act, &b.grad,
                            &group_buf,
                        );
                        (bg, *in_tiles)
                    });
                    let weight = ctx.linear_backward.weight_bind_group(
                        device, &fwd_u, &b.batch, &problems, &b.act, &b.grad, &b.wgrad,
                    );
                    backward.push(Backward::Linear {
                        input,
                        weight: (weight, *w_tiles),
                    });
                    keep.push(fwd_u);
                    keep.push(back_u);
                }
                (Step::MmoeMix(params), _) => {
                    let u = ctx.uniform_buffer("mmoe_mix", params);
                    forward.push(ctx.mmoe_mix.bind_group(device, &u, &b.batch, &b.act));
                    backward.push(Backward::Mix(
                        ctx.mmoe_mix
                            .backward_bind_groups(device, &u, &b.batch, &b.act, &b.grad),
                        *params,
                    ));
                    keep.push(u);
                }
                _ => unreachable!("training plans have no resolve step"),
            }
        }
        let task_w = ctx.storage_buffer("task weights", &task_weights);
        let terms = ctx.zeroed_storage("loss terms", (rows * t_count) as u64 * 4);
        let loss_groups = ctx.loss.bind_groups(
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
        let row_grad_group = ctx.gather_backward.bind_group(
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
            .optimizer
            .adam_bind_group(device, [&b.adam_params, &b.wgrad, &b.weights, &b.m, &b.v]);
        let adagrad_group = ctx.optimizer.adagrad_bind_group(
            device,
            [
                &b.adagrad_params,
                &b.touched,
                &b.row_grad,
                &b.page,
                &b.sum_sq,
            ],
        );
        keep.extend([
            problems,
            group_buf,
            features,
            gather_params,
            grad_features,
            task_w,
            terms,
        ]);
        let mut b = b;
        b._keep = keep;
        let forward_tiles = spans
            .iter()
            .map(|s| s.as_ref().map_or(0, |s| s.1))
            .collect();
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
            forward_tiles,
            backward,
            loss_groups,
            row_grad_group,
            adam_group,
            adagrad_group,
            uses: RowUses::default(),
            host_ids: Vec::new(),
            host_dense: Vec::new(),
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
        let rows = self.prepare_step(batch, labels)?;
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            self.record_gradients(&mut pass, rows);
            self.record(&mut pass, &Dispatch::Adam, rows);
            self.record(&mut pass, &Dispatch::AdaGrad, rows);
        }
        self.ctx.queue.submit([encoder.finish()]);
        Ok(())
    }

    /// Uploads a step's batch and sets its parameters (loss slot, Adam's step); returns its rows.
    fn prepare_step(&mut self, batch: &Batch, labels: &[f32]) -> Result<u32> {
        let rows = self.upload(batch, labels)?;
        if self.steps_done - self.log_from >= LOG_CAPACITY {
            self.drain_log()?;
        }
        self.steps_done += 1;
        let queue = &self.ctx.queue;
        let slot = ((self.steps_done - 1) % LOG_CAPACITY) as u32;
        queue.write_buffer(
            &self.b.loss_params,
            0,
            bytemuck::bytes_of(&LossParams {
                tasks: self.model.spec.n_tasks() as u32,
                out_off: self.plan.out.offset,
                log_slot: slot,
                _pad: 0,
            }),
        );
        let adam = AdamParams::new(
            &self.options.adam,
            self.packed.data.len() as u32,
            self.steps_done.min(i32::MAX as u64) as u32,
        );
        queue.write_buffer(&self.b.adam_params, 0, bytemuck::bytes_of(&adam));
        let touched = self.uses.touched.len() as u32;
        let adagrad = AdaGradParams {
            rows: touched,
            d: self.model.spec.d() as u32,
            lr: self.options.adagrad.lr as f32,
            eps: self.options.adagrad.eps as f32,
        };
        queue.write_buffer(&self.b.adagrad_params, 0, bytemuck::bytes_of(&adagrad));
        Ok(rows)
    }

    /// The loss and every parameter's gradient on `batch`, computed on the GPU, with no update:
    /// the trainer's gradients in [`crate::grad`]'s form, to check against it.
    pub fn gradients(&mut self, batch: &Batch, labels: &[f32]) -> Result<(f64, Gradients)> {
        let rows = self.upload(batch, labels)?;
        self.drain_log()?;
        let slot = (self.steps_done % LOG_CAPACITY) as u32;
        self.ctx.queue.write_buffer(
            &self.b.loss_params,
            0,
            bytemuck::bytes_of(&LossParams {
                tasks: self.model.spec.n_tasks() as u32,
                out_off: self.plan.out.offset,
                log_slot: slot,
                _pad: 0,
            }),
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
            .read_buffer(&self.b.loss_log, LOG_CAPACITY as usize)?;
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
                "row {}, task '{}': a label is 0 or 1, found {}",
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
        queue.write_buffer(
            &b.row_params,
            0,
            bytemuck::bytes_of(&RowGradParams {
                rows: self.uses.touched.len() as u32,
                d: spec.d() as u32,
                _pad: [0; 2],
            }),
        );
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
            Dispatch::AdaGrad => "adagrad".into(),
        }
    }

    /// Records one dispatch of a batch of `rows`.
    fn record(&self, pass: &mut wgpu::ComputePass, dispatch: &Dispatch, rows: u32) {
        let ctx = &self.ctx;
        let touched = self.uses.touched.len() as u32;
        let d = self.model.spec.d() as u32;
        match *dispatch {
            Dispatch::Forward(i) => {
                let bg = &self.forward[i];
                match &self.plan.steps[i] {
                    Step::Gather => ctx.gather.dispatch(pass, bg, &self.layout.params, rows),
                    Step::Linear { .. } => {
                        ctx.linear.dispatch(pass, bg, self.forward_tiles[i], rows)
                    }
                    Step::MmoeMix(params) => ctx.mmoe_mix.dispatch(pass, bg, params, rows),
                    Step::Resolve => unreachable!("training plans have no resolve step"),
                }
            }
            Dispatch::Loss => {
                let t = self.model.spec.n_tasks() as u32;
                ctx.loss.dispatch(pass, &self.loss_groups, rows, t);
            }
            Dispatch::InputGrad(i) => {
                if let Backward::Linear {
                    input: Some((bg, tiles)),
                    ..
                } = &self.backward[i]
                {
                    ctx.linear_backward.input_grad(pass, bg, *tiles, rows);
                }
            }
            Dispatch::WeightGrad(i) => {
                if let Backward::Linear { weight, .. } = &self.backward[i] {
                    ctx.linear_backward.weight_grad(pass, &weight.0, weight.1);
                }
            }
            Dispatch::MixBackward(i) => {
                if let Backward::Mix(bgs, params) = &self.backward[i] {
                    ctx.mmoe_mix.dispatch_backward(pass, bgs, params, rows);
                }
            }
            Dispatch::RowGrad => {
                let params = RowGradParams {
                    rows: touched,
                    d,
                    _pad: [0; 2],
                };
                if touched > 0 {
                    ctx.gather_backward
                        .dispatch(pass, &self.row_grad_group, &params);
                }
            }
            Dispatch::Adam => {
                let count = self.packed.data.len() as u32;
                ctx.optimizer.adam(pass, &self.adam_group, count);
            }
            Dispatch::AdaGrad => {
                let params = AdaGradParams {
                    rows: touched,
                    d,
                    lr: self.options.adagrad.lr as f32,
                    eps: self.options.adagrad.eps as f32,
                };
                if touched > 0 {
                    ctx.optimizer
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
        dispatches.extend([Dispatch::Adam, Dispatch::AdaGrad]);
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
    AdaGrad,
}
