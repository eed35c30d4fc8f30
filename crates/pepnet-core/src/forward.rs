//! The forward plan on the GPU, for scoring and training alike: one bind group per step of the
//! plan over a set of buffers, made once, and the recording of a step at a batch's size and the
//! chosen precision. The engine builds one per workspace, the trainer one; neither binds or
//! dispatches the forward kernels itself. (The engine's resolve step, which looks hashed ids up
//! in its cache, is its own.)

use crate::gpu::act::ActStorage;
use crate::gpu::gather::{self, GatherParams, MAX_PAGES};
use crate::gpu::linear::{self, ActBinding, Precision, Variant};
use crate::gpu::GpuContext;
use crate::plan::{Plan, Step};

/// The buffers the forward kernels read and write.
pub struct ForwardBuffers<'a> {
    /// Per step of the plan: its linear span or MMoE mix parameters (`None` for others).
    pub step_uniforms: &'a [Option<wgpu::Buffer>],
    /// The gather's [`GatherParams`] (a uniform).
    pub gather_params: &'a wgpu::Buffer,
    /// The gather's feature table.
    pub features: &'a wgpu::Buffer,
    /// The embedding pages (a page repeated where the model has fewer).
    pub pages: [&'a wgpu::Buffer; MAX_PAGES],
    /// The linear problem table of every linear step.
    pub problems: &'a wgpu::Buffer,
    /// The packed weights, as f32.
    pub weights: &'a wgpu::Buffer,
    /// The weights as f16, for the f16 precision.
    pub weights_half: Option<&'a wgpu::Buffer>,
    /// The batch size (a uniform).
    pub batch: &'a wgpu::Buffer,
    /// The batch's ids as global embedding rows, `slots` per sample (hashed features' written
    /// by the resolve kernel).
    pub ids: &'a wgpu::Buffer,
    /// The batch's dense values.
    pub dense: &'a wgpu::Buffer,
    /// The activations, stored as the plan says (`Plan::act_storage`).
    pub act: &'a wgpu::Buffer,
    /// The probabilities, where the plan keeps them apart from `act`.
    pub scores: Option<&'a wgpu::Buffer>,
}

/// The plan's forward dispatches, bound once over a set of buffers.
pub struct ForwardPass {
    /// Per step: its bind group (`None` for the engine's resolve step).
    bind_groups: Vec<Option<wgpu::BindGroup>>,
    /// Per step: the column tiles of a linear dispatch.
    tiles: Vec<u32>,
    gather: GatherParams,
    precision: Precision,
    act_storage: ActStorage,
    /// The linear variant every batch runs on, whatever its rows (a batch-invariant engine);
    /// `None`: the variant that suits the rows.
    fixed_variant: Option<Variant>,
}

impl ForwardPass {
    /// Binds every forward step of `plan`; `tiles` are each linear step's column tiles.
    pub fn new(
        ctx: &GpuContext,
        plan: &Plan,
        tiles: Vec<u32>,
        gather: GatherParams,
        precision: Precision,
        b: &ForwardBuffers,
    ) -> Self {
        let device = &ctx.device;
        let act = (b.act, plan.act_storage);
        let uniform = |i: usize| {
            b.step_uniforms[i]
                .as_ref()
                .expect("linear and mix steps have a uniform")
        };
        let bind_groups = plan
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| match step {
                Step::Resolve => None,
                Step::Gather => Some(ctx.gather().bind_group(
                    device,
                    gather::Bindings {
                        params: b.gather_params,
                        batch: b.batch,
                        features: b.features,
                        ids: b.ids,
                        dense: b.dense,
                        act,
                        pages: b.pages,
                    },
                )),
                Step::Linear { .. } => Some(ctx.linear().bind_group(
                    device,
                    linear::Bindings {
                        span: uniform(i),
                        batch: b.batch,
                        problems: b.problems,
                        weights: b.weights,
                        act: ActBinding {
                            buffer: b.act,
                            storage: plan.act_storage,
                            scores: b.scores,
                        },
                        weights_half: b.weights_half,
                    },
                )),
                Step::MmoeMix(_) => {
                    Some(ctx.mmoe_mix().bind_group(device, uniform(i), b.batch, act))
                }
            })
            .collect();
        Self {
            bind_groups,
            tiles,
            gather,
            precision,
            act_storage: plan.act_storage,
            fixed_variant: None,
        }
    }

    /// Runs every linear step on `variant` whatever the batch's rows, so that a sample's
    /// scores never depend on what it is batched with.
    pub fn fix_variant(&mut self, variant: Variant) {
        self.fixed_variant = Some(variant);
    }

    /// Records step `i` of `plan` (not the resolve step) for a batch of `rows`; returns the
    /// linear kernel variant it ran, for a linear step.
    pub fn record(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass,
        plan: &Plan,
        i: usize,
        rows: u32,
    ) -> Option<Variant> {
        let bind_group = self.bind_groups[i]
            .as_ref()
            .expect("the resolve step is recorded by the engine");
        match &plan.steps[i] {
            Step::Resolve => unreachable!("the resolve step has no forward bind group"),
            Step::Gather => {
                ctx.gather()
                    .dispatch(pass, bind_group, &self.gather, rows, self.act_storage);
                None
            }
            Step::Linear { .. } => Some(match self.fixed_variant {
                Some(v) => {
                    ctx.linear().dispatch_variant(
                        pass,
                        bind_group,
                        self.tiles[i],
                        rows,
                        (v, self.act_storage),
                    );
                    v
                }
                None => ctx.linear().dispatch(
                    pass,
                    bind_group,
                    self.tiles[i],
                    rows,
                    (self.precision, self.act_storage),
                ),
            }),
            Step::MmoeMix(params) => {
                ctx.mmoe_mix()
                    .dispatch(pass, bind_group, params, rows, self.act_storage);
                None
            }
        }
    }
}
