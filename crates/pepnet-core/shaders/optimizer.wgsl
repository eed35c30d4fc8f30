// The optimizers of the paper's training recipe, one thread per parameter element:
// - `adam`: Adam on the packed dense weights (PyTorch's semantics, bias-corrected moments);
// - `adagrad_rows`: AdaGrad on only the embedding rows a batch touched, read from a compact list
//   of (row, gradient) pairs, so an update costs the touched rows, not the table. The rows are
//   distinct (the gradient of a row used several times is summed before, deterministically).
// Each element is read and written by exactly one thread: deterministic, no atomics.

struct Adam {
    count: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    correction1: f32,  // 1 - beta1^step, from the host in f64
    correction2: f32,  // 1 - beta2^step
    _pad: u32,
}

struct AdaGrad {
    rows: u32,   // touched rows in this update
    d: u32,
    lr: f32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> adam_params: Adam;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;

@compute @workgroup_size(FLAT_WORKGROUP, 1, 1)
fn adam(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    let p = adam_params;
    if i >= p.count {
        return;
    }
    let g = grad[i];
    let m1 = p.beta1 * m[i] + (1.0 - p.beta1) * g;
    let v1 = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
    m[i] = m1;
    v[i] = v1;
    param[i] -= p.lr * (m1 / p.correction1) / (sqrt(v1 / p.correction2) + p.eps);
}

// Each entry point's pipeline binds only the bindings it uses.
@group(0) @binding(5) var<uniform> adagrad_params: AdaGrad;
@group(0) @binding(6) var<storage, read> touched: array<u32>;    // row of the table, per entry; distinct
@group(0) @binding(7) var<storage, read> row_grad: array<f32>;   // d floats per entry
@group(0) @binding(8) var<storage, read_write> table: array<f32>;
@group(0) @binding(9) var<storage, read_write> sum_sq: array<f32>;

@compute @workgroup_size(FLAT_WORKGROUP, 1, 1)
fn adagrad_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = flat_index(gid, nwg);
    let p = adagrad_params;
    let r = w / p.d;
    if r >= p.rows {
        return;
    }
    let k = w % p.d;
    let i = touched[r] * p.d + k;
    let g = row_grad[w];
    let s = sum_sq[i] + g * g;
    sum_sq[i] = s;
    table[i] -= p.lr * g / (sqrt(s) + p.eps);
}

// `to_half`: the f16 copy of the packed dense weights that f16 training's forward reads, made
// from the f32 master weights after each Adam step: one thread per pair, rounded to nearest
// (ties to even) as the host's initial copy is.
@group(0) @binding(10) var<storage, read_write> param_half: array<u32>;

@compute @workgroup_size(FLAT_WORKGROUP, 1, 1)
fn to_half(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if 2u * i >= adam_params.count {
        return;
    }
    // The count is a whole number of vec4s, so both elements exist. Packing a value that is
    // already an f16 is exact.
    let pair = vec2<f32>(round_half(param[2u * i]), round_half(param[2u * i + 1u]));
    param_half[i] = pack2x16float(pair);
}
