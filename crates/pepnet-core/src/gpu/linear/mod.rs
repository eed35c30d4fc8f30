//! The grouped, gated, fused linear kernel (`shaders/linear.wgsl`): its pipeline, its problem
//! descriptor, and its dispatch arithmetic. Its CPU reference is
//! [`reference::linear_group`].

pub mod backward;
pub mod reference;

use crate::gpu::act::{ActStorage, ByStorage, HALF};
use crate::gpu::{whole_buffers, PRELUDE};
pub use crate::precision::Precision;

/// `shaders/linear_common.wgsl` (the problem table and the loads it shares with the backward),
/// then `shaders/linear.wgsl`.
pub const BODY: &str = concat!(
    include_str!("../../../shaders/linear_common.wgsl"),
    include_str!("../../../shaders/linear.wgsl")
);

/// The SIMT kernel's source over an activation storage.
pub fn source(storage: ActStorage) -> String {
    storage.source(BODY)
}

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
    /// Identity: z.
    None = 0,
    /// max(z, 0).
    Relu = 1,
    /// γ · σ(z): a Gate NU's output.
    Gate = 2,
    /// σ(z): a tower's output probability.
    Sigmoid = 3,
}

/// Multiply A by G on load.
pub const FLAG_GATED: u32 = 1;
/// Multiply Y by M in the epilogue.
pub const FLAG_MULTIPLIED: u32 = 2;
/// Training: also store the activation before the multiplier to `keep`.
pub const FLAG_KEEP: u32 = 4;
/// Y is probabilities, written to the f32 `scores` binding instead of the activations.
pub const FLAG_F32_OUT: u32 = 8;
/// f16 scoring: G is stored as G − γ/2 (see [`crate::plan::Plan::centered`]).
pub const FLAG_G_CENTERED: u32 = 16;
/// f16 scoring: Y is stored as Y − γ/2.
pub const FLAG_Y_CENTERED: u32 = 32;

/// A strided view of a matrix in the activation buffer: element `(m, c)` is at
/// `offset + m * stride + c` (in elements of the buffer's storage: f32s, or f16s when scoring
/// at f16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Element `(0, 0)`.
    pub offset: u32,
    /// Elements from one row to the next.
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
    /// The input A, `[rows, k]`.
    pub a: View,
    /// G, multiplied into A element-wise on load (a Gate NU's output); `None`: no gate.
    pub gate: Option<View>,
    /// M, multiplied into Y element-wise in the epilogue; `None`: no multiplier.
    pub multiplier: Option<View>,
    /// Where training stores `act(...)` before the product with M; `None` when scoring.
    pub keep: Option<View>,
    /// The output Y, `[rows, n]`.
    pub y: View,
    /// Offset of W in the weights buffer, in f32s (a multiple of 4).
    pub w_offset: u32,
    /// Offset of the bias in the weights buffer, in f32s.
    pub bias_offset: u32,
    /// Output columns (rows of W).
    pub n: u32,
    /// Input columns (columns of W).
    pub k: u32,
    /// What the epilogue applies after the bias.
    pub activation: Activation,
    /// γ of [`Activation::Gate`] (the Gate NU's scale); unused by the other activations.
    pub gamma: f32,
    /// Y is the probabilities, written to the f32 scores buffer (`y` is a view of it), not to
    /// the activations: over f16 activations, so that scores keep f32's resolution.
    pub f32_out: bool,
}

