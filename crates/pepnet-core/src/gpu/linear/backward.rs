//! Backward of the linear kernel (`shaders/linear_backward.wgsl`): input (and gate) gradients
//! per group of problems that read the same input, and weight and bias gradients per problem,
//! over the forward's own problem table. Its f64 reference is
//! [`super::reference::linear_backward`] (`tests/backward_kernels.rs`); the whole
//! backward is checked against [`crate::grad`] in `tests/train.rs`.

use crate::gpu::act::{ActStorage, HALF};
use crate::gpu::linear::{Activation, CoopShape, LinearProblem, View, TILE_N};
use crate::gpu::{bind_buffers, entry_pipelines, whole_buffers, PRELUDE};

/// `shaders/linear_common.wgsl`, shared with the forward, then `shaders/linear_backward.wgsl`.
pub const BODY: &str = concat!(
    include_str!("../../../shaders/linear_common.wgsl"),
    include_str!("../../../shaders/linear_backward.wgsl")
);

/// The SIMT build: the f32 activation storage's prelude (training stores f32), then [`BODY`].
pub fn source() -> String {
    ActStorage::F32.source(BODY)
}

/// `weight_grad_coop` and `input_grad_coop` (`shaders/linear_backward_coop.wgsl`), appended to
/// [`BODY`].
pub const COOP_SOURCE: &str = include_str!("../../../shaders/linear_backward_coop.wgsl");

/// The tensor-core build: `shape`'s header (as the forward's), the f32 storage's prelude, f16
/// rounding, [`BODY`], then `weight_grad_coop` and `input_grad_coop`.
pub fn coop_source(shape: CoopShape) -> String {
    format!(
        "{}{PRELUDE}{}{HALF}{BODY}{COOP_SOURCE}",
        shape.header(),
        ActStorage::F32.prelude()
    )
}

/// Bytes of workgroup memory `weight_grad_coop` declares for `shape`: two stages of dZ and
/// A ⊙ G (2·CM rows of 64 + 8 f16 each), one f32 fragment per subgroup, the bias partial sums
/// and the max.
pub fn weight_grad_coop_bytes(shape: CoopShape) -> u32 {
    let cm = shape.size;
    let sub = 64 / (2 * cm);
    let threads = sub * sub * shape.subgroup;
    2 * (2 * 2 * cm * 72 * 2) + sub * sub * cm * cm * 4 + threads * 4 + 4
}

/// Bytes of workgroup memory `input_grad_coop` declares for `shape`: two stages of dZ (4·CM
/// rows of 2·CM + 8 f16) and W (2·CM rows of 64 + 8 f16), one f32 fragment per subgroup, the
/// group's f32 sum over the tile, and the max.
pub fn input_grad_coop_bytes(shape: CoopShape) -> u32 {
    let cm = shape.size;
    let subgroups = 2 * (64 / (2 * cm));
    let (bm, bn) = (4 * cm, 2 * cm);
    2 * bm * (bn + 8) * 2 + 2 * bn * 72 * 2 + subgroups * cm * cm * 4 + bm * 64 * 4 + 4
}

/// Rows of a workgroup tile of `input_grad`.
pub const TILE_M: u32 = 64;

/// WGSL's `InputGroup`: problems `first .. first + count` of the table read the same A, whose
/// first `grad_k` columns get the sum of their input gradients.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct InputGroupGpu {
    /// The group's first problem in the table.
    pub first: u32,
    /// Problems in the group.
    pub count: u32,
    /// Columns of A that get a gradient.
    pub grad_k: u32,
    /// Index of the group's first column tile within the `input_grad` dispatch.
    pub first_tile: u32,
}

