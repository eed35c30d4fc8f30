//! f64 reference of the cache lookup (`shaders/resolve.wgsl`): a search of every entry.

/// The cache lookup: each key's slot in `table` (searched entry by entry, not probed), or
/// MISS; its place in `ids` gets `cache_base + slot`, or its feature's default row (for a
/// miss, and for an entry whose slot is UNKNOWN).
pub fn resolve(
    keys: &[[u32; 4]],
    table: &[[u32; 4]],
    defaults: &[u32],
    cache_base: u32,
    ids: &mut [u32],
) -> Vec<u32> {
    use crate::gpu::resolve::table::{EMPTY, TOMBSTONE};
    keys.iter()
        .map(|k| {
            let found = table
                .iter()
                .find(|e| !matches!(e[0], EMPTY | TOMBSTONE) && e[..3] == k[..3]);
            match found {
                Some(e) if e[3] == crate::gpu::resolve::UNKNOWN => {
                    ids[k[3] as usize] = defaults[k[0] as usize - 1];
                    e[3]
                }
                Some(e) => {
                    ids[k[3] as usize] = cache_base + e[3];
                    e[3]
                }
                None => {
                    ids[k[3] as usize] = defaults[k[0] as usize - 1];
                    crate::gpu::resolve::MISS
                }
            }
        })
        .collect()
}
