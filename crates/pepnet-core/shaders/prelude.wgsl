// What every kernel shares, compiled first into each: the batch-size uniform, the index of a
// thread in a one-dimensional dispatch of FLAT_WORKGROUP-wide workgroups, which spills into y
// past the 65535-workgroup limit of one dimension (the host's `dispatch_flat`), and that index
// split into a thread's place in a [rows, outer, inner] grid.

struct Batch {
    rows: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const FLAT_WORKGROUP: u32 = 256u;

fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * FLAT_WORKGROUP;
}

// Thread `index` of a dispatch over [rows, outer, inner] as (sample, outer, inner); its sample
// may be past the batch (the dispatch rounds up to whole workgroups).
fn grid_coords(index: u32, outer: u32, inner: u32) -> vec3<u32> {
    let per_sample = outer * inner;
    return vec3<u32>(index / per_sample, (index % per_sample) / inner, index % inner);
}
