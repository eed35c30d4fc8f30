//! How a model's features map onto the gather kernel: its feature table, the id slots of a
//! sample, the split of every embedding table (and the cache) into pages of one global row
//! space, and the encoding of a batch's ids and dense values for upload: the host side of the
//! kernel (`gpu::gather`), which only reads what this lays out.

use bytemuck::Zeroable;

use crate::batch::{Batch, Column};
use crate::error::{Error, Result};
use crate::gpu::gather::{
    row_to_words, row_words, FeatureGpu, GatherParams, MAX_DESTINATIONS, MAX_PAGES, NO_ROW,
};
use crate::gpu::linear::{Precision, View};
use crate::gpu::resolve::{key_gpu, KeyGpu};
use crate::spec::{FeatureKind, ModelSpec, Pooling};
use crate::weights::Weights;

/// How a model's features map onto the kernel: the feature table, the id slots of a sample,
/// and where each table's rows sit in the global row space.
#[derive(Debug, Clone)]
pub struct GatherLayout {
    /// The kernel's feature table: one entry per gathered feature.
    pub features: Vec<FeatureGpu>,
    /// The kernel's parameters.
    pub params: GatherParams,
    /// Per feature of the spec: its index in `features` and the global row of its table's row
    /// 0, or `None` for a feature no later kernel reads (a domain feature without EPNet, a
    /// prior without PPNet), which is neither uploaded nor gathered.
    pub placement: Vec<Option<(usize, u32)>>,
    /// Resident rows (every table in spec order; a hashed feature keeps its default row).
    pub total_rows: u64,
    /// Pages of resident rows, plus one for the embedding cache when there is one.
    pub n_pages: usize,
    /// Global row of cache slot 0: the first row of the page after the resident ones.
    pub cache_base: u32,
    /// Cache slots (0 without hashed features).
    pub cache_rows: u64,
}

impl GatherLayout {
    /// `destinations[f]` lists the views feature `f`'s vector is written to (possibly none);
    /// `max_page_bytes` bounds one page (a storage binding); `cache_rows` is the embedding
    /// cache's capacity (0 without hashed features), which gets a page of its own.
    pub fn new(
        spec: &ModelSpec,
        destinations: &[Vec<View>],
        max_page_bytes: u64,
        cache_rows: u64,
    ) -> Result<Self> {
        Self::with_precision(
            spec,
            destinations,
            max_page_bytes,
            cache_rows,
            Precision::F32,
        )
    }

    /// As [`GatherLayout::new`], with rows stored at `precision`: f16 rows take half the
    /// bytes, so a page (and the cache) holds twice the rows.
    pub fn with_precision(
        spec: &ModelSpec,
        destinations: &[Vec<View>],
        max_page_bytes: u64,
        cache_rows: u64,
        precision: Precision,
    ) -> Result<Self> {
        let d = spec.d();
        let row_words = row_words(d, precision);
        let (mut slots, mut n_dense, mut next_row) = (0u32, 0u32, 0u64);
        let mut features = Vec::new();
        let mut placement = Vec::new();
        for (f, dest) in spec.features.iter().zip(destinations) {
            assert!(
                dest.len() <= MAX_DESTINATIONS,
                "a feature has at most three roles"
            );
            if dest.is_empty() {
                placement.push(None);
                continue;
            }
            placement.push(Some((features.len(), next_row as u32)));
            let mut g = FeatureGpu::zeroed();
            match f.kind {
                FeatureKind::Dense => {
                    g.kind = 2;
                    g.dense_col = n_dense;
                    g.dense_row = next_row as u32;
                    n_dense += 1;
                }
                FeatureKind::Sparse | FeatureKind::MultiHot => {
                    let n = f.max_len.unwrap_or(1) as u32;
                    g.kind = (f.kind == FeatureKind::MultiHot) as u32;
                    g.first_slot = slots;
                    g.n_slots = n;
                    g.mean = (f.pooling == Some(Pooling::Mean)) as u32;
                    g.hashed = f.hashed as u32;
                    slots += n;
                }
            }
            next_row += f.rows() as u64;
            g.n_destinations = dest.len() as u32;
            for (slot, v) in g.destinations.iter_mut().zip(dest) {
                *slot = [v.offset, v.stride, 0, 0];
            }
            features.push(g);
        }
        if features.is_empty() {
            return Err(Error::Gpu(
                "no feature has a destination: there is nothing to gather".into(),
            ));
        }
        let row_bytes = 4 * row_words as u64;
        let page_rows = max_page_bytes / row_bytes;
        if cache_rows > page_rows {
            return Err(Error::Gpu(format!(
                "an embedding cache of {cache_rows} rows of {row_bytes} bytes is larger than one \
                 storage binding ({max_page_bytes} bytes, {page_rows} rows) on this device"
            )));
        }
        let rows_per_page = page_rows
            .min(next_row.max(cache_rows))
            .min(u32::MAX as u64 / 2);
        if rows_per_page == 0 {
            return Err(Error::Gpu(format!(
                "one embedding row ({row_bytes} bytes) is larger than a storage binding ({max_page_bytes} bytes)"
            )));
        }
        let resident_pages = next_row.div_ceil(rows_per_page) as usize;
        let n_pages = resident_pages + (cache_rows > 0) as usize;
        let cache_base = resident_pages as u64 * rows_per_page;
        if n_pages > MAX_PAGES || cache_base + cache_rows >= NO_ROW as u64 {
            return Err(Error::Gpu(format!(
                "the embedding tables hold {next_row} rows (and the cache {cache_rows}) of {row_bytes} \
                 bytes, more than {MAX_PAGES} storage bindings of {max_page_bytes} bytes can hold on \
                 this device"
            )));
        }
        Ok(Self {
            params: GatherParams {
                n_features: features.len() as u32,
                d: d as u32,
                slots,
                n_dense,
                rows_per_page: rows_per_page as u32,
                row_words,
                half: (precision == Precision::F16) as u32,
                _pad: 0,
            },
            features,
            placement,
            total_rows: next_row,
            n_pages,
            cache_base: cache_base as u32,
            cache_rows,
        })
    }

