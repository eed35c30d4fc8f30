//! Reference of the scatter (`shaders/scatter.wgsl`).

/// The scatter: record i of `src` (`width` words) to record `index[i]` of `dst`.
pub fn scatter(index: &[u32], src: &[u32], width: usize, dst: &mut [u32]) {
    for (i, &at) in index.iter().enumerate() {
        let at = at as usize * width;
        dst[at..at + width].copy_from_slice(&src[i * width..(i + 1) * width]);
    }
}
