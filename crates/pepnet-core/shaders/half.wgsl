// f16 rounding shared by the kernels that produce or read f16 values (linear.wgsl's f16
// variants, the tensor-core entry point, and the optimizer's f16 copy of the weights).

// x rounded to the nearest f16 (ties to even; beyond f16's range, ±inf), as an f32. Written
// out rather than left to a conversion, whose rounding Vulkan leaves to the device (to nearest
// or toward zero), so every device and the host reference round alike.
fn round_half(x: f32) -> f32 {
    let bits = bitcast<u32>(x);
    let sign = bits & 0x80000000u;
    let mag = bits & 0x7fffffffu;
    if mag > 0x7f800000u {
        return x; // NaN
    }
    if mag >= 0x477ff000u {
        return bitcast<f32>(sign | 0x7f800000u); // 65520 and up round to infinity
    }
    if mag < 0x38800000u {
        // f16 subnormals are multiples of 2^-24; scaling by powers of two is exact and
        // round() breaks ties to even.
        return round(x * 16777216.0) * (1.0 / 16777216.0);
    }
    // Normal: keep 10 of the 23 mantissa bits, ties to even.
    let lsb = (mag >> 13u) & 1u;
    return bitcast<f32>(sign | ((mag + 0x0fffu + lsb) & ~0x1fffu));
}
