// Fused embedding gather: one dispatch looks up and pools every feature of every sample and
// writes each feature's d-wide vector to every place the model reads it (the EPNet input; the
// PPNet input; O_ep's place when there is no EPNet), so no later kernel gathers or concatenates.
//
// All embedding rows, of every table, share one row space of width d ("global rows"), split
// into pages of `rows_per_page` rows so that tables larger than one storage binding still fit.
// The host turns each id into a global row before upload, or, for a hashed feature, the resolve
// kernel does from the embedding cache's index, so this kernel does not care whether a row
// index came from a dense vocabulary or from the cache.
//
// One thread per (sample, feature, element k of d): consecutive threads read consecutive
// elements of a row.
//
// Rows are stored as f32 or, for the f16 precision, as f16 (two to a word, each row padded to a
// whole word): `row_words` words a row either way, `half` says which. The gathered values are
// f32 whichever, stored as the activation buffer's `Act` (act_f32.wgsl or act_f16.wgsl,
// compiled first).

const KIND_SPARSE: u32 = 0u;
const KIND_MULTI_HOT: u32 = 1u;
const KIND_DENSE: u32 = 2u;
const NO_ROW: u32 = 0xffffffffu; // an unused multi-hot slot
const MAX_DESTINATIONS: u32 = 3u;

struct Feature {
    kind: u32,
    first_slot: u32,  // sparse, multi-hot: first of this feature's slots in a sample's ids
    n_slots: u32,     // 1 for sparse, max_len for multi-hot
    mean: u32,        // multi-hot: 1 for mean pooling, 0 for sum
    dense_col: u32,   // dense: index of this feature's value in a sample's dense values
    dense_row: u32,   // dense: global row of the vector v
    n_destinations: u32,
    hashed: u32,      // 1: ids were resolved through the embedding cache (read alike here)
    // (offset of the sample-0 column, row stride) in `act`, one per destination
    destinations: array<vec4<u32>, 3>,
}

struct Params {
    n_features: u32,
    d: u32,
    slots: u32,       // ids per sample
    n_dense: u32,     // dense values per sample
    rows_per_page: u32,
    row_words: u32,   // words of one stored row: d (f32), or ceil(d / 2) (f16)
    half: u32,        // 1: rows are f16
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> batch: Batch;
@group(0) @binding(2) var<storage, read> features: array<Feature>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read> dense: array<f32>;
@group(0) @binding(5) var<storage, read_write> act: array<Act>;
@group(0) @binding(6) var<storage, read> page0: array<u32>;
@group(0) @binding(7) var<storage, read> page1: array<u32>;
@group(0) @binding(8) var<storage, read> page2: array<u32>;
@group(0) @binding(9) var<storage, read> page3: array<u32>;

fn table(row: u32, k: u32) -> f32 {
    let base = (row % params.rows_per_page) * params.row_words;
    let i = select(base + k, base + k / 2u, params.half != 0u);
    var w: u32;
    switch row / params.rows_per_page {
        case 0u: { w = page0[i]; }
        case 1u: { w = page1[i]; }
        case 2u: { w = page2[i]; }
        default: { w = page3[i]; }
    }
    if params.half != 0u {
        return unpack2x16float(w)[k % 2u];
    }
    return bitcast<f32>(w);
}

@compute @workgroup_size(FLAT_WORKGROUP, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let at = grid_coords(flat_index(gid, nwg), params.n_features, params.d);
    let b = at.x;
    if b >= batch.rows {
        return;
    }
    let f = at.y;
    let k = at.z;
    let feature = features[f];

    var v = 0.0;
    switch feature.kind {
        case KIND_DENSE: {
            v = dense[b * params.n_dense + feature.dense_col] * table(feature.dense_row, k);
        }
        default: {
            let first = b * params.slots + feature.first_slot;
            var count = 0u;
            for (var s = 0u; s < feature.n_slots; s++) {
                let row = ids[first + s];
                if row == NO_ROW {
                    break;
                }
                v += table(row, k);
                count += 1u;
            }
            if feature.mean != 0u && count > 0u {
                v /= f32(count);
            }
        }
    }
    for (var j = 0u; j < min(feature.n_destinations, MAX_DESTINATIONS); j++) {
        let dst = feature.destinations[j];
        act[dst.x + b * dst.y + k] = act_out(v);
    }
}
