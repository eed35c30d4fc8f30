//! pepnet: a GPU-native engine for PEPNet (Kuaishou's Parameter and Embedding Personalized
//! Network, KDD 2023), with hand-written WGSL kernels on wgpu.
//!
//! Data flows one way: input file → [`Batch`] (feature ids per column) → GPU buffers → kernels
//! → probabilities. Load a [`Model`], open a [`GpuContext`], build an [`Engine`], and call
//! [`Engine::score`]; [`reference::forward`] computes the same thing in f64 on the CPU.

mod atomic_file;
pub use atomic_file::{
    check_output_dir, check_output_file, remove_unfinished_on_interrupt, write_file,
};
pub mod batch;
pub mod batcher;
pub mod cache;
pub mod datagen;
pub mod engine;
pub mod error;
pub mod eval;
pub mod forward;
pub mod gpu;
pub mod grad;
pub mod io;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod plan;
pub mod reference;
pub mod serve;
pub mod spec;
pub mod store;
pub mod synth;
pub mod tools;
pub mod train;
pub mod weights;

pub use batch::{Batch, Column};
pub use batcher::{Batcher, BatcherOptions};
pub use engine::{Engine, EngineOptions};
pub use error::{Error, Result};
pub use gpu::GpuContext;
pub use model::Model;
pub use spec::ModelSpec;
pub use weights::Weights;
