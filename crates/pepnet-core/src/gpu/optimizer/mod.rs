//! The optimizers (`shaders/optimizer.wgsl`): Adam over the packed dense weights and AdaGrad over
//! the embedding rows a batch touched, as the paper trains them. Their CPU references are
//! [`reference::adam`] and [`reference::adagrad_rows`].

pub mod reference;

use crate::gpu::{bind_buffers, dispatch_flat, entry_pipelines};

/// `shaders/prelude.wgsl`, `shaders/half.wgsl` (for `to_half`), then `shaders/optimizer.wgsl`.
pub const SOURCE: &str = concat!(
    include_str!("../../../shaders/prelude.wgsl"),
    include_str!("../../../shaders/half.wgsl"),
    include_str!("../../../shaders/optimizer.wgsl")
);

/// Adam's hyperparameters. The defaults are PyTorch's (the paper's "small" learning rate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamOptions {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first-moment (mean) estimate.
    pub beta1: f64,
    /// Decay of the second-moment (uncentred variance) estimate.
    pub beta2: f64,
    /// Added to the denominator's square root, against division by zero.
    pub eps: f64,
}

impl Default for AdamOptions {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// AdaGrad's hyperparameters; the learning rate defaults to the paper's 0.05.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaGradOptions {
    /// Learning rate.
    pub lr: f64,
    /// Added to the denominator's square root, against division by zero.
    pub eps: f64,
}

impl Default for AdaGradOptions {
    fn default() -> Self {
        Self {
            lr: 0.05,
            eps: 1e-10,
        }
    }
}

/// WGSL's `Adam`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AdamParams {
    /// Parameters updated.
    pub count: u32,
    /// [`AdamOptions::lr`].
    pub lr: f32,
    /// [`AdamOptions::beta1`].
    pub beta1: f32,
    /// [`AdamOptions::beta2`].
    pub beta2: f32,
    /// [`AdamOptions::eps`].
    pub eps: f32,
    /// 1 − beta1^step, the first moment's bias correction.
    pub correction1: f32,
    /// 1 − beta2^step, the second moment's bias correction.
    pub correction2: f32,
    /// Padding to a multiple of 16 bytes.
    pub _pad: u32,
}

impl AdamParams {
    /// Step `step` (1-based) over `count` parameters; the bias corrections are computed in f64.
    pub fn new(config: &AdamOptions, count: u32, step: u32) -> Self {
        Self {
            count,
            lr: config.lr as f32,
            beta1: config.beta1 as f32,
            beta2: config.beta2 as f32,
            eps: config.eps as f32,
            correction1: (1.0 - config.beta1.powi(step as i32)) as f32,
            correction2: (1.0 - config.beta2.powi(step as i32)) as f32,
            _pad: 0,
        }
    }
}

/// WGSL's `AdaGrad`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AdaGradParams {
    /// Touched rows in this update.
    pub rows: u32,
    /// Embedding width.
    pub d: u32,
    /// [`AdaGradOptions::lr`].
    pub lr: f32,
    /// [`AdaGradOptions::eps`].
    pub eps: f32,
}

/// The compiled kernels.
pub struct OptimizerKernels {
    adam: wgpu::ComputePipeline,
    adagrad_rows: wgpu::ComputePipeline,
    to_half: wgpu::ComputePipeline,
}

/// Binds five buffers at bindings `first ..`.
fn bind(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    first: u32,
    buffers: [&wgpu::Buffer; 5],
) -> wgpu::BindGroup {
    let at: Vec<(u32, &wgpu::Buffer)> = (first..).zip(buffers).collect();
    bind_buffers(device, pipeline, "optimizer", &at)
}

impl OptimizerKernels {
    /// Compiles the three entry points: `adam`, `adagrad_rows` and `to_half`.
    pub fn new(device: &wgpu::Device) -> Self {
        let mut p = entry_pipelines(
            device,
            "optimizer",
            SOURCE,
            &["adam", "adagrad_rows", "to_half"],
        );
        let to_half = p.pop().expect("three pipelines");
        let adagrad_rows = p.pop().expect("three pipelines");
        let adam = p.pop().expect("three pipelines");
        Self {
            adam,
            adagrad_rows,
            to_half,
        }
    }

    /// Binds: Adam params (uniform, for the count), the f32 parameters, their f16 copy (two to
    /// a `u32`, as `linear::pack_half` lays them out).
    pub fn to_half_bind_group(
        &self,
        device: &wgpu::Device,
        params: &wgpu::Buffer,
        weights: &wgpu::Buffer,
        weights_half: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        bind_buffers(
            device,
            &self.to_half,
            "optimizer to_half",
            &[(0, params), (2, weights), (10, weights_half)],
        )
    }

    /// Records the f16 copy of `count` parameters (even): one thread per pair.
    pub fn to_half(&self, pass: &mut wgpu::ComputePass, bind_group: &wgpu::BindGroup, count: u32) {
        dispatch_flat(pass, &self.to_half, bind_group, count.div_ceil(2) as u64);
    }

    /// Binds: Adam params (uniform), gradients, parameters, first and second moments.
    pub fn adam_bind_group(
        &self,
        device: &wgpu::Device,
        buffers: [&wgpu::Buffer; 5],
    ) -> wgpu::BindGroup {
        bind(device, &self.adam, 0, buffers)
    }

    /// Binds: AdaGrad params (uniform), touched rows, their gradients, the table, its squared
    /// gradient sums.
    pub fn adagrad_bind_group(
        &self,
        device: &wgpu::Device,
        buffers: [&wgpu::Buffer; 5],
    ) -> wgpu::BindGroup {
        bind(device, &self.adagrad_rows, 5, buffers)
    }

    /// Records an Adam step: one thread per parameter.
    pub fn adam(&self, pass: &mut wgpu::ComputePass, bind_group: &wgpu::BindGroup, count: u32) {
        dispatch_flat(pass, &self.adam, bind_group, count as u64);
    }

    /// Records an AdaGrad step on the touched rows: one thread per (row, element).
    pub fn adagrad_rows(
        &self,
        pass: &mut wgpu::ComputePass,
        bind_group: &wgpu::BindGroup,
        params: &AdaGradParams,
    ) {
        let threads = params.rows as u64 * params.d as u64;
        dispatch_flat(pass, &self.adagrad_rows, bind_group, threads);
    }
}
