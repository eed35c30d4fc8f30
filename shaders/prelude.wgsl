// What every kernel shares, compiled first into each: the batch-size uniform, and the index of a
// thread in a one-dimensional dispatch of FLAT_WORKGROUP-wide workgroups, which spills into y
// past the 65535-workgroup limit of one dimension (the host's `dispatch_flat`).

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
