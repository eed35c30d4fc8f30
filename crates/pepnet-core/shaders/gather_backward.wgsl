// Backward of the fused embedding gather (gather.wgsl): the gradient of every embedding row a
// batch touched, and of no other.
//
// A feature's pooled vector was written to up to three places; its gradient is the sum of
// theirs, each read from the gradient buffer and, where the forward multiplied it on (E under
// EPNet, whose gradient arrives through O_ep = δ ⊙ E), scaled by a view of the activations.
// A row's gradient is the sum, over every place the batch used it, of that use's weight times its
// feature's vector gradient: 1 for a sparse id or a summed multi-hot id, 1/count for a mean-pooled
// one, the value x for a dense feature's vector v.
//
// The host lists the uses grouped by row, rows ascending and each row's uses in sample order
// (a CSR list: row u's uses are uses[starts[u] .. starts[u + 1]]); one thread per (touched row,
// element) sums its row's uses in that order. Deterministic, no atomics, and the cost is the
// batch's uses, not the table.

const NO_VIEW: u32 = 0xffffffffu;
const MAX_SOURCES: u32 = 3u;

struct Feature {
    n_sources: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    // (gradient offset, stride, scale offset or NO_VIEW, scale stride) per place
    sources: array<vec4<u32>, 3>,
}

struct Use {
    sample: u32,
    feature: u32,   // index into `features`
    weight: f32,
    _pad: u32,
}

struct Params {
    rows: u32,      // touched rows
    d: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> features: array<Feature>;
@group(0) @binding(2) var<storage, read> starts: array<u32>;   // rows + 1
@group(0) @binding(3) var<storage, read> uses: array<Use>;
@group(0) @binding(4) var<storage, read> act: array<f32>;
@group(0) @binding(5) var<storage, read> grad: array<f32>;
@group(0) @binding(6) var<storage, read_write> row_grad: array<f32>; // [rows, d]

@compute @workgroup_size(FLAT_WORKGROUP, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let index = flat_index(gid, nwg);
    let u = index / params.d;
    if u >= params.rows {
        return;
    }
    let k = index % params.d;
    var total = 0.0;
    for (var i = starts[u]; i < starts[u + 1u]; i++) {
        let use_ = uses[i];
        let f = features[use_.feature];
        var v = 0.0;
        for (var j = 0u; j < min(f.n_sources, MAX_SOURCES); j++) {
            let src = f.sources[j];
            var g = grad[src.x + use_.sample * src.y + k];
            if src.z != NO_VIEW {
                g *= act[src.z + use_.sample * src.w + k];
            }
            v += g;
        }
        total += use_.weight * v;
    }
    row_grad[index] = total;
}
