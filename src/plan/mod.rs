//! The forward pass as a fixed list of GPU steps, derived once from the spec: where every
//! activation lives, where each feature's vector is gathered to, and which linear problems run
//! in which dispatch. It reads top to bottom like `docs/model.md`.
//!
//! Activations are interleaved per sample: sample m owns one row of `row_width` slots (f32s, or
//! f16s when scoring at f16) of the activation buffer, and each block of the model (EPNet input,
//! O_ep, each gate's output, each tower layer of every task) owns a range of columns in it. The
//! T probabilities of the batch are one compact `[rows, T]` block of f32s, after the rows, or in
//! a buffer of their own over f16 activations; the readback is one contiguous copy either way.

pub mod gather;
pub mod row_uses;

use std::collections::HashMap;

use crate::gpu::act::ActStorage;
use crate::gpu::linear::{self, Activation, LinearProblem, View};
use crate::gpu::mmoe_mix::MixParams;
use crate::model::{embedding, epnet, mmoe, ppnet, tower};
use crate::spec::{ModelSpec, Role};
use crate::weights::Weights;

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
        label: String,
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
    offsets: HashMap<String, (u32, u32)>,
    /// Floats in the packed buffer.
    pub len: usize,
}

/// Dense weights packed as [`PackedLayout`] says.
#[derive(Debug, Clone)]
pub struct PackedWeights {
    pub layout: PackedLayout,
    pub data: Vec<f32>,
}

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

    /// Offsets of `{layer}.weight` and `{layer}.bias`.
    fn layer(&self, layer: &str) -> (u32, u32) {
        self.offsets[layer]
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
    pub fn new(spec: &ModelSpec, weights: &Weights) -> Self {
        let layout = PackedLayout::new(spec);
        let data = layout.pack(spec, |name| weights.get(name).data.clone());
        Self { layout, data }
    }

    pub fn unpack(&self, spec: &ModelSpec, data: &[f32]) -> Vec<(String, Vec<f32>)> {
        self.layout.unpack(spec, data)
    }

    pub fn pack(&self, spec: &ModelSpec, tensor: impl Fn(&str) -> Vec<f32>) -> Vec<f32> {
        self.layout.pack(spec, tensor)
    }
}

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
    pub steps: Vec<Step>,
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

    /// Where the probabilities start in their buffer, in bytes.
    pub fn out_byte_offset(&self) -> u64 {
        self.out.offset as u64 * 4
    }

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
        let c = Columns::new(spec, training);
        let stride = c.width;
        let at = |col: u32| View {
            offset: col,
            stride,
        };
        let t_count = spec.n_tasks() as u32;
        let gamma = spec.gate_gamma as f32;
        let (dg, dd, dp) = (spec.dg() as u32, spec.dd() as u32, spec.dp() as u32);
        let w_in: Vec<u32> = spec.tower_in_widths().iter().map(|&w| w as u32).collect();
        let w_out: Vec<u32> = spec.tower_out_widths().iter().map(|&w| w as u32).collect();
        // The probabilities after the rows, or apart over f16 activations.
        let scores_apart = act_storage == ActStorage::F16;
        let out = View {
            offset: if scores_apart { 0 } else { max_rows * stride },
            stride: t_count,
        };
        let problem = |layer: &str, a: View, k: u32, n: u32, y: View, activation| {
            let (w_offset, bias_offset) = layout.layer(layer);
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
                gamma,
                f32_out: false,
            }
        };

        // Where each feature's vector goes: E into the EPNet input (or straight into O_ep's
        // place without EPNet), E_d into the EPNet input, E_p in front of O_ep for PPNet.
        let [general, domain, prior] =
            [Role::General, Role::Domain, Role::Prior].map(|r| spec.role_offsets(r));
        let destinations = (0..spec.features.len())
            .map(|f| {
                let mut dest = Vec::new();
                if let Some(off) = general[f] {
                    dest.push(at(match c.ep_in {
                        Some(ep_in) => ep_in + dd + off as u32,
                        None => c.o_ep + off as u32,
                    }));
                }
                if let (Some(off), Some(ep_in)) = (domain[f], c.ep_in) {
                    dest.push(at(ep_in + off as u32));
                }
                if let (Some(off), true) = (prior[f], spec.ppnet.is_some()) {
                    dest.push(at(c.x0 + off as u32));
                }
                dest
            })
            .collect();
        // Where each destination's gradient is read in the backward pass: the same place, but
        // for E under EPNet, whose gradient arrives through O_ep = δ ⊙ E as dO_ep ⊙ δ (its
        // place in the gate's input gets none: a stop-gradient).
        let grad_sources = (0..spec.features.len())
            .map(|f| {
                let mut src = Vec::new();
                if let Some(off) = general[f] {
                    let off = off as u32;
                    src.push(match c.ep_gate {
                        Some(gate) => (at(c.o_ep + off), Some(at(gate + off))),
                        None => (at(c.o_ep + off), None),
                    });
                }
                if let (Some(off), Some(ep_in)) = (domain[f], c.ep_in) {
                    src.push((at(ep_in + off as u32), None));
                }
                if let (Some(off), true) = (prior[f], spec.ppnet.is_some()) {
                    src.push((at(c.x0 + off as u32), None));
                }
                src
            })
            .collect();

        let mut steps = Vec::new();
        if spec.has_hashed() {
            steps.push(Step::Resolve);
        }
        steps.push(Step::Gather);

        // EPNet: O_ep = GateNU_ep(E_d ⊕ E) ⊙ E, the product fused into fc2's epilogue.
        if let (Some(g), Some(ep_in), Some(ep_hidden)) = (spec.epnet, c.ep_in, c.ep_hidden) {
            let h = g.hidden as u32;
            let mut fc1 = problem(
                epnet::FC1,
                at(ep_in),
                dd + dg,
                h,
                at(ep_hidden),
                Activation::Relu,
            );
            // The gate reads E_d ⊕ sg(E): only E_d's columns get a gradient.
            fc1.grad_k = dd;
            let mut fc2 = problem(
                epnet::FC2,
                at(ep_hidden),
                h,
                dg,
                at(c.o_ep),
                Activation::Gate,
            );
            fc2.multiplier = Some(at(ep_in + dd));
            fc2.keep = c.ep_gate.map(at);
            steps.push(Step::Linear {
                label: "epnet.fc1".into(),
                problems: vec![fc1],
            });
            steps.push(Step::Linear {
                label: "epnet.fc2".into(),
                problems: vec![fc2],
            });
        }

        // PPNet: all L+1 gates read E_p ⊕ O_ep; their fc1s run in one dispatch, fc2s in another.
        if let (Some(g), Some(pp_hidden)) = (spec.ppnet, c.pp_hidden) {
            let h = g.hidden as u32;
            let fc1 = (0..w_in.len())
                .map(|l| {
                    let y = at(pp_hidden + l as u32 * h);
                    let mut fc1 =
                        problem(&ppnet::fc1(l), at(c.x0), dp + dg, h, y, Activation::Relu);
                    // The gates read E_p ⊕ sg(O_ep): only E_p's columns get a gradient.
                    fc1.grad_k = dp;
                    fc1
                })
                .collect();
            let fc2 = (0..w_in.len())
                .map(|l| {
                    let a = at(pp_hidden + l as u32 * h);
                    let y = at(c.deltas[l]);
                    problem(&ppnet::fc2(l), a, h, t_count * w_in[l], y, Activation::Gate)
                })
                .collect();
            steps.push(Step::Linear {
                label: "ppnet.fc1".into(),
                problems: fc1,
            });
            steps.push(Step::Linear {
                label: "ppnet.fc2".into(),
                problems: fc2,
            });
        }

        // MMoE: each depth of all experts in one dispatch (with the task gates beside depth 0),
        // then the softmax mix.
        if let Some(e) = &spec.experts {
            let k_count = e.count as u32;
            let mut n_in = dg;
            for (j, &w) in e.hidden.iter().enumerate() {
                let w = w as u32;
                let mut problems: Vec<LinearProblem> = (0..k_count)
                    .map(|k| {
                        let a = if j == 0 {
                            at(c.o_ep)
                        } else {
                            at(c.experts[j - 1] + k * n_in)
                        };
                        let y = at(c.experts[j] + k * w);
                        problem(&mmoe::expert(k, j), a, n_in, w, y, Activation::Relu)
                    })
                    .collect();
                if j == 0 {
                    for (t, task) in spec.tasks.iter().enumerate() {
                        let y = at(c.gate_logits + t as u32 * k_count);
                        problems.push(problem(
                            &mmoe::gate(task),
                            at(c.o_ep),
                            dg,
                            k_count,
                            y,
                            Activation::None,
                        ));
                    }
                }
                steps.push(Step::Linear {
                    label: format!("experts.{j}"),
                    problems,
                });
                n_in = w;
            }
            let last = *c.experts.last().expect("validated: experts have layers");
            steps.push(Step::MmoeMix(MixParams {
                experts: k_count,
                tasks: t_count,
                width: n_in,
                x_off: last,
                x_stride: stride,
                logit_off: c.gate_logits,
                logit_stride: stride,
                y_off: c.mixed.expect("allocated with experts"),
                y_stride: stride,
                _pad: [0; 3],
            }));
        }

        // Towers: layer l of every task in one dispatch; PPNet's δ_t(l) scales the input as it
        // is loaded; the last layer writes probabilities.
        let last = w_in.len() - 1;
        for l in 0..=last {
            let problems = spec
                .tasks
                .iter()
                .enumerate()
                .map(|(t, task)| {
                    let t = t as u32;
                    let a = match (l, c.mixed) {
                        (0, None) => at(c.o_ep),
                        (0, Some(mixed)) => at(mixed + t * w_in[0]),
                        _ => at(c.hidden[l - 1] + t * w_in[l]),
                    };
                    let (y, activation) = if l < last {
                        (at(c.hidden[l] + t * w_out[l]), Activation::Relu)
                    } else {
                        (
                            View {
                                offset: out.offset + t,
                                stride: out.stride,
                            },
                            Activation::Sigmoid,
                        )
                    };
                    let mut p =
                        problem(&tower::layer(task, l), a, w_in[l], w_out[l], y, activation);
                    if spec.ppnet.is_some() {
                        p.gate = Some(at(c.deltas[l] + t * w_in[l]));
                    }
                    p.f32_out = l == last && scores_apart;
                    p
                })
                .collect();
            steps.push(Step::Linear {
                label: format!("towers.{l}"),
                problems,
            });
        }

        Self {
            row_width: stride,
            act_storage,
            max_rows,
            out,
            destinations,
            grad_sources,
            steps,
        }
    }
}

/// Column ranges of one sample's activation row.
struct Columns {
    width: u32,
    /// E_d ⊕ E (EPNet only).
    ep_in: Option<u32>,
    /// EPNet's gate δ_ep, kept beside O_ep = δ_ep ⊙ E when training.
    ep_gate: Option<u32>,
    ep_hidden: Option<u32>,
    /// E_p ⊕ O_ep: PPNet's gate input (E_p only with PPNet).
    x0: u32,
    o_ep: u32,
    /// The L+1 gates' hidden layers, side by side (PPNet only).
    pp_hidden: Option<u32>,
    /// δ(l), T·w_l wide, for l = 0..L (PPNet only).
    deltas: Vec<u32>,
    /// Per expert depth j, the K experts' outputs side by side.
    experts: Vec<u32>,
    /// T·K gate logits (MMoE only).
    gate_logits: u32,
    /// H(0), T·w_0 wide: each task's mix of the experts (MMoE only; else towers read O_ep).
    mixed: Option<u32>,
    /// H(l), T·w_l wide, for l = 1..L.
    hidden: Vec<u32>,
}

impl Columns {
    fn new(spec: &ModelSpec, training: bool) -> Self {
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
