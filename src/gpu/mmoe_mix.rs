//! The MMoE mix (`shaders/mmoe_mix.wgsl`): softmax over each task's gate logits fused with the
//! weighted sum of the experts' outputs. Its CPU reference is
//! [`crate::reference::kernels::mmoe_mix`].

use super::{compute_pipeline, dispatch_flat, whole_buffers};

pub const SOURCE: &str = include_str!("../../shaders/mmoe_mix.wgsl");
const WORKGROUP: u64 = 256;

/// WGSL's `Params`: K experts of output `width`, T tasks, and three views (offset, stride) of
/// the activation buffer: the experts' outputs (expert k at column k·width), the logits (task
/// t at column t·K) and the mixed output (task t at column t·width).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MixParams {
    pub experts: u32,
    pub tasks: u32,
    pub width: u32,
    pub x_off: u32,
    pub x_stride: u32,
    pub logit_off: u32,
    pub logit_stride: u32,
    pub y_off: u32,
    pub y_stride: u32,
    pub _pad: [u32; 3],
}

/// The compiled kernel.
pub struct MmoeMixKernel {
    pipeline: wgpu::ComputePipeline,
}

impl MmoeMixKernel {
    pub fn new(device: &wgpu::Device) -> Self {
        Self {
            pipeline: compute_pipeline(device, "mmoe_mix", SOURCE),
        }
    }

    /// Binds: params, batch size, the activation buffer.
    pub fn bind_group(
        &self,
        device: &wgpu::Device,
        params: &wgpu::Buffer,
        batch: &wgpu::Buffer,
        act: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("mmoe_mix"),
            layout: &self.pipeline.get_bind_group_layout(0),
            entries: &whole_buffers(&[params, batch, act]),
        })
    }

    /// Records the dispatch: one thread per (sample, task, column).
    pub fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass,
        bind_group: &wgpu::BindGroup,
        params: &MixParams,
        rows: u32,
    ) {
        let threads = rows as u64 * params.tasks as u64 * params.width as u64;
        dispatch_flat(pass, &self.pipeline, bind_group, threads, WORKGROUP);
    }
}
