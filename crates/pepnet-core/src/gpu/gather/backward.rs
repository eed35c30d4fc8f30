//! Backward of the gather (`shaders/gather_backward.wgsl`): the gradients of the embedding rows
//! a batch touched. The host lists each touched row's uses (sample, feature, weight) in a
//! deterministic order ([`crate::plan::row_uses`]); the kernel sums them. Its f64 reference is
//! [`super::reference::gather_backward`] (`tests/backward_kernels.rs`).

use bytemuck::Zeroable;

use crate::gpu::gather::layout::GatherLayout;
use crate::gpu::gather::MAX_DESTINATIONS;
use crate::gpu::linear::View;
use crate::gpu::{compute_pipeline, dispatch_flat, whole_buffers};

/// `shaders/prelude.wgsl`, then `shaders/gather_backward.wgsl`.
pub const SOURCE: &str = concat!(
    include_str!("../../../shaders/prelude.wgsl"),
    include_str!("../../../shaders/gather_backward.wgsl")
);
/// No scale view.
pub const NO_VIEW: u32 = u32::MAX;

/// WGSL's `Feature`: where a gathered feature's vector gradient is read.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FeatureGradGpu {
    /// Places the feature's vector was written to, each a gradient source.
    pub n_sources: u32,
    /// Padding: `sources` starts on 16 bytes.
    pub _pad: [u32; 3],
    /// (gradient offset, stride, scale offset or [`NO_VIEW`], scale stride) per place.
    pub sources: [[u32; 4]; MAX_DESTINATIONS],
}

/// WGSL's `Use`: one use of a row by a sample.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct UseGpu {
    /// The sample that used the row.
    pub sample: u32,
    /// Index of the feature in the gather's feature table.
    pub feature: u32,
    /// What the use contributes per unit of the feature's vector gradient: 1 for a sparse or
    /// summed multi-hot id, 1/count for a mean-pooled one, the value x for a dense feature.
    pub weight: f32,
    /// Padding to 16 bytes.
    pub _pad: u32,
}

/// WGSL's `Params`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RowGradParams {
    /// Touched rows.
    pub rows: u32,
    /// Embedding width.
    pub d: u32,
    /// Padding to a 16-byte uniform.
    pub _pad: [u32; 2],
}

/// The backward feature table, in the gather's feature order, from each spec feature's
/// gradient sources (see [`crate::plan::Plan::grad_sources`]).
pub fn feature_table(
    layout: &GatherLayout,
    sources: &[Vec<(View, Option<View>)>],
) -> Vec<FeatureGradGpu> {
    let mut table = vec![FeatureGradGpu::zeroed(); layout.features.len()];
    for (placed, src) in layout.placement.iter().zip(sources) {
        let Some((g, _)) = placed else { continue };
        let t = &mut table[*g];
        t.n_sources = src.len() as u32;
        for (slot, (grad, scale)) in t.sources.iter_mut().zip(src) {
            let (s_off, s_stride) = scale.map_or((NO_VIEW, 0), |v| (v.offset, v.stride));
            *slot = [grad.offset, grad.stride, s_off, s_stride];
        }
    }
    table
}

/// The compiled kernel.
pub struct GatherBackwardKernel {
    pipeline: wgpu::ComputePipeline,
}

impl GatherBackwardKernel {
    /// Compiles the kernel.
    pub fn new(device: &wgpu::Device) -> Self {
        Self {
            pipeline: compute_pipeline(device, "gather_backward", SOURCE),
        }
    }

    /// Binds: params, the backward feature table, row starts, uses, activations, gradients,
    /// and the row gradients out.
    pub fn bind_group(
        &self,
        device: &wgpu::Device,
        buffers: [&wgpu::Buffer; 7],
    ) -> wgpu::BindGroup {
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("gather_backward"),
            layout: &self.pipeline.get_bind_group_layout(0),
            entries: &whole_buffers(&buffers),
        })
    }

    /// Records the dispatch: one thread per (touched row, element).
    pub fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass,
        bind_group: &wgpu::BindGroup,
        params: &RowGradParams,
    ) {
        let threads = params.rows as u64 * params.d as u64;
        dispatch_flat(pass, &self.pipeline, bind_group, threads);
    }
}
