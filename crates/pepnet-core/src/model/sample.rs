//! One sample through every block in f64: the forward runs the blocks in the order of
//! `docs/model.md` and records each one's tape; the backward walks the tapes in reverse. The
//! reference forward ([`crate::reference`]) and the gradient ([`crate::grad`]) are both this.

use super::{dense, embedding, epnet, mmoe, ppnet, tower, Model};
use crate::batch::Batch;
use crate::gpu::linear::Precision;
use crate::model::gradients::Gradients;
use crate::spec::Role;

/// Values held by the stop-gradients instead of the sample's own: E as EPNet's gate reads it,
/// O_ep as PPNet's gates read it.
#[derive(Debug, Clone, Copy)]
pub struct StopGradients<'a> {
    /// E as EPNet's gate reads it.
    pub e: &'a [f64],
    /// O_ep as PPNet's gates read it.
    pub o_ep: &'a [f64],
}

/// What one sample's forward computed, block by block.
#[derive(Debug, Clone)]
pub struct Tape {
    /// E (EPNet's and PPNet's tapes hold E_d and E_p, within their gates' inputs).
    pub e: Vec<f64>,
    epnet: Option<epnet::Tape>,
    /// EPNet's output, or E without EPNet.
    pub o_ep: Vec<f64>,
    ppnet: Option<ppnet::Tape>,
    mmoe: Option<mmoe::Tape>,
    towers: Vec<tower::Tape>,
    /// The T probabilities.
    pub probs: Vec<f64>,
}

/// Sample `i` of `batch` (validated against the spec) through every block, as the kernels of
/// `precision` compute it; the stop-gradients' inputs from `stop` when given.
pub fn forward(
    model: &Model,
    batch: &Batch,
    i: usize,
    stop: Option<StopGradients>,
    precision: Precision,
) -> Tape {
    let (spec, w) = (&model.spec, &model.weights);
    let e = embedding::concat(model, batch, i, Role::General);
    let e_d = embedding::concat(model, batch, i, Role::Domain);
    let e_p = embedding::concat(model, batch, i, Role::Prior);
    let (o_ep, epnet) = match spec.epnet {
        Some(_) => {
            let e_in = stop.map_or(&e[..], |s| s.e);
            let (o, tape) = epnet::forward(w, spec.gate_gamma, (&e, &e_d, e_in), precision);
            (o, Some(tape))
        }
        None => (e.clone(), None),
    };
    let ppnet = spec.ppnet.map(|_| {
        let o_in = stop.map_or(&o_ep[..], |s| s.o_ep);
        ppnet::forward(w, spec, (&e_p, o_in), precision)
    });
    let (h0, mmoe) = match spec.experts {
        Some(_) => {
            let (h0, tape) = mmoe::forward(w, spec, &o_ep, precision);
            (h0, Some(tape))
        }
        None => (vec![o_ep.clone(); spec.n_tasks()], None),
    };
    let (probs, towers) = h0
        .into_iter()
        .enumerate()
        .map(|(t, h)| tower::forward(w, spec, (t, h), ppnet.as_ref(), precision))
        .unzip();
    Tape {
        e,
        epnet,
        o_ep,
        ppnet,
        mmoe,
        towers,
        probs,
    }
}

/// From the gradient of each task's logit, adds every parameter's gradient for sample `i` to
/// `g`, walking `tape` back: towers, PPNet, MMoE, EPNet, the embedding rows.
pub fn backward(
    model: &Model,
    batch: &Batch,
    i: usize,
    tape: &Tape,
    d_logits: &[f64],
    g: &mut Gradients,
    weight_grad: Precision,
) {
    let (spec, w) = (&model.spec, &model.weights);
    let pp = tape.ppnet.as_ref();
    let mut d_deltas: Vec<Vec<f64>> = spec
        .tower_in_widths()
        .iter()
        .map(|&wl| vec![0.0; spec.n_tasks() * wl])
        .collect();
    let d_h0: Vec<Vec<f64>> = tape
        .towers
        .iter()
        .zip(d_logits)
        .enumerate()
        .map(|(t, (tower, &d))| {
            tower::backward(w, g, spec, (t, tower, pp), d, &mut d_deltas, weight_grad)
        })
        .collect();
    let d_e_p = pp.map(|pp| ppnet::backward(w, g, spec, pp, &d_deltas, weight_grad));
    let d_o = match &tape.mmoe {
        Some(mmoe) => mmoe::backward(w, g, spec, (mmoe, &tape.o_ep), &d_h0, weight_grad),
        None => {
            let mut d_o = vec![0.0; tape.o_ep.len()];
            d_h0.iter().for_each(|dh| dense::add_into(&mut d_o, dh));
            d_o
        }
    };
    let (d_e, d_e_d) = match &tape.epnet {
        Some(ep) => {
            let (d_e, d_e_d) =
                epnet::backward(w, g, (ep, &tape.e), &d_o, spec.gate_gamma, weight_grad);
            (d_e, Some(d_e_d))
        }
        None => (d_o, None),
    };
    embedding::backward(
        spec,
        batch,
        i,
        [Some(&d_e), d_e_d.as_deref(), d_e_p.as_deref()],
        g,
    );
}
