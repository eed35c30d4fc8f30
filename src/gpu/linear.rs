//! The grouped, gated, fused linear kernel (`shaders/linear.wgsl`): its pipeline, its problem
//! descriptor, and its dispatch arithmetic. Its CPU reference is
//! [`crate::reference::kernels::linear_group`].

use super::whole_buffers;

/// `shaders/linear_common.wgsl` (the problem table and the loads it shares with the backward),
/// then `shaders/linear.wgsl`.
pub const SOURCE: &str = concat!(
    include_str!("../../shaders/linear_common.wgsl"),
    include_str!("../../shaders/linear.wgsl")
);

/// Rows of a workgroup tile of the batch variant (`main`).
pub const TILE_M: u32 = 64;
/// Rows of a workgroup tile of the small-batch variant (`main_small`).
pub const SMALL_TILE_M: u32 = 4;
/// Batches of at most this many rows use the small-batch variant. Measured on lavapipe with the
/// paper preset: a 4-row tile costs about 0.3 of a 64-row one, so up to 3 small tiles win;
/// a GPU may want another threshold (docs/performance.md).
pub const SMALL_MAX_ROWS: u32 = 12;
/// Output columns of a workgroup tile.
pub const TILE_N: u32 = 64;

/// What the epilogue applies after adding the bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Activation {
    None = 0,
    Relu = 1,
    /// γ · σ(z): a Gate NU's output.
    Gate = 2,
    Sigmoid = 3,
}

pub const FLAG_GATED: u32 = 1;
pub const FLAG_MULTIPLIED: u32 = 2;
/// Training: also store the activation before the multiplier to `keep`.
pub const FLAG_KEEP: u32 = 4;

/// A strided view of a matrix in the activation buffer: element `(m, c)` is at
/// `offset + m * stride + c` (in f32s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub offset: u32,
    pub stride: u32,
}

/// One problem: `Y = act(((A ⊙ G) · Wᵀ) + bias) ⊙ M`, with `W` `[n, k]` at `w_offset` (laid
/// out by [`pack_layer`]) and its bias at `bias_offset` in the weights buffer. When training,
/// `keep` receives `act(...)` before the product with M, which the backward pass needs.
/// Mirrors WGSL's `Problem` once laid out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearProblem {
    /// Columns of A that get a gradient in the backward pass: `k`, or fewer where a
    /// stop-gradient cuts the rest (the gates' inputs).
    pub grad_k: u32,
    pub a: View,
    pub gate: Option<View>,
    pub multiplier: Option<View>,
    pub keep: Option<View>,
    pub y: View,
    pub w_offset: u32,
    pub bias_offset: u32,
    pub n: u32,
    pub k: u32,
    pub activation: Activation,
    pub gamma: f32,
}

/// WGSL's `Problem`, 80 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ProblemGpu {
    pub a_off: u32,
    pub a_stride: u32,
    pub g_off: u32,
    pub g_stride: u32,
    pub m_off: u32,
    pub m_stride: u32,
    pub y_off: u32,
    pub y_stride: u32,
    pub w_off: u32,
    pub bias_off: u32,
    pub n: u32,
    pub k: u32,
    pub act: u32,
    pub flags: u32,
    pub gamma: f32,
    pub first_tile: u32,
    pub keep_off: u32,
    pub keep_stride: u32,
    /// The backward pass's numbering of `[TILE_N, TILE_N]` weight-gradient tiles.
    pub first_wtile: u32,
    pub _pad: u32,
}

/// WGSL's `Span`: which problems of the table one dispatch runs.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SpanParams {
    pub first: u32,
    pub count: u32,
    pub _pad: [u32; 2],
}

/// Weight-gradient tiles of a problem in the backward pass: `[TILE_N, TILE_N]` blocks of W.
pub fn weight_tiles(p: &LinearProblem) -> u32 {
    p.n.div_ceil(TILE_N) * p.k.div_ceil(TILE_N)
}

/// Lays a group of problems out for the GPU, numbering their column tiles (and weight-gradient
/// tiles) consecutively. Returns the descriptors and the number of column tiles (the dispatch's
/// x size).
pub fn lay_out(problems: &[LinearProblem]) -> (Vec<ProblemGpu>, u32) {
    assert!(
        problems.iter().all(|p| p.w_offset % 4 == 0),
        "weights are packed by pack_layer"
    );
    let mut tiles = 0;
    let mut wtiles = 0;
    let none = View {
        offset: 0,
        stride: 0,
    };
    let gpu = problems
        .iter()
        .map(|p| {
            let gate = p.gate.unwrap_or(none);
            let mult = p.multiplier.unwrap_or(none);
            let keep = p.keep.unwrap_or(none);
            let flags = if p.gate.is_some() { FLAG_GATED } else { 0 }
                | if p.multiplier.is_some() {
                    FLAG_MULTIPLIED
                } else {
                    0
                }
                | if p.keep.is_some() { FLAG_KEEP } else { 0 };
            let first_tile = tiles;
            tiles += p.n.div_ceil(TILE_N);
            let first_wtile = wtiles;
            wtiles += weight_tiles(p);
            ProblemGpu {
                a_off: p.a.offset,
                a_stride: p.a.stride,
                g_off: gate.offset,
                g_stride: gate.stride,
                m_off: mult.offset,
                m_stride: mult.stride,
                y_off: p.y.offset,
                y_stride: p.y.stride,
                w_off: p.w_offset,
                bias_off: p.bias_offset,
                n: p.n,
                k: p.k,
                act: p.activation as u32,
                flags,
                gamma: p.gamma,
                first_tile,
                keep_off: keep.offset,
                keep_stride: keep.stride,
                first_wtile,
                _pad: 0,
            }
        })
        .collect();
    (gpu, tiles)
}