/// Groups a dispatch's problems (at `first` in the problem table) by the input they read:
/// consecutive problems with the same A view form one group, since their input gradients must
/// be summed, not raced. Groups whose input gets no gradient are left out. Returns the groups and
/// the number of column tiles (the `input_grad` dispatch's x size).
///
/// Panics on problems the backward cannot differentiate (a plan bug, not bad input): an input
/// read by problems that are not consecutive; a multiplier after an activation without the
/// activation kept; a sigmoid anywhere but a plain output layer; a gated input with a
/// stop-gradient.
pub fn input_groups(problems: &[LinearProblem], first: u32) -> (Vec<InputGroupGpu>, u32) {
    let mut groups: Vec<InputGroupGpu> = Vec::new();
    let mut last_a: Option<View> = None;
    for (i, p) in problems.iter().enumerate() {
        assert!(
            p.gate.is_none() || p.grad_k == p.k,
            "a gated input gets its whole gradient"
        );
        assert!(
            p.multiplier.is_none() || p.activation == Activation::None || p.keep.is_some(),
            "an activation before a multiplier is kept for the backward"
        );
        assert!(
            p.activation != Activation::Sigmoid || (p.multiplier.is_none() && p.keep.is_none()),
            "a sigmoid is an output layer, whose dZ the loss writes"
        );
        assert!(
            last_a == Some(p.a) || problems[..i].iter().all(|q| q.a != p.a),
            "problems reading one input are consecutive"
        );
        match groups.last_mut() {
            Some(g) if last_a == Some(p.a) => {
                assert_eq!(g.grad_k, p.grad_k, "one input, one stop-gradient");
                g.count += 1;
            }
            _ => groups.push(InputGroupGpu {
                first: first + i as u32,
                count: 1,
                grad_k: p.grad_k,
                first_tile: 0,
            }),
        }
        last_a = Some(p.a);
    }
    groups.retain(|g| g.grad_k > 0);
    let mut tiles = 0;
    for g in &mut groups {
        g.first_tile = tiles;
        tiles += g.grad_k.div_ceil(TILE_N);
    }
    (groups, tiles)
}

/// What `input_grad` binds, in binding order.
#[derive(Clone, Copy)]
pub struct InputBindings<'a> {
    /// The dispatch's span of the group table (a uniform).
    pub span: &'a wgpu::Buffer,
    /// The batch size (a uniform).
    pub batch: &'a wgpu::Buffer,
    /// The problem table.
    pub problems: &'a wgpu::Buffer,
    /// The packed weights.
    pub weights: &'a wgpu::Buffer,
    /// The forward's activations.
    pub act: &'a wgpu::Buffer,
    /// The activations' gradients, laid out as they are.
    pub grad: &'a wgpu::Buffer,
    /// The group table: which problems sum into each input.
    pub groups: &'a wgpu::Buffer,
}

/// What `weight_grad` binds.
#[derive(Clone, Copy)]
pub struct WeightBindings<'a> {
    /// The dispatch's span of the problem table (a uniform).
    pub span: &'a wgpu::Buffer,
    /// The batch size (a uniform).
    pub batch: &'a wgpu::Buffer,
    /// The problem table.
    pub problems: &'a wgpu::Buffer,
    /// The forward's activations.
    pub act: &'a wgpu::Buffer,
    /// The activations' gradients.
    pub grad: &'a wgpu::Buffer,
    /// The weight gradients, laid out as the packed weights.
    pub wgrad: &'a wgpu::Buffer,
}

/// The compiled kernel's entry points: `input_grad` and `weight_grad` on the f32 SIMT units,
/// and `weight_grad_coop` on tensor cores where the device has them.
pub struct LinearBackwardKernel {
    input_grad: wgpu::ComputePipeline,
    weight_grad: wgpu::ComputePipeline,
    weight_grad_coop: Option<wgpu::ComputePipeline>,
    /// `input_grad_coop` and its rows per tile.
    input_grad_coop: Option<(wgpu::ComputePipeline, u32)>,
}

