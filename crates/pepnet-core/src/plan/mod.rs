//! The forward pass as a fixed list of GPU steps, derived once from the spec: where every
//! activation lives, where each feature's vector is gathered to, and which linear problems run
//! in which dispatch. Each block of the model plans its own steps (`plan` in
//! `model::{epnet, ppnet, mmoe, tower}`, the gather's destinations in `model::embedding`) from
//! a [`Builder`]; `assemble` runs them in the order of `docs/model.md`. This module holds the
//! plan's types, which the blocks build on; `assemble` holds what needs the blocks.
//!
//! Activations are interleaved per sample: sample m owns one row of `row_width` slots (f32s, or
//! f16s when scoring at f16) of the activation buffer, and each block of the model (EPNet input,
//! O_ep, each gate's output, each tower layer of every task) owns a range of columns in it. The
//! T probabilities of the batch are one compact `[rows, T]` block of f32s, after the rows, or in
//! a buffer of their own over f16 activations; the readback is one contiguous copy either way.

use std::collections::HashMap;

use crate::gpu::act::ActStorage;
use crate::gpu::linear::{self, Activation, LinearProblem, ProblemGpu, View};
use crate::gpu::mmoe_mix::MixParams;
use crate::spec::ModelSpec;

/// One dispatch of the forward pass.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Resolve hashed features' raw ids to rows through the embedding cache's index (only
    /// when the spec has hashed features).
    Resolve,
    /// Gather and pool every feature into its destinations.
    Gather,
    /// A group of linear problems in one dispatch.
    Linear {
        /// The layer it runs, for reports and GPU labels (`epnet.fc1`, `experts.0`...).
        label: String,
        /// The problems, in the order the dispatch lays them out.
        problems: Vec<LinearProblem>,
    },
    /// MMoE's softmax-weighted mix of the experts.
    MmoeMix(MixParams),
}

/// Where each dense layer (every tensor but the embeddings) lies in the one packed buffer
/// [`linear::pack_layer`] writes: computed from the spec alone, so planning needs no weights.
#[derive(Debug, Clone)]
pub struct PackedLayout {
    /// Per linear layer, the offsets of its weight and bias.
    pub(crate) offsets: HashMap<String, (u32, u32)>,
    /// Floats in the packed buffer.
    pub len: usize,
}

/// Dense weights packed as [`PackedLayout`] says.
#[derive(Debug, Clone)]
pub struct PackedWeights {
    /// Where each layer lies in `data`.
    pub layout: PackedLayout,
    /// The packed buffer, `layout.len` f32s.
    pub data: Vec<f32>,
}

impl PackedLayout {
    /// Offsets of `{layer}.weight` and `{layer}.bias`.
    pub(crate) fn layer(&self, layer: &str) -> (u32, u32) {
        self.offsets[layer]
    }
}

/// The forward pass's GPU steps and the activation buffer's layout they read and write.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Slots per sample row of the activation buffer.
    pub row_width: u32,
    /// What a slot of the activation buffer is (f32, or f16 when scoring at f16); views are
    /// in slots.
    pub act_storage: ActStorage,
    /// Rows the activation buffer holds: the largest batch one pass scores.
    pub max_rows: u32,
    /// Where the `[rows, T]` probabilities are: after the rows in the activation buffer over
    /// f32 storage; over f16 storage, in an f32 scores buffer of their own (see
    /// [`Plan::scores_apart`]).
    pub out: View,
    /// Per feature, the views its vector is gathered into.
    pub destinations: Vec<Vec<View>>,
    /// Per feature, where the backward pass reads its vector's gradient: per destination, a
    /// view of the gradient buffer and an optional view of the activations to scale it by.
    pub grad_sources: Vec<Vec<(View, Option<View>)>>,
    /// The dispatches, in execution order.
    pub steps: Vec<Step>,
    /// Over f16 activations, the column ranges of the PPNet gates, `(first column, columns)`:
    /// δ ∈ (0, γ) is stored there as δ − γ/2, whose f16 rounding error is at most half of δ's
    /// (2^-11·γ/2 against 2^-11·γ), and far less for the gates near γ/2. A gated tower input is
    /// the product of two stored values, each rounded to f16, rounded again as the products
    /// stage it; with δ rounded whole the worst probability error on random specs reached
    /// 2.3e-3, past the f16 test's 2e-3 (1.9e-3 centred). Still one f16: no extra traffic.
    /// Empty over f32 activations.
    pub centered: Vec<(u32, u32)>,
}

impl Plan {
    /// f32s of activation buffer one sample needs in a scoring or a training plan at f32 (a
    /// training plan's rows are wider: see its `row_width`).
    pub fn floats_per_sample_for(spec: &ModelSpec, training: bool) -> u64 {
        Columns::new(spec, training).width as u64 + spec.n_tasks() as u64
    }

