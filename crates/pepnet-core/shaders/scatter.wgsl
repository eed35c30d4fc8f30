// Scatter of fixed-width records: record i of `src` (`width` words) goes to record `index[i]`
// of `dst`. The embedding cache uses it to apply, in one dispatch each, the hash-table entries
// and the embedding rows that a batch's misses (or a live update) changed, instead of one
// small buffer write per entry. Words are copied as bits, so f32 rows and u32 entries alike.
//
// One thread per word.

struct Params {
    count: u32,  // records
    width: u32,  // words per record
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> index: array<u32>;
@group(0) @binding(2) var<storage, read> src: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<u32>;

@compute @workgroup_size(FLAT_WORKGROUP, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = flat_index(gid, nwg);
    let r = w / params.width;
    if r >= params.count {
        return;
    }
    let k = w % params.width;
    dst[index[r] * params.width + k] = src[w];
}
