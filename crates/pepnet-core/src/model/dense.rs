//! Linear layers in f64, forward and backward: the arithmetic every block's reference shares.
//! PyTorch's `nn.Linear` convention: `y = x · weightᵀ + bias`, the weight `[out, in]`.
//!
//! Mixed precision, as the kernels compute it: at f16 the forward rounds its input (as the f32
//! the GPU holds) and the weight to f16 before the products; the bias stays f32. The backward
//! differentiates at that rounded forward with the f32 weights and the unrounded input, unless
//! its own products run at f16 too (see [`backward`]).

use crate::gpu::linear::Precision;
use crate::math::round_f16;
use crate::model::gradients::Gradients;
use crate::weights::Weights;

/// Layer `name`'s output for input `x`, as the kernels of `precision` compute it.
pub fn forward(precision: Precision, w: &Weights, name: &str, x: &[f64]) -> Vec<f64> {
    let weight = w.get(&format!("{name}.weight"));
    let bias = &w.get(&format!("{name}.bias")).data;
    let n_in = weight.shape[1];
    assert_eq!(x.len(), n_in, "{name}: input width");
    let round = |v: f64| match precision {
        Precision::F32 => v,
        Precision::F16 => round_f16(v as f32 as f64),
    };
    let x: Vec<f64> = x.iter().map(|&v| round(v)).collect();
    weight
        .data
        .chunks_exact(n_in)
        .zip(bias)
        .map(|(row, &b)| {
            b as f64
                + row
                    .iter()
                    .zip(&x)
                    .map(|(&a, &x)| round(a as f64) * x)
                    .sum::<f64>()
        })
        .collect()
}

/// Adds layer `name`'s weight and bias gradients for input `x` and output gradient `dy` to
/// `g`; returns the input's gradient. With `weight_grad` (the backward's precision) at f16 the
/// products take `dy` rounded to f16's 11 significant bits (the tensor-core kernels block-scale
/// dZ, so its exponent is kept), and `x` (weight gradient) or the weight (input gradient)
/// rounded to f16, as `weight_grad_coop` and `input_grad_coop` do; the bias stays exact.
pub fn backward(
    w: &Weights,
    g: &mut Gradients,
    name: &str,
    x: &[f64],
    dy: &[f64],
    weight_grad: Precision,
) -> Vec<f64> {
    let weight = w.get(&format!("{name}.weight"));
    let n_in = weight.shape[1];
    let dw = g
        .dense
        .entry(format!("{name}.weight"))
        .or_insert_with(|| vec![0.0; weight.data.len()]);
    let (x_w, dy_w): (Vec<f64>, Vec<f64>) = match weight_grad {
        Precision::F32 => (x.to_vec(), dy.to_vec()),
        Precision::F16 => (
            x.iter().map(|&v| round_f16(v as f32 as f64)).collect(),
            dy.iter()
                .map(|&v| round_significand(v as f32 as f64))
                .collect(),
        ),
    };
    for (o, &d) in dy_w.iter().enumerate() {
        for (i, &xi) in x_w.iter().enumerate() {
            dw[o * n_in + i] += d * xi;
        }
    }
    let db = g
        .dense
        .entry(format!("{name}.bias"))
        .or_insert_with(|| vec![0.0; dy.len()]);
    for (acc, &d) in db.iter_mut().zip(dy) {
        *acc += d;
    }
    let w_at = |o: usize, i: usize| {
        let v = weight.data[o * n_in + i] as f64;
        match weight_grad {
            Precision::F32 => v,
            Precision::F16 => round_f16(v),
        }
    };
    (0..n_in)
        .map(|i| dy_w.iter().enumerate().map(|(o, &d)| w_at(o, i) * d).sum())
        .collect()
}

/// `v` rounded to f16's 11 significant bits (ties to even) whatever its exponent: what rounding
/// a power-of-two-scaled value to f16 and scaling back gives while it stays in f16's normal range.
fn round_significand(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let e = v.abs().log2().floor() as i32;
    let scale = 2f64.powi(14 - e);
    round_f16(v * scale) / scale
}

/// max(x, 0) of each element.
pub fn relu(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| x.max(0.0)).collect()
}

/// The gradient through a ReLU whose output was `out`: `dy` where the output is positive.
pub fn relu_backward(dy: &[f64], out: &[f64]) -> Vec<f64> {
    dy.iter()
        .zip(out)
        .map(|(&d, &o)| if o > 0.0 { d } else { 0.0 })
        .collect()
}

/// The element-wise product.
pub fn hadamard(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x * y).collect()
}

/// `acc += v`, element-wise.
pub fn add_into(acc: &mut [f64], v: &[f64]) {
    acc.iter_mut().zip(v).for_each(|(a, b)| *a += b);
}