    /// Bytes of activation buffer one sample needs when scoring over `storage` (its row, and
    /// its probabilities as f32s).
    pub fn act_bytes_per_sample(spec: &ModelSpec, storage: ActStorage) -> u64 {
        Columns::new(spec, false).width as u64 * storage.bytes() + 4 * spec.n_tasks() as u64
    }

    /// Whether the probabilities have a buffer of their own (over f16 activations, so that
    /// they keep f32's resolution) rather than following the rows in the activation buffer.
    pub fn scores_apart(&self) -> bool {
        self.act_storage == ActStorage::F16
    }

    /// Bytes of the activation buffer: `max_rows` rows, then the probabilities unless they
    /// are apart.
    pub fn act_bytes(&self) -> u64 {
        let rows = self.max_rows as u64 * self.row_width as u64;
        match self.scores_apart() {
            true => rows * self.act_storage.bytes(),
            false => (rows + self.max_rows as u64 * self.out.stride as u64) * 4,
        }
    }

    /// A linear step's problems laid out for the GPU ([`linear::lay_out`]), flagged where they
    /// write or read the centred gates (see [`Plan::centered`]): PPNet's fc2 writes them, the
    /// towers read them as G.
    pub fn lay_out(&self, problems: &[LinearProblem]) -> (Vec<ProblemGpu>, u32) {
        let (mut gpu, tiles) = linear::lay_out(problems);
        let centered = |v: View, width: u32| {
            self.centered
                .iter()
                .any(|&(first, len)| v.offset >= first && v.offset + width <= first + len)
        };
        for (g, p) in gpu.iter_mut().zip(problems) {
            // Probabilities go to a buffer of their own: their view is not a column range.
            if !p.f32_out && centered(p.y, p.n) {
                g.flags |= linear::FLAG_Y_CENTERED;
            }
            if p.gate.is_some_and(|gate| centered(gate, p.k)) {
                g.flags |= linear::FLAG_G_CENTERED;
            }
        }
        (gpu, tiles)
    }

    /// Where the probabilities start in their buffer, in bytes.
    pub fn out_byte_offset(&self) -> u64 {
        self.out.offset as u64 * 4
    }
}

/// What each block's part of the plan is made from: the spec, where the columns of a sample's
/// row are, and how a layer of the packed weights becomes a linear problem.
pub(crate) struct Builder<'a> {
    pub spec: &'a ModelSpec,
    pub(crate) layout: &'a PackedLayout,
    pub columns: Columns,
    /// Where the `[rows, T]` probabilities go.
    pub out: View,
    /// Whether they go to a buffer of their own, as f32s (over f16 activations).
    pub scores_apart: bool,
}

impl Builder<'_> {
    /// Column `col` of every sample's row.
    pub fn at(&self, col: u32) -> View {
        View {
            offset: col,
            stride: self.columns.width,
        }
    }

    /// Layer `layer` (`[n, k]`) reading `a` and writing `y` through `activation`; no gate or
    /// multiplier, every input column gets a gradient.
    pub fn problem(
        &self,
        layer: &str,
        (a, k): (View, u32),
        (y, n): (View, u32),
        activation: Activation,
    ) -> LinearProblem {
        let (w_offset, bias_offset) = self.layout.layer(layer);
        LinearProblem {
            grad_k: k,
            a,
            gate: None,
            multiplier: None,
            keep: None,
            y,
            w_offset,
            bias_offset,
            n,
            k,
            activation,
            gamma: self.spec.gate_gamma as f32,
            f32_out: false,
        }
    }
}

/// Column ranges of one sample's activation row.
pub(crate) struct Columns {
    pub width: u32,
    /// E_d ⊕ E (EPNet only).
    pub ep_in: Option<u32>,
    /// EPNet's gate δ_ep, kept beside O_ep = δ_ep ⊙ E when training.
    pub ep_gate: Option<u32>,
    pub ep_hidden: Option<u32>,
    /// E_p ⊕ O_ep: PPNet's gate input (E_p only with PPNet).
    pub x0: u32,
    pub o_ep: u32,
    /// The L+1 gates' hidden layers, side by side (PPNet only).
    pub pp_hidden: Option<u32>,
    /// δ(l), T·w_l wide, for l = 0..L (PPNet only).
    pub deltas: Vec<u32>,
    /// Per expert depth j, the K experts' outputs side by side.
    pub experts: Vec<u32>,
    /// T·K gate logits (MMoE only).
    pub gate_logits: u32,
    /// H(0), T·w_0 wide: each task's mix of the experts (MMoE only; else towers read O_ep).
    pub mixed: Option<u32>,
    /// H(l), T·w_l wide, for l = 1..L.
    pub hidden: Vec<u32>,
}