/// WGSL's `Problem`, 80 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ProblemGpu {
    /// A's [`View::offset`].
    pub a_off: u32,
    /// A's [`View::stride`].
    pub a_stride: u32,
    /// G's offset (0 without `FLAG_GATED`).
    pub g_off: u32,
    /// G's row stride (0 without `FLAG_GATED`).
    pub g_stride: u32,
    /// M's offset (0 without `FLAG_MULTIPLIED`).
    pub m_off: u32,
    /// M's row stride (0 without `FLAG_MULTIPLIED`).
    pub m_stride: u32,
    /// Y's offset (in `scores` under `FLAG_F32_OUT`).
    pub y_off: u32,
    /// Y's row stride.
    pub y_stride: u32,
    /// [`LinearProblem::w_offset`].
    pub w_off: u32,
    /// [`LinearProblem::bias_offset`].
    pub bias_off: u32,
    /// Output columns.
    pub n: u32,
    /// Input columns.
    pub k: u32,
    /// The [`Activation`] as its `u32` (WGSL's `ACT_*`).
    pub act: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// [`LinearProblem::gamma`].
    pub gamma: f32,
    /// Index of the problem's first column tile within the dispatch.
    pub first_tile: u32,
    /// K's offset (0 without `FLAG_KEEP`).
    pub keep_off: u32,
    /// K's row stride (0 without `FLAG_KEEP`).
    pub keep_stride: u32,
    /// The backward pass's numbering of `[TILE_N, TILE_N]` weight-gradient tiles.
    pub first_wtile: u32,
    /// Padding to 80 bytes, a multiple of 16.
    pub _pad: u32,
}

/// WGSL's `Span`: which problems of the table one dispatch runs.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SpanParams {
    /// The dispatch's first entry of the table.
    pub first: u32,
    /// Entries the dispatch runs.
    pub count: u32,
    /// Padding to a 16-byte uniform.
    pub _pad: [u32; 2],
}

impl SpanParams {
    /// Entries `first..first + count` of the table.
    pub fn new(first: usize, count: usize) -> Self {
        Self {
            first: first as u32,
            count: count as u32,
            _pad: [0; 2],
        }
    }
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
                | if p.keep.is_some() { FLAG_KEEP } else { 0 }
                | if p.f32_out { FLAG_F32_OUT } else { 0 };
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
    let (w_offset, bias_offset, end) = layer_offsets(buffer.len(), bias.len(), k);
    buffer.resize(w_offset as usize, 0.0);
    let (k, stride) = (k as usize, padded_k(k) as usize);
    for row in weight.chunks_exact(k) {
        buffer.extend_from_slice(row);
        buffer.resize(buffer.len() + stride - k, 0.0);
    }
    buffer.extend_from_slice(bias);
    buffer.resize(end, 0.0);
    (w_offset, bias_offset)
}

/// Where [`pack_layer`] puts an `[n, k]` layer appended to a buffer of `len` floats: the
/// weight's and the bias's offsets, and the buffer's new length. Whole vec4s only: the kernel
/// binds the buffer as `array<vec4<f32>>`, whose length rounds down.
pub fn layer_offsets(len: usize, n: usize, k: u32) -> (u32, u32, usize) {
    let w_offset = len.next_multiple_of(4);
    let bias_offset = w_offset + n * padded_k(k) as usize;
    let end = (bias_offset + n).next_multiple_of(4);
    (w_offset as u32, bias_offset as u32, end)
}

/// The packed weights as f16, two to a `u32` (the layout `weights_half` binds): same element
/// offsets as the f32 packing, so one problem table serves both.
pub fn pack_half(data: &[f32]) -> Vec<u32> {
    data.chunks(2)
        .map(|pair| {
            let lo = half::f16::from_f32(pair[0]).to_bits() as u32;
            let hi = pair
                .get(1)
                .map_or(0, |&x| half::f16::from_f32(x).to_bits() as u32);
            lo | hi << 16
        })
        .collect()
}

/// A cooperative-matrix configuration the kernel is built for: `size`×`size`×`size` fragments
/// of f16 inputs and f32 accumulators, on subgroups of `subgroup` invocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CoopShape {
    /// Side of a square fragment (8 or 16).
    pub size: u32,
    /// Invocations per subgroup (the device's fixed subgroup size).
    pub subgroup: u32,
}

impl CoopShape {
    /// Rows of a workgroup tile of `main_coop` (linear_coop.wgsl's BM).
    pub fn tile_m(self) -> u32 {
        4 * self.size
    }

    /// Invocations of a workgroup: 2 × (64 / 2·size) subgroups.
    pub fn threads(self) -> u32 {
        2 * (64 / (2 * self.size)) * self.subgroup
    }

