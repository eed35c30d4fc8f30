// Embedding-cache lookup: turns each raw 64-bit id of a hashed feature into the global row the
// gather reads, by probing the cache's id→slot index, an open-addressing hash table that lives
// on the GPU. A hit writes the cached row (cache_base + slot); an id the index knows the store
// does not hold (slot UNKNOWN) writes the feature's default row, as does a miss, which is also
// reported, so the host fetches it from the store, inserts it and runs this kernel again before
// the gather reads anything.
//
// One thread per id of the batch. The table is at most half full (live entries), so probe
// chains are short; the loop is bounded by the table size all the same.

const EMPTY: u32 = 0u;          // a tag no live entry has; tombstones (0xffffffff) never match
const MISS: u32 = 0xffffffffu;
const UNKNOWN: u32 = 0xfffffffeu;  // a cached "the store does not hold this id"

struct Params {
    n_keys: u32,
    mask: u32,        // table entries - 1 (a power of two minus one)
    cache_base: u32,  // global row of cache slot 0
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// (tag = feature index + 1, id low word, id high word, position in `ids`)
@group(0) @binding(1) var<storage, read> keys: array<vec4<u32>>;
// (tag, id low word, id high word, slot); tag EMPTY marks a free entry
@group(0) @binding(2) var<storage, read> table: array<vec4<u32>>;
// per feature of the spec, the global row of its default row
@group(0) @binding(3) var<storage, read> defaults: array<u32>;
@group(0) @binding(4) var<storage, read_write> ids: array<u32>;
// per key: its slot, or MISS
@group(0) @binding(5) var<storage, read_write> resolved: array<u32>;

// lowbias32 (Chris Wellons' integer hash); the host computes the same in cache/table.rs.
fn mix(v: u32) -> u32 {
    var x = v;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

fn hash(tag: u32, lo: u32, hi: u32) -> u32 {
    return mix(lo ^ mix(hi ^ mix(tag)));
}

@compute @workgroup_size(FLAT_WORKGROUP, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if i >= params.n_keys {
        return;
    }
    let key = keys[i];
    var slot = MISS;
    let start = hash(key.x, key.y, key.z);
    for (var probe = 0u; probe <= params.mask; probe++) {
        let entry = table[(start + probe) & params.mask];
        if entry.x == EMPTY {
            break;
        }
        if entry.x == key.x && entry.y == key.y && entry.z == key.z {
            slot = entry.w;
            break;
        }
    }
    resolved[i] = slot;
    if slot == MISS || slot == UNKNOWN {
        ids[key.w] = defaults[key.x - 1u];
    } else {
        ids[key.w] = params.cache_base + slot;
    }
}
