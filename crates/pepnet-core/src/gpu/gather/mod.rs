//! The fused embedding gather (`shaders/gather.wgsl`): its pipeline, the structs of its feature
//! table and parameters, and how embedding rows are stored (f32 or f16 words). How a model's
//! features, tables and batches map onto it is planned in [`crate::plan::gather`]. Its CPU
//! reference is [`reference::gather`].

pub mod backward;
pub mod layout;
pub mod reference;
pub mod row_uses;

use crate::gpu::act::{ActStorage, ByStorage};
use crate::gpu::linear::Precision;
use crate::gpu::{compute_pipeline, dispatch_flat, whole_buffers};

/// `shaders/gather.wgsl`, compiled after an activation storage's prelude.
pub const BODY: &str = include_str!("../../../shaders/gather.wgsl");

/// The kernel's source over an activation storage.
pub fn source(storage: ActStorage) -> String {
    storage.source(BODY)
}

/// Storage bindings the kernel has for embedding pages.
pub const MAX_PAGES: usize = 4;
/// Places one feature's vector can be written to.
pub const MAX_DESTINATIONS: usize = 3;
/// An unused multi-hot slot.
pub const NO_ROW: u32 = u32::MAX;

/// WGSL's `Feature`, 80 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FeatureGpu {
    /// 0 sparse, 1 multi-hot, 2 dense (WGSL's `KIND_*`).
    pub kind: u32,
    /// Sparse, multi-hot: the first of the feature's slots in a sample's ids.
    pub first_slot: u32,
    /// 1 for sparse, `max_len` for multi-hot.
    pub n_slots: u32,
    /// Multi-hot: 1 for mean pooling, 0 for sum.
    pub mean: u32,
    /// Dense: index of the feature's value in a sample's dense values.
    pub dense_col: u32,
    /// Dense: global row of the feature's vector v.
    pub dense_row: u32,
    /// Places the feature's vector is written to (at most [`MAX_DESTINATIONS`]).
    pub n_destinations: u32,
    /// 1 for a hashed feature, whose ids the resolve kernel turns into rows (the gather reads
    /// rows alike either way).
    pub hashed: u32,
    /// (offset, stride, 0, 0) of each destination view.
    pub destinations: [[u32; 4]; MAX_DESTINATIONS],
}

/// WGSL's `Params`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GatherParams {
    /// Entries of the feature table.
    pub n_features: u32,
    /// Embedding width.
    pub d: u32,
    /// Ids per sample.
    pub slots: u32,
    /// Dense values per sample.
    pub n_dense: u32,
    /// Rows of one embedding page.
    pub rows_per_page: u32,
    /// Words of one stored row: d (f32 rows) or ceil(d / 2) (f16 rows).
    pub row_words: u32,
    /// 1: rows are stored as f16.
    pub half: u32,
    /// Padding to a multiple of 16 bytes.
    pub _pad: u32,
}

/// Words of one stored row of `d` values at `precision`.
pub fn row_words(d: usize, precision: Precision) -> u32 {
    match precision {
        Precision::F32 => d as u32,
        Precision::F16 => d.div_ceil(2) as u32,
    }
}

/// One embedding row as stored at `precision`: f32 bits, or f16 pairs (the last padded with 0).
pub fn row_to_words(row: &[f32], precision: Precision) -> Vec<u32> {
    match precision {
        Precision::F32 => bytemuck::cast_slice(row).to_vec(),
        Precision::F16 => crate::gpu::linear::pack_half(row),
    }
}

/// What the gather binds, in binding order.
#[derive(Clone, Copy)]
pub struct Bindings<'a> {
    /// Its [`GatherParams`] (a uniform).
    pub params: &'a wgpu::Buffer,
    /// The batch size (a uniform).
    pub batch: &'a wgpu::Buffer,
    /// The feature table of [`crate::gpu::gather::layout::GatherLayout`].
    pub features: &'a wgpu::Buffer,
    /// The batch's ids and dense values, as the layout encodes them.
    pub ids: &'a wgpu::Buffer,
    /// The batch's dense values, `n_dense` f32s per sample.
    pub dense: &'a wgpu::Buffer,
    /// The activation buffer and its storage.
    pub act: (&'a wgpu::Buffer, ActStorage),
    /// Exactly [`MAX_PAGES`] embedding pages (repeat a page to fill unused bindings).
    pub pages: [&'a wgpu::Buffer; MAX_PAGES],
}

/// The compiled kernel, per activation storage.
pub struct GatherKernel {
    pipelines: ByStorage<wgpu::ComputePipeline>,
}

impl GatherKernel {
    /// Compiles the kernel over f32 activations (the f16 build follows on first use).
    pub fn new(device: &wgpu::Device) -> Self {
        Self {
            pipelines: ByStorage::new(Self::build(device, ActStorage::F32)),
        }
    }

    fn build(device: &wgpu::Device, storage: ActStorage) -> wgpu::ComputePipeline {
        compute_pipeline(device, "gather", &source(storage))
    }

    /// The bind group of `bindings`; compiles the kernel over their activations' storage if
    /// need be.
    pub fn bind_group(&self, device: &wgpu::Device, bindings: Bindings) -> wgpu::BindGroup {
        let Bindings {
            params,
            batch,
            features,
            ids,
            dense,
            act: (act, storage),
            pages,
        } = bindings;
        let pipeline = self
            .pipelines
            .get_or_build(storage, || Self::build(device, storage));
        let mut buffers = vec![params, batch, features, ids, dense, act];
        buffers.extend(pages);
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("gather"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &whole_buffers(&buffers),
        })
    }

    /// Records the dispatch over an activation buffer of `storage` (that of the bind group):
    /// one thread per (sample, feature, element).
    pub fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass,
        bind_group: &wgpu::BindGroup,
        params: &GatherParams,
        rows: u32,
        storage: ActStorage,
    ) {
        let threads = rows as u64 * params.n_features as u64 * params.d as u64;
        let pipeline = self.pipelines.built(storage);
        dispatch_flat(pass, pipeline, bind_group, threads);
    }
}