    /// Bytes of workgroup memory `main_coop` declares (two stages of A and W in f16, one
    /// f32 fragment per subgroup).
    pub fn workgroup_bytes(self) -> u32 {
        let (cm, lds) = (self.size, 2 * self.size + 8);
        let subgroups = 2 * (64 / (2 * cm));
        2 * (4 * cm * lds) * 2 + 2 * (64 * lds) * 2 + subgroups * cm * cm * 4
    }

    /// The shape the kernel can use on a device, if any: a square 8 or 16 f16 → f32 shape
    /// whose fragments tile 64 columns, a fixed subgroup size (the kernel assigns fragments to
    /// subgroups by invocation index), and room for its workgroup memory.
    pub fn choose(
        offered: &[wgpu::CooperativeMatrixProperties],
        subgroup_min: u32,
        subgroup_max: u32,
        limits: &wgpu::Limits,
    ) -> Option<Self> {
        if subgroup_min != subgroup_max || subgroup_min == 0 {
            return None;
        }
        offered
            .iter()
            .filter(|p| {
                p.ab_type == wgpu::CooperativeScalarType::F16
                    && p.cr_type == wgpu::CooperativeScalarType::F32
                    && p.m_size == p.n_size
                    && p.n_size == p.k_size
                    && (p.m_size == 8 || p.m_size == 16)
            })
            .map(|p| Self {
                size: p.m_size,
                subgroup: subgroup_min,
            })
            .filter(|s| {
                s.workgroup_bytes() <= limits.max_compute_workgroup_storage_size
                    && s.threads() <= limits.max_compute_invocations_per_workgroup
            })
            .max_by_key(|s| s.size)
    }

    /// The header `linear_coop.wgsl` is compiled after: the enables, the fragment size, the
    /// subgroup size and the fragment types.
    pub fn header(self) -> String {
        let n = self.size;
        format!(
            "enable f16;\nenable wgpu_cooperative_matrix;\n\
             const CM: u32 = {n}u;\nconst SG: u32 = {sg}u;\n\
             alias FragA = coop_mat{n}x{n}<f16, A>;\n\
             alias FragB = coop_mat{n}x{n}<f16, B>;\n\
             alias FragC = coop_mat{n}x{n}<f32, C>;\n",
            sg = self.subgroup
        )
    }

    /// The complete source of the cooperative-matrix build over an activation storage: its
    /// directives and the header, the storage's prelude, f16 rounding, the forward's body,
    /// then `main_coop`.
    pub fn source(self, storage: ActStorage) -> String {
        format!(
            "{}{}{PRELUDE}{}{HALF}{BODY}{COOP_SOURCE}",
            storage.directives(),
            self.header(),
            storage.prelude()
        )
    }
}

/// `main_coop`, appended to [`BODY`] after a [`CoopShape::header`].
pub const COOP_SOURCE: &str = include_str!("../../../shaders/linear_coop.wgsl");

/// The kernel variants: entry points of `linear.wgsl` (and `linear_coop.wgsl`) at a precision.
/// All share the problem table, the bindings and one bind group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// f32, 64×64 tiles, 4×4 per thread.
    Batch,
    /// f32, 4×64 tiles, one column of 4 rows per thread.
    Small,
    /// f16 inputs, f32 sums, on the `Batch` tiles.
    HalfBatch,
    /// f16 inputs, f32 sums, on the `Small` tiles.
    HalfSmall,
    /// f16 inputs, f32 sums on cooperative matrices (tensor cores).
    Coop,
}

impl Variant {
    /// Every variant, in declaration order.
    pub const ALL: [Variant; 5] = [
        Variant::Batch,
        Variant::Small,
        Variant::HalfBatch,
        Variant::HalfSmall,
        Variant::Coop,
    ];

    /// The precision of its inputs.
    pub fn precision(self) -> Precision {
        match self {
            Variant::Batch | Variant::Small => Precision::F32,
            _ => Precision::F16,
        }
    }

