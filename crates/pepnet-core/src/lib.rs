//! pepnet-core: the GPU engine of pepnet, PEPNet (Kuaishou's Parameter and Embedding
//! Personalized Network, KDD 2023) with hand-written WGSL kernels on wgpu. It depends on the GPU
//! stack alone (wgpu, bytemuck, half, safetensors, serde): no file formats, servers, network
//! clients or async runtime. Those live in the workspace's other crates (`pepnet-io`,
//! `pepnet-serve`, `pepnet-store-redis`, `pepnet-train`) and the `pepnet` command.
//!
//! Data flows one way: [`Batch`] (feature ids per column) → GPU buffers → kernels →
//! probabilities. Load a [`Model`], open a [`GpuContext`], build an [`Engine`], and call
//! [`Engine::score`]; [`reference::forward`] computes the same thing in f64 on the CPU.

pub mod atomic_file;
pub mod batch;
pub mod batcher;
pub mod cache;
pub mod engine;
pub mod error;
pub mod forward;
pub mod gpu;
pub mod grad;
pub mod math;
pub mod memory;
pub mod model;
pub mod plan;
pub mod precision;
pub mod reference;
mod reply;
pub mod spec;
pub mod store;
pub mod synth;
pub mod weights;

pub use atomic_file::{check_output_dir, check_output_file, write_file};
pub use batch::{Batch, Column};
pub use batcher::{Batcher, BatcherOptions};
pub use engine::{Engine, EngineOptions};
pub use error::{Error, Result};
pub use gpu::GpuContext;
pub use model::Model;
pub use precision::Precision;
pub use spec::ModelSpec;
pub use store::{EmbeddingStore, MemoryStore, OpenStore};
pub use weights::Weights;