/// Row stride of a packed weight matrix with `k` columns: rows are zero-padded to whole vec4s.
pub fn padded_k(k: u32) -> u32 {
    k.div_ceil(4) * 4
}

/// Appends a linear layer's weight (`[n, k]`, row-major) and bias to the weights buffer in the
/// layout the kernel reads: the weight on a vec4 boundary with rows padded by [`padded_k`], and
/// the buffer left a whole number of vec4s long.
/// Returns the weight's and the bias's offsets.
pub fn pack_layer(buffer: &mut Vec<f32>, weight: &[f32], bias: &[f32], k: u32) -> (u32, u32) {
    buffer.resize(buffer.len().next_multiple_of(4), 0.0);
    let w_offset = buffer.len() as u32;
    let (k, stride) = (k as usize, padded_k(k) as usize);
    for row in weight.chunks_exact(k) {
        buffer.extend_from_slice(row);
        buffer.resize(buffer.len() + stride - k, 0.0);
    }
    let bias_offset = buffer.len() as u32;
    buffer.extend_from_slice(bias);
    // Whole vec4s only: the kernel binds the buffer as array<vec4<f32>>, whose length rounds down.
    buffer.resize(buffer.len().next_multiple_of(4), 0.0);
    (w_offset, bias_offset)
}

/// The two entry points of `linear.wgsl`: same problems and bindings, different row tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// 64×64 tiles, 4×4 per thread.
    Batch,
    /// 4×64 tiles, one column of 4 rows per thread.
    Small,
}

impl Variant {
    /// The variant a batch of `rows` runs on.
    pub fn for_rows(rows: u32) -> Self {
        if rows <= SMALL_MAX_ROWS {
            Variant::Small
        } else {
            Variant::Batch
        }
    }

    fn tile_m(self) -> u32 {
        match self {
            Variant::Batch => TILE_M,
            Variant::Small => SMALL_TILE_M,
        }
    }
}

/// The compiled kernel: both variants, sharing one bind group layout so that one bind group
/// serves either.
pub struct LinearKernel {
    layout: wgpu::BindGroupLayout,
    batch: wgpu::ComputePipeline,
    small: wgpu::ComputePipeline,
}

impl LinearKernel {
    pub fn new(device: &wgpu::Device) -> Self {
        let entry = |binding: u32, ty: wgpu::BufferBindingType| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let storage = |read_only| wgpu::BufferBindingType::Storage { read_only };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("linear"),
            entries: &[
                entry(0, wgpu::BufferBindingType::Uniform),
                entry(1, wgpu::BufferBindingType::Uniform),
                entry(2, storage(true)),
                entry(3, storage(true)),
                entry(4, storage(false)),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("linear"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("linear"),
            source: wgpu::ShaderSource::Wgsl(SOURCE.into()),
        });
        let pipeline = |entry_point: &str| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry_point),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(entry_point),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        Self {
            batch: pipeline("main"),
            small: pipeline("main_small"),
            layout,
        }
    }

    /// Binds: the dispatch's span, the batch size, the problem table, the weights and the
    /// activation buffer.
    pub fn bind_group(
        &self,
        device: &wgpu::Device,
        span: &wgpu::Buffer,
        batch: &wgpu::Buffer,
        problems: &wgpu::Buffer,
        weights: &wgpu::Buffer,
        act: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("linear"),
            layout: &self.layout,
            entries: &whole_buffers(&[span, batch, problems, weights, act]),
        })
    }

    /// Records one dispatch over `tiles` column tiles and `rows` rows, on the variant that
    /// suits `rows`.
    pub fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass,
        bind_group: &wgpu::BindGroup,
        tiles: u32,
        rows: u32,
    ) {
        self.dispatch_variant(pass, bind_group, tiles, rows, Variant::for_rows(rows));
    }

    /// Records one dispatch on a given variant.
    pub fn dispatch_variant(
        &self,
        pass: &mut wgpu::ComputePass,
        bind_group: &wgpu::BindGroup,
        tiles: u32,
        rows: u32,
        variant: Variant,
    ) {
        pass.set_pipeline(match variant {
            Variant::Batch => &self.batch,
            Variant::Small => &self.small,
        });
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(tiles, rows.div_ceil(variant.tile_m()), 1);
    }
}
