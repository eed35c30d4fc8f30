//! The plan assembled from the model's blocks: the packed layout of their dense layers, and
//! their steps in the order of `docs/model.md`. Here, with the blocks, rather than with the
//! plan's types (`crate::plan`), which the blocks build on: the plan knows no block.

use std::collections::HashMap;

use crate::gpu::act::ActStorage;
use crate::gpu::linear::{self, View};
use crate::model::{embedding, epnet, mmoe, ppnet, tower};
use crate::plan::{Builder, Columns, PackedLayout, PackedWeights, Plan, Step};
use crate::spec::ModelSpec;
use crate::weights::Weights;

/// The spec's linear layers in packing order: (layer name, n, k).
fn dense_layers(spec: &ModelSpec) -> Vec<(String, usize, usize)> {
    spec.expected_tensors()
        .into_iter()
        // Embeddings live in pages; a feature may be named "weight", so test the prefix.
        .filter(|(name, _)| !embedding::is_embedding(name))
        .filter_map(|(name, shape)| {
            let layer = name.strip_suffix(".weight")?;
            Some((layer.to_string(), shape[0], shape[1]))
        })
        .collect()
}

impl PackedLayout {
    /// The layout of `spec`'s dense layers, in the order the spec lists their tensors.
    pub fn new(spec: &ModelSpec) -> Self {
        let mut len = 0;
        let mut offsets = HashMap::new();
        for (layer, n, k) in dense_layers(spec) {
            let (w, b, end) = linear::layer_offsets(len, n, k as u32);
            offsets.insert(layer, (w, b));
            len = end;
        }
        Self { offsets, len }
    }

    /// Every dense tensor of the spec, by name, read out of `data` laid out as these weights
    /// are (the weights themselves, their gradients, or an optimizer's moments).
    pub fn unpack(&self, spec: &ModelSpec, data: &[f32]) -> Vec<(String, Vec<f32>)> {
        let mut out = Vec::new();
        for (layer, n, k) in dense_layers(spec) {
            let (w, b) = self.layer(&layer);
            let stride = linear::padded_k(k as u32) as usize;
            let weight = (0..n)
                .flat_map(|r| &data[w as usize + r * stride..][..k])
                .copied()
                .collect();
            out.push((format!("{layer}.weight"), weight));
            out.push((format!("{layer}.bias"), data[b as usize..][..n].to_vec()));
        }
        out
    }

    /// The inverse of [`PackedLayout::unpack`]: `tensor(name)` (of the tensor's shape) for
    /// every dense tensor, laid out as these weights are (padding zero).
    pub fn pack(&self, spec: &ModelSpec, tensor: impl Fn(&str) -> Vec<f32>) -> Vec<f32> {
        let mut data = vec![0.0; self.len];
        for (layer, n, k) in dense_layers(spec) {
            let (w, b) = self.layer(&layer);
            let stride = linear::padded_k(k as u32) as usize;
            for (r, row) in tensor(&format!("{layer}.weight"))
                .chunks_exact(k)
                .enumerate()
            {
                data[w as usize + r * stride..][..k].copy_from_slice(row);
            }
            data[b as usize..][..n].copy_from_slice(&tensor(&format!("{layer}.bias")));
        }
        data
    }
}

impl PackedWeights {
    /// `weights`' dense layers packed as [`PackedLayout::new`] lays them out.
    pub fn new(spec: &ModelSpec, weights: &Weights) -> Self {
        let layout = PackedLayout::new(spec);
        let data = layout.pack(spec, |name| weights.get(name).data.clone());
        Self { layout, data }
    }

    /// [`PackedLayout::unpack`] over this layout.
    pub fn unpack(&self, spec: &ModelSpec, data: &[f32]) -> Vec<(String, Vec<f32>)> {
        self.layout.unpack(spec, data)
    }

    /// [`PackedLayout::pack`] over this layout.
    pub fn pack(&self, spec: &ModelSpec, tensor: impl Fn(&str) -> Vec<f32>) -> Vec<f32> {
        self.layout.pack(spec, tensor)
    }
}

impl Plan {
    /// The forward plan for scoring, over an activation buffer of `storage`.
    pub fn new(
        spec: &ModelSpec,
        layout: &PackedLayout,
        max_rows: u32,
        storage: ActStorage,
    ) -> Self {
        Self::build(spec, layout, max_rows, false, storage)
    }

    /// The forward plan for training: as [`Plan::new`], but EPNet's gate is also kept beside
    /// its product, for the backward pass; activations are f32.
    pub fn for_training(spec: &ModelSpec, layout: &PackedLayout, max_rows: u32) -> Self {
        Self::build(spec, layout, max_rows, true, ActStorage::F32)
    }

    fn build(
        spec: &ModelSpec,
        layout: &PackedLayout,
        max_rows: u32,
        training: bool,
        act_storage: ActStorage,
    ) -> Self {
        let columns = Columns::new(spec, training);
        // The probabilities after the rows, or apart over f16 activations.
        let scores_apart = act_storage == ActStorage::F16;
        let out = View {
            offset: if scores_apart {
                0
            } else {
                max_rows * columns.width
            },
            stride: spec.n_tasks() as u32,
        };
        let b = Builder {
            spec,
            layout,
            columns,
            out,
            scores_apart,
        };
        // Over f16 activations, PPNet's gates are stored centred (see `Plan::centered`).
        let centered = match act_storage {
            ActStorage::F16 => b
                .columns
                .deltas
                .iter()
                .zip(spec.tower_in_widths())
                .map(|(&col, w)| (col, (spec.n_tasks() * w) as u32))
                .collect(),
            ActStorage::F32 => Vec::new(),
        };
        let mut steps = Vec::new();
        if spec.has_hashed() {
            steps.push(Step::Resolve);
        }
        steps.push(Step::Gather);
        for block in [epnet::plan, ppnet::plan, mmoe::plan, tower::plan] {
            steps.extend(block(&b));
        }
        Self {
            row_width: b.columns.width,
            act_storage,
            max_rows,
            out,
            destinations: embedding::destinations(&b),
            grad_sources: embedding::grad_sources(&b),
            steps,
            centered,
        }
    }
}
