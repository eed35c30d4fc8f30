//! The MMoE mix (`shaders/mmoe_mix.wgsl`): softmax over each task's gate logits fused with the
//! weighted sum of the experts' outputs, and its backward. Its CPU references are
//! [`reference::mmoe_mix`] and [`reference::mmoe_mix_backward`].

pub mod reference;

use crate::gpu::act::{ActStorage, ByStorage};
use crate::gpu::{dispatch_flat, entry_pipelines, whole_buffers};

/// `shaders/mmoe_mix.wgsl`, compiled after an activation storage's prelude.
pub const BODY: &str = include_str!("../../../shaders/mmoe_mix.wgsl");

/// The kernel's source over an activation storage.
pub fn source(storage: ActStorage) -> String {
    storage.source(BODY)
}

/// WGSL's `Params`: K experts of output `width`, T tasks, and three views (offset, stride) of
/// the activation buffer: the experts' outputs (expert k at column k·width), the logits (task
/// t at column t·K) and the mixed output (task t at column t·width).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MixParams {
    /// Experts K.
    pub experts: u32,
    /// Tasks T.
    pub tasks: u32,
    /// Output width of an expert (and of each task's mix).
    pub width: u32,
    /// Offset of the experts' outputs, `[rows, K·width]`.
    pub x_off: u32,
    /// Row stride of the experts' outputs.
    pub x_stride: u32,
    /// Offset of the gate logits, `[rows, T·K]`.
    pub logit_off: u32,
    /// Row stride of the gate logits.
    pub logit_stride: u32,
    /// Offset of the mixed output, `[rows, T·width]`.
    pub y_off: u32,
    /// Row stride of the mixed output.
    pub y_stride: u32,
    /// Padding to a multiple of 16 bytes.
    pub _pad: [u32; 3],
}

/// The compiled kernel: the forward mix (per activation storage) and the backward's two entry
/// points (training stores f32).
pub struct MmoeMixKernel {
    pipelines: ByStorage<wgpu::ComputePipeline>,
    backward_experts: wgpu::ComputePipeline,
    backward_logits: wgpu::ComputePipeline,
}

impl MmoeMixKernel {
    /// Compiles the forward over f32 activations and the backward's entry points (the f16
    /// forward follows on first use).
    pub fn new(device: &wgpu::Device) -> Self {
        let mut p = entry_pipelines(
            device,
            "mmoe_mix",
            &source(ActStorage::F32),
            &["main", "backward_experts", "backward_logits"],
        );
        let backward_logits = p.pop().expect("three pipelines");
        let backward_experts = p.pop().expect("three pipelines");
        let pipeline = p.pop().expect("three pipelines");
        Self {
            pipelines: ByStorage::new(pipeline),
            backward_experts,
            backward_logits,
        }
    }

    /// Binds the backward's two entry points: params, batch size, activations, gradients.
    pub fn backward_bind_groups(
        &self,
        device: &wgpu::Device,
        params: &wgpu::Buffer,
        batch: &wgpu::Buffer,
        act: &wgpu::Buffer,
        grad: &wgpu::Buffer,
    ) -> [wgpu::BindGroup; 2] {
        [&self.backward_experts, &self.backward_logits].map(|pipeline| {
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("mmoe_mix backward"),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &whole_buffers(&[params, batch, act, grad]),
            })
        })
    }

    /// Records the backward: the experts' output gradients, one thread per (sample, expert,
    /// column), then the logits', one per (sample, task, expert).
    pub fn dispatch_backward(
        &self,
        pass: &mut wgpu::ComputePass,
        bind_groups: &[wgpu::BindGroup; 2],
        params: &MixParams,
        rows: u32,
    ) {
        let r = rows as u64;
        let experts = r * params.experts as u64 * params.width as u64;
        dispatch_flat(pass, &self.backward_experts, &bind_groups[0], experts);
        let logits = r * params.tasks as u64 * params.experts as u64;
        dispatch_flat(pass, &self.backward_logits, &bind_groups[1], logits);
    }

    /// Binds: params, batch size, the activation buffer (of `storage`).
    pub fn bind_group(
        &self,
        device: &wgpu::Device,
        params: &wgpu::Buffer,
        batch: &wgpu::Buffer,
        act: (&wgpu::Buffer, ActStorage),
    ) -> wgpu::BindGroup {
        let (act, storage) = act;
        let pipeline = self.pipelines.get_or_build(storage, || {
            entry_pipelines(device, "mmoe_mix f16", &source(storage), &["main"]).remove(0)
        });
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("mmoe_mix"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &whole_buffers(&[params, batch, act]),
        })
    }

    /// Records the dispatch over an activation buffer of `storage` (that of the bind group):
    /// one thread per (sample, task, column).
    pub fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass,
        bind_group: &wgpu::BindGroup,
        params: &MixParams,
        rows: u32,
        storage: ActStorage,
    ) {
        let threads = rows as u64 * params.tasks as u64 * params.width as u64;
        let pipeline = self.pipelines.built(storage);
        dispatch_flat(pass, pipeline, bind_group, threads);
    }
}