    /// A short name for reports (`pepnet plan`, `pepnet bench`).
    pub fn name(self) -> &'static str {
        match self {
            Variant::Batch => "f32 simt 64x64",
            Variant::Small => "f32 simt 4x64",
            Variant::HalfBatch => "f16 simt 64x64",
            Variant::HalfSmall => "f16 simt 4x64",
            Variant::Coop => "f16 coop",
        }
    }

    fn entry_point(self) -> &'static str {
        match self {
            Variant::Batch | Variant::HalfBatch => "main",
            Variant::Small | Variant::HalfSmall => "main_small",
            Variant::Coop => "main_coop",
        }
    }
}

/// What a linear dispatch binds, in binding order.
#[derive(Clone, Copy)]
pub struct Bindings<'a> {
    /// The dispatch's span of the problem table (a uniform).
    pub span: &'a wgpu::Buffer,
    /// The batch size (a uniform).
    pub batch: &'a wgpu::Buffer,
    /// The problem table.
    pub problems: &'a wgpu::Buffer,
    /// The packed weights.
    pub weights: &'a wgpu::Buffer,
    /// The activations, and the scores buffer where problems write f32 probabilities.
    pub act: ActBinding<'a>,
    /// The packed weights as f16 (`None` for an engine that runs f32 only).
    pub weights_half: Option<&'a wgpu::Buffer>,
}

/// The activations a linear dispatch reads and writes.
#[derive(Clone, Copy)]
pub struct ActBinding<'a> {
    /// The activation buffer.
    pub buffer: &'a wgpu::Buffer,
    /// How it stores an activation: f32 or f16.
    pub storage: ActStorage,
    /// Where problems flagged `f32_out` write (the probabilities over f16 activations).
    pub scores: Option<&'a wgpu::Buffer>,
}

/// The compiled kernel: every variant the device can run, sharing one bind group layout so that
/// one bind group serves any of them. Built once per device; the variants over f16 activation
/// storage (the f16 ones only) on first use.
pub struct LinearKernel {
    layout: wgpu::BindGroupLayout,
    pipeline_layout: wgpu::PipelineLayout,
    pipelines: ByStorage<Vec<(Variant, wgpu::ComputePipeline)>>,
    coop: Option<CoopShape>,
    /// Bound as `weights_half` by engines that run f32 only.
    no_half: wgpu::Buffer,
    /// Bound as `scores` where the probabilities stay in the activations.
    no_scores: wgpu::Buffer,
}

