//! The embedding-cache lookup (`shaders/resolve.wgsl`): raw 64-bit ids of hashed features to
//! global rows, by probing the GPU-resident hash table the host mirrors in
//! [`crate::gpu::resolve::table`]. Its CPU reference is [`reference::resolve`].

pub mod reference;
pub mod table;

use crate::gpu::{compute_pipeline, dispatch_flat, whole_buffers};

/// `shaders/prelude.wgsl`, then `shaders/resolve.wgsl`.
pub const SOURCE: &str = concat!(
    include_str!("../../../shaders/prelude.wgsl"),
    include_str!("../../../shaders/resolve.wgsl")
);
/// `resolved[i]` of an id the table does not hold.
pub const MISS: u32 = u32::MAX;
/// The slot of an id cached as unknown to the store: it reads its feature's default row, and
/// is reported as itself (not a miss), so the store is not asked again.
pub const UNKNOWN: u32 = u32::MAX - 1;

/// WGSL's `Params`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ResolveParams {
    /// Keys to resolve.
    pub n_keys: u32,
    /// Table entries − 1 (entries are a power of two).
    pub mask: u32,
    /// Global row of cache slot 0.
    pub cache_base: u32,
    /// Padding to a 16-byte uniform.
    pub _pad: u32,
}

/// One id to resolve: (tag = feature index + 1, id low word, id high word, position in the
/// batch's id buffer).
pub type KeyGpu = [u32; 4];

/// Packs feature `f`'s id and the slot of the id buffer it resolves into.
pub fn key_gpu(feature: usize, id: u64, position: u32) -> KeyGpu {
    [feature as u32 + 1, id as u32, (id >> 32) as u32, position]
}

/// The compiled kernel.
pub struct ResolveKernel {
    pipeline: wgpu::ComputePipeline,
}

impl ResolveKernel {
    /// Compiles the kernel.
    pub fn new(device: &wgpu::Device) -> Self {
        Self {
            pipeline: compute_pipeline(device, "resolve", SOURCE),
        }
    }

    /// Binds: params, keys, the hash table, per-feature default rows, the batch's id buffer,
    /// and the per-key result.
    pub fn bind_group(
        &self,
        device: &wgpu::Device,
        buffers: [&wgpu::Buffer; 6],
    ) -> wgpu::BindGroup {
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("resolve"),
            layout: &self.pipeline.get_bind_group_layout(0),
            entries: &whole_buffers(&buffers),
        })
    }

    /// Records the dispatch: one thread per key.
    pub fn dispatch(&self, pass: &mut wgpu::ComputePass, bind_group: &wgpu::BindGroup, keys: u32) {
        dispatch_flat(pass, &self.pipeline, bind_group, keys as u64);
    }
}