impl Columns {
    pub(crate) fn new(spec: &ModelSpec, training: bool) -> Self {
        let mut width = 0u32;
        let mut alloc = |w: usize| {
            let col = width;
            width += w as u32;
            col
        };
        let t = spec.n_tasks();
        let (dg, dd, dp) = (spec.dg(), spec.dd(), spec.dp());
        let w_in = spec.tower_in_widths();
        let ep_in = spec.epnet.map(|_| alloc(dd + dg));
        let ep_hidden = spec.epnet.map(|g| alloc(g.hidden));
        let ep_gate = spec.epnet.filter(|_| training).map(|_| alloc(dg));
        let x0 = alloc(if spec.ppnet.is_some() { dp } else { 0 } + dg);
        let o_ep = x0 + if spec.ppnet.is_some() { dp as u32 } else { 0 };
        let pp_hidden = spec.ppnet.map(|g| alloc(g.hidden * w_in.len()));
        let deltas = match spec.ppnet {
            Some(_) => w_in.iter().map(|&w| alloc(t * w)).collect(),
            None => Vec::new(),
        };
        let (experts, gate_logits) = match &spec.experts {
            Some(e) => (
                e.hidden.iter().map(|&w| alloc(e.count * w)).collect(),
                alloc(t * e.count),
            ),
            None => (Vec::new(), 0),
        };
        let mixed = spec.experts.as_ref().map(|_| alloc(t * w_in[0]));
        let hidden = w_in[1..].iter().map(|&w| alloc(t * w)).collect();
        Self {
            width,
            ep_in,
            ep_gate,
            ep_hidden,
            x0,
            o_ep,
            pp_hidden,
            deltas,
            experts,
            gate_logits,
            mixed,
            hidden,
        }
    }
}

impl Step {
    /// A short name for reports: the kernel, or a linear step's layer.
    pub fn label(&self) -> &str {
        match self {
            Step::Resolve => "resolve",
            Step::Gather => "gather",
            Step::Linear { label, .. } => label,
            Step::MmoeMix(_) => "mmoe_mix",
        }
    }

    /// Problems (independent matrix products) the dispatch runs.
    pub fn problems(&self) -> usize {
        match self {
            Step::Linear { problems, .. } => problems.len(),
            _ => 1,
        }
    }

    /// Floating-point operations per sample: a multiply-add counts two.
    pub fn flops_per_sample(&self) -> u64 {
        match self {
            Step::Resolve | Step::Gather => 0,
            Step::Linear { problems, .. } => {
                problems.iter().map(|p| 2 * p.n as u64 * p.k as u64).sum()
            }
            Step::MmoeMix(m) => 2 * m.tasks as u64 * m.width as u64 * m.experts as u64,
        }
    }

    /// Weight bytes the dispatch must read once per batch at `precision`: at f16 the
    /// matrices are read as f16, the biases as f32.
    pub fn weight_bytes_at(&self, precision: crate::gpu::linear::Precision) -> u64 {
        match (self, precision) {
            (Step::Linear { problems, .. }, crate::gpu::linear::Precision::F16) => problems
                .iter()
                .map(|p| 2 * p.n as u64 * p.k as u64 + 4 * p.n as u64)
                .sum(),
            _ => self.weight_bytes(),
        }
    }

    /// Weight bytes the dispatch must read once per batch (f32).
    pub fn weight_bytes(&self) -> u64 {
        match self {
            Step::Linear { problems, .. } => problems
                .iter()
                .map(|p| 4 * (p.n as u64 * p.k as u64 + p.n as u64))
                .sum(),
            _ => 0,
        }
    }

    /// Activation bytes per sample the dispatch must read (inputs, gates, multipliers) and write.
    pub fn activation_bytes_per_sample(&self, spec: &ModelSpec, storage: ActStorage) -> u64 {
        let b = storage.bytes();
        match self {
            // Per id slot of a hashed feature: its key in, about one 16-byte entry probed (the
            // table is at most half full), the row index and the hit/miss result out.
            Step::Resolve => {
                let slots: usize = spec
                    .features
                    .iter()
                    .filter(|f| f.hashed)
                    .map(|f| f.max_len.unwrap_or(1))
                    .sum();
                40 * slots as u64
            }
            // Each feature's ids or value in (4 bytes), each destination's d values out.
            Step::Gather => {
                4 * spec.features.len() as u64 + b * (spec.dg() + spec.dd() + spec.dp()) as u64
            }
            // A, G and M in, Y out (probabilities as f32s).
            Step::Linear { problems, .. } => problems
                .iter()
                .map(|p| {
                    let reads = p.k as u64 * (1 + p.gate.is_some() as u64)
                        + p.n as u64 * p.multiplier.is_some() as u64;
                    let out = if p.f32_out { 4 } else { b };
                    b * reads + out * p.n as u64
                })
                .sum(),
            Step::MmoeMix(m) => {
                b * (m.experts as u64 * m.width as u64
                    + (m.tasks * m.experts) as u64
                    + (m.tasks * m.width) as u64)
            }
        }
    }
}