impl LinearKernel {
    /// Compiles the f32 and f16 SIMT variants, and the cooperative-matrix one when `coop` is
    /// given (the device must have been opened with f16 shaders and cooperative matrices).
    pub fn new(device: &wgpu::Device, coop: Option<CoopShape>) -> Self {
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
                entry(5, storage(true)),
                entry(6, storage(false)),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("linear"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let f32_set = Self::build(device, &pipeline_layout, coop, ActStorage::F32);
        let no_half = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("no f16 weights"),
            size: 8,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let no_scores = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("no scores"),
            size: 4,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Self {
            layout,
            pipeline_layout,
            pipelines: ByStorage::new(f32_set),
            coop,
            no_half,
            no_scores,
        }
    }

    /// The variants over `storage`: every one over f32, the f16 ones over f16.
    fn build(
        device: &wgpu::Device,
        pipeline_layout: &wgpu::PipelineLayout,
        coop: Option<CoopShape>,
        storage: ActStorage,
    ) -> Vec<(Variant, wgpu::ComputePipeline)> {
        let module = |label: &str, source: &str| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            })
        };
        let simt = module("linear", &source(storage));
        let coop_module = coop.map(|shape| module("linear coop", &shape.source(storage)));
        Variant::ALL
            .into_iter()
            .filter(|v| storage == ActStorage::F32 || v.precision() == Precision::F16)
            .filter_map(|variant| {
                let module = match variant {
                    Variant::Coop => coop_module.as_ref()?,
                    _ => &simt,
                };
                let half = [("HALF", 1.0)];
                let constants: &[(&str, f64)] = match variant {
                    Variant::HalfBatch | Variant::HalfSmall => &half,
                    _ => &[],
                };
                let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(variant.name()),
                    layout: Some(pipeline_layout),
                    module,
                    entry_point: Some(variant.entry_point()),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants,
                        ..Default::default()
                    },
                    cache: None,
                });
                Some((variant, pipeline))
            })
            .collect()
    }

    /// Compiles the variants over `storage` if they are not yet (f16 storage needs a device
    /// opened with f16 shaders). Binding does it too.
    pub fn prepare(&self, device: &wgpu::Device, storage: ActStorage) {
        self.pipelines.get_or_build(storage, || {
            Self::build(device, &self.pipeline_layout, self.coop, storage)
        });
    }

    /// The cooperative-matrix shape `main_coop` was built for; `None` where the device has none.
    pub fn coop(&self) -> Option<CoopShape> {
        self.coop
    }

    /// Whether this device runs `variant` (over f32 storage; over f16 it runs the same f16
    /// variants).
    pub fn has(&self, variant: Variant) -> bool {
        self.pipelines
            .built(ActStorage::F32)
            .iter()
            .any(|(v, _)| *v == variant)
    }

    /// The variant a batch of `rows` runs on at `precision`: the small tiles for a few rows,
    /// else tensor cores where the device has them (f16), else the 64×64 SIMT tiles.
    pub fn variant_for(&self, precision: Precision, rows: u32) -> Variant {
        match (precision, rows <= SMALL_MAX_ROWS) {
            (Precision::F32, true) => Variant::Small,
            (Precision::F32, false) => Variant::Batch,
            (Precision::F16, true) => Variant::HalfSmall,
            (Precision::F16, false) if self.coop.is_some() => Variant::Coop,
            (Precision::F16, false) => Variant::HalfBatch,
        }
    }

    /// Rows of one workgroup tile of `variant`.
    pub fn tile_m(&self, variant: Variant) -> u32 {
        match variant {
            Variant::Batch | Variant::HalfBatch => TILE_M,
            Variant::Small | Variant::HalfSmall => SMALL_TILE_M,
            Variant::Coop => self.coop.map_or(TILE_M, CoopShape::tile_m),
        }
    }

    /// The bind group of `bindings`; compiles the variants over their activations' storage if
    /// need be.
    pub fn bind_group(&self, device: &wgpu::Device, bindings: Bindings) -> wgpu::BindGroup {
        let Bindings {
            span,
            batch,
            problems,
            weights,
            act,
            weights_half,
        } = bindings;
        self.prepare(device, act.storage);
        let half = weights_half.unwrap_or(&self.no_half);
        let scores = act.scores.unwrap_or(&self.no_scores);
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("linear"),
            layout: &self.layout,
            entries: &whole_buffers(&[span, batch, problems, weights, act.buffer, half, scores]),
        })
    }

    /// Records one dispatch over `tiles` column tiles and `rows` rows, on the variant that
    /// suits `rows` at `precision`, over an activation buffer of `storage`; returns that
    /// variant.
    pub fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass,
        bind_group: &wgpu::BindGroup,
        tiles: u32,
        rows: u32,
        (precision, storage): (Precision, ActStorage),
    ) -> Variant {
        let variant = self.variant_for(precision, rows);
        self.dispatch_variant(pass, bind_group, tiles, rows, (variant, storage));
        variant
    }

    /// Records one dispatch on a given variant over an activation buffer of `storage`; the
    /// device must have it ([`Self::has`]), and f16 storage only has the f16 variants.
    pub fn dispatch_variant(
        &self,
        pass: &mut wgpu::ComputePass,
        bind_group: &wgpu::BindGroup,
        tiles: u32,
        rows: u32,
        (variant, storage): (Variant, ActStorage),
    ) {
        let (_, pipeline) = self
            .pipelines
            .built(storage)
            .iter()
            .find(|(v, _)| *v == variant)
            .expect("a variant the device was built with");
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(tiles, rows.div_ceil(self.tile_m(variant)), 1);
    }
}