impl LinearBackwardKernel {
    /// `coop`: the device's cooperative-matrix shape (opened with f16 and cooperative
    /// matrices), for the tensor-core entry points, where it has room for their workgroup
    /// memory.
    pub fn new(device: &wgpu::Device, coop: Option<CoopShape>, limits: &wgpu::Limits) -> Self {
        let mut p = entry_pipelines(
            device,
            "linear_backward",
            &source(),
            &["input_grad", "weight_grad"],
        );
        let weight_grad = p.pop().expect("two pipelines");
        let input_grad = p.pop().expect("two pipelines");
        let room = limits.max_compute_workgroup_storage_size;
        let coop =
            coop.filter(|&s| weight_grad_coop_bytes(s) <= room && input_grad_coop_bytes(s) <= room);
        let (input_grad_coop, weight_grad_coop) = match coop {
            Some(shape) => {
                let source = coop_source(shape);
                let mut p = entry_pipelines(
                    device,
                    "linear_backward coop",
                    &source,
                    &["input_grad_coop", "weight_grad_coop"],
                );
                let weight = p.pop().expect("two pipelines");
                let input = p.pop().expect("two pipelines");
                (Some((input, 4 * shape.size)), Some(weight))
            }
            None => (None, None),
        };
        Self {
            input_grad,
            weight_grad,
            weight_grad_coop,
            input_grad_coop,
        }
    }

    /// Whether the tensor-core entry points were built (the device has cooperative matrices and
    /// room for their workgroup memory).
    pub fn has_coop(&self) -> bool {
        self.input_grad_coop.is_some() && self.weight_grad_coop.is_some()
    }

    /// `input_grad_coop` (and its rows per tile) when `coop` and built, else `input_grad`.
    fn input_pipeline(&self, coop: bool) -> (&wgpu::ComputePipeline, u32) {
        match (&self.input_grad_coop, coop) {
            (Some((p, rows)), true) => (p, *rows),
            _ => (&self.input_grad, TILE_M),
        }
    }

    /// `weight_grad_coop` when `coop` and built, else `weight_grad`.
    fn weight_pipeline(&self, coop: bool) -> &wgpu::ComputePipeline {
        match (&self.weight_grad_coop, coop) {
            (Some(p), true) => p,
            _ => &self.weight_grad,
        }
    }

    /// The bind group of `bindings` for `input_grad` (or `input_grad_coop` when `coop`).
    pub fn input_bind_group(
        &self,
        device: &wgpu::Device,
        bindings: InputBindings,
        coop: bool,
    ) -> wgpu::BindGroup {
        let InputBindings {
            span,
            batch,
            problems,
            weights,
            act,
            grad,
            groups,
        } = bindings;
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("input_grad"),
            layout: &self.input_pipeline(coop).0.get_bind_group_layout(0),
            entries: &whole_buffers(&[span, batch, problems, weights, act, grad, groups]),
        })
    }

    /// The bind group of `bindings` for `weight_grad` (or `weight_grad_coop` when `coop`).
    pub fn weight_bind_group(
        &self,
        device: &wgpu::Device,
        bindings: WeightBindings,
        coop: bool,
    ) -> wgpu::BindGroup {
        let WeightBindings {
            span,
            batch,
            problems,
            act,
            grad,
            wgrad,
        } = bindings;
        let bound = [
            (0, span),
            (1, batch),
            (2, problems),
            (4, act),
            (5, grad),
            (7, wgrad),
        ];
        bind_buffers(device, self.weight_pipeline(coop), "weight_grad", &bound)
    }

    /// Records `input_grad` (or `input_grad_coop` when `coop`, with a bind group made for it)
    /// over `tiles` column tiles and `rows` rows.
    pub fn input_grad(
        &self,
        pass: &mut wgpu::ComputePass,
        bind_group: &wgpu::BindGroup,
        tiles: u32,
        rows: u32,
        coop: bool,
    ) {
        let (pipeline, tile_m) = self.input_pipeline(coop);
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(tiles, rows.div_ceil(tile_m), 1);
    }

    /// Records `weight_grad` (or `weight_grad_coop` when `coop`, with a bind group made for it)
    /// over `tiles` weight tiles ([`crate::gpu::linear::weight_tiles`] summed).
    pub fn weight_grad(
        &self,
        pass: &mut wgpu::ComputePass,
        bind_group: &wgpu::BindGroup,
        tiles: u32,
        coop: bool,
    ) {
        pass.set_pipeline(self.weight_pipeline(coop));
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(tiles, 1, 1);
    }
}
