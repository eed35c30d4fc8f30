//! f64 references of the gather (`shaders/gather.wgsl`) and its backward
//! (`shaders/gather_backward.wgsl`), on the kernels' own layouts.

use crate::gpu::gather::layout::GatherLayout;
use crate::gpu::gather::NO_ROW;

/// The gather: every feature's pooled vector of every sample, written to its destinations.
/// `table(row, k)` reads element k of a global row.
pub fn gather(
    layout: &GatherLayout,
    table: &dyn Fn(u32, usize) -> f64,
    ids: &[u32],
    dense: &[f32],
    rows: usize,
    act: &mut [f64],
) {
    let p = &layout.params;
    let d = p.d as usize;
    for b in 0..rows {
        for f in &layout.features {
            for k in 0..d {
                let v = if f.kind == 2 {
                    dense[b * p.n_dense as usize + f.dense_col as usize] as f64
                        * table(f.dense_row, k)
                } else {
                    let first = b * p.slots as usize + f.first_slot as usize;
                    let rows: Vec<u32> = ids[first..first + f.n_slots as usize]
                        .iter()
                        .copied()
                        .take_while(|&r| r != NO_ROW)
                        .collect();
                    let sum: f64 = rows.iter().map(|&r| table(r, k)).sum();
                    if f.mean != 0 && !rows.is_empty() {
                        sum / rows.len() as f64
                    } else {
                        sum
                    }
                };
                for dst in &f.destinations[..f.n_destinations as usize] {
                    act[dst[0] as usize + b * dst[1] as usize + k] = v;
                }
            }
        }
    }
}

/// The gather's backward (`gather_backward.wgsl`): each touched row's gradient, the sum over
/// its uses of the use's weight times its feature's vector gradient (the sum of the feature's
/// sources, each scaled by its scale view when it has one).
pub fn gather_backward(
    features: &[crate::gpu::gather::backward::FeatureGradGpu],
    uses: &crate::gpu::gather::row_uses::RowUses,
    d: usize,
    act: &[f64],
    grad: &[f64],
) -> Vec<f64> {
    use crate::gpu::gather::backward::NO_VIEW;
    let mut out = vec![0.0; uses.touched.len() * d];
    for u in 0..uses.touched.len() {
        for k in 0..d {
            let range = uses.starts[u] as usize..uses.starts[u + 1] as usize;
            out[u * d + k] = uses.uses[range]
                .iter()
                .map(|x| {
                    let f = &features[x.feature as usize];
                    let s = x.sample as usize;
                    let v: f64 = f.sources[..f.n_sources as usize]
                        .iter()
                        .map(|src| {
                            let g = grad[src[0] as usize + s * src[1] as usize + k];
                            if src[2] == NO_VIEW {
                                g
                            } else {
                                g * act[src[2] as usize + s * src[3] as usize + k]
                            }
                        })
                        .sum();
                    x.weight as f64 * v
                })
                .sum();
        }
    }
    out
}
