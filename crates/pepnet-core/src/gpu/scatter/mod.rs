//! Scatter of fixed-width records (`shaders/scatter.wgsl`): how the embedding cache applies
//! changed hash-table entries and embedding rows in one dispatch each. Its CPU reference is
//! [`reference::scatter`].

pub mod reference;

use crate::gpu::{compute_pipeline, dispatch_flat, whole_buffers};

/// `shaders/prelude.wgsl`, then `shaders/scatter.wgsl`.
pub const SOURCE: &str = concat!(
    include_str!("../../../shaders/prelude.wgsl"),
    include_str!("../../../shaders/scatter.wgsl")
);

/// WGSL's `Params`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ScatterParams {
    /// Records to copy.
    pub count: u32,
    /// 32-bit words per record.
    pub width: u32,
    /// Padding to a 16-byte uniform.
    pub _pad: [u32; 2],
}

/// The compiled kernel.
pub struct ScatterKernel {
    pipeline: wgpu::ComputePipeline,
}

impl ScatterKernel {
    /// Compiles the kernel.
    pub fn new(device: &wgpu::Device) -> Self {
        Self {
            pipeline: compute_pipeline(device, "scatter", SOURCE),
        }
    }

    /// Binds: params, destination record indices, source records, destination buffer.
    pub fn bind_group(
        &self,
        device: &wgpu::Device,
        params: &wgpu::Buffer,
        index: &wgpu::Buffer,
        src: &wgpu::Buffer,
        dst: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("scatter"),
            layout: &self.pipeline.get_bind_group_layout(0),
            entries: &whole_buffers(&[params, index, src, dst]),
        })
    }

    /// Records the dispatch: one thread per word.
    pub fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass,
        bind_group: &wgpu::BindGroup,
        params: &ScatterParams,
    ) {
        let threads = params.count as u64 * params.width as u64;
        dispatch_flat(pass, &self.pipeline, bind_group, threads);
    }
}