    /// Pages of resident rows (the cache's page, if any, follows them).
    pub fn resident_pages(&self) -> usize {
        self.n_pages - (self.cache_rows > 0) as usize
    }

    /// Per feature of the spec, the global row a hashed feature's unknown ids read (its
    /// default row); 0 for other features. The resolve kernel's `defaults`.
    pub fn default_rows(&self, spec: &ModelSpec) -> Vec<u32> {
        spec.features
            .iter()
            .zip(&self.placement)
            .map(|(f, placed)| match placed {
                Some((_, base)) if f.hashed => *base,
                _ => 0,
            })
            .collect()
    }

    /// Page `p` as the gather kernel reads it: each row as f32 bits, or as f16 pairs padded to
    /// a whole word (ties to even, as every f16 rounding here).
    pub fn page_words(&self, spec: &ModelSpec, weights: &Weights, p: usize) -> Vec<u32> {
        let page = self.page(spec, weights, p);
        if self.params.half == 0 {
            return bytemuck::cast_slice(&page).to_vec();
        }
        page.chunks_exact(spec.d().max(1))
            .flat_map(|row| row_to_words(row, Precision::F16))
            .collect()
    }

    /// Bytes of one stored row.
    pub fn row_bytes(&self) -> u64 {
        4 * self.params.row_words as u64
    }

    /// The f32 contents of page `p`: global rows `p·rows_per_page ..`, every table in spec order.
    pub fn page(&self, spec: &ModelSpec, weights: &Weights, p: usize) -> Vec<f32> {
        let d = spec.d() as u64;
        let per_page = self.params.rows_per_page as u64;
        let (start, end) = (
            p as u64 * per_page,
            ((p as u64 + 1) * per_page).min(self.total_rows),
        );
        let mut out = Vec::with_capacity(((end - start) * d) as usize);
        for (f, placed) in spec.features.iter().zip(&self.placement) {
            let Some((_, base)) = placed else { continue };
            let (base, rows) = (*base as u64, f.rows() as u64);
            let (lo, hi) = (start.max(base), end.min(base + rows));
            if lo >= hi {
                continue;
            }
            if f.hashed {
                // Its one resident row: the stored default, or zeros.
                match weights.hashed(&f.name).and_then(|h| h.default.as_ref()) {
                    Some(v) => out.extend_from_slice(v),
                    None => out.extend(std::iter::repeat_n(0.0, d as usize)),
                }
            } else {
                let data = &weights.get(&crate::weights::names::table(&f.name)).data;
                out.extend_from_slice(
                    &data[((lo - base) * d) as usize..((hi - base) * d) as usize],
                );
            }
        }
        out
    }

    /// Encodes samples `range` of a validated batch: each sample's ids as global rows (unused
    /// multi-hot slots hold [`NO_ROW`]) and its dense values, into `ids` and `dense`. A hashed
    /// feature's ids go to `keys` instead, each with the place in `ids` the resolve kernel fills.
    pub fn encode(
        &self,
        batch: &Batch,
        range: std::ops::Range<usize>,
        ids: &mut Vec<u32>,
        dense: &mut Vec<f32>,
        keys: &mut Vec<KeyGpu>,
    ) {
        let slots = self.params.slots as usize;
        ids.clear();
        dense.clear();
        keys.clear();
        ids.resize(range.len() * slots, NO_ROW);
        for (b, i) in range.enumerate() {
            let sample = &mut ids[b * slots..(b + 1) * slots];
            for (f, (col, placed)) in batch.columns.iter().zip(&self.placement).enumerate() {
                let Some((g, base)) = placed.map(|(g, base)| (&self.features[g], base)) else {
                    continue;
                };
                match col {
                    Column::Dense(v) => dense.push(v[i]),
                    _ if g.hashed != 0 => {
                        let first = b * slots + g.first_slot as usize;
                        for (j, &id) in col.ids(i).iter().enumerate() {
                            keys.push(key_gpu(f, id, (first + j) as u32));
                        }
                    }
                    _ => {
                        let first = g.first_slot as usize;
                        for (slot, &id) in sample[first..].iter_mut().zip(col.ids(i)) {
                            *slot = base + id as u32;
                        }
                    }
                }
            }
        }
    }
}
