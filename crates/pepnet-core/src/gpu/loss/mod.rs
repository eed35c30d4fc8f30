//! The multi-task loss (`shaders/loss.wgsl`): the output layer's gradient from the
//! probabilities and labels, and the batch's loss appended to a log. Its f64 reference is
//! written out in its test (`tests/backward_kernels.rs`), and [`crate::grad`] checks it whole.

pub mod reference;

use crate::gpu::{bind_buffers, dispatch_flat, entry_pipelines, whole_buffers};

/// `shaders/prelude.wgsl`, then `shaders/loss.wgsl`.
pub const SOURCE: &str = concat!(
    include_str!("../../../shaders/prelude.wgsl"),
    include_str!("../../../shaders/loss.wgsl")
);

/// WGSL's `Params`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LossParams {
    /// Tasks T.
    pub tasks: u32,
    /// Offset of the `[rows, T]` probabilities in the activation buffer.
    pub out_off: u32,
    /// Where this batch's loss goes in the log.
    pub log_slot: u32,
    /// Padding to a 16-byte uniform.
    pub _pad: u32,
}

/// The compiled kernel's two entry points.
pub struct LossKernel {
    bce: wgpu::ComputePipeline,
    sum: wgpu::ComputePipeline,
}

impl LossKernel {
    /// Compiles both entry points.
    pub fn new(device: &wgpu::Device) -> Self {
        let mut p = entry_pipelines(device, "loss", SOURCE, &["bce", "sum"]);
        let sum = p.pop().expect("two pipelines");
        let bce = p.pop().expect("two pipelines");
        Self { bce, sum }
    }

    /// Binds, for both entry points: params, batch size, activations, labels, task weights,
    /// gradients, the per-term scratch and the loss log.
    pub fn bind_groups(
        &self,
        device: &wgpu::Device,
        buffers: [&wgpu::Buffer; 8],
    ) -> (wgpu::BindGroup, wgpu::BindGroup) {
        let bce = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("bce"),
            layout: &self.bce.get_bind_group_layout(0),
            entries: &whole_buffers(&buffers[..7]),
        });
        let sum_bound = [0, 1, 6, 7].map(|i| (i as u32, buffers[i]));
        let sum = bind_buffers(device, &self.sum, "loss sum", &sum_bound);
        (bce, sum)
    }

    /// Records both steps: the gradient and terms, one thread per (sample, task), then the sum.
    pub fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass,
        bind_groups: &(wgpu::BindGroup, wgpu::BindGroup),
        rows: u32,
        tasks: u32,
    ) {
        dispatch_flat(pass, &self.bce, &bind_groups.0, rows as u64 * tasks as u64);
        pass.set_pipeline(&self.sum);
        pass.set_bind_group(0, &bind_groups.1, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }
}
