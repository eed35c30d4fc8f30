//! pepnet-core: the GPU engine of pepnet, PEPNet (Kuaishou's Parameter and Embedding
//! Personalized Network, KDD 2023) with hand-written WGSL kernels on wgpu. It depends on the GPU
//! stack alone (wgpu, bytemuck, half, safetensors, serde): no file formats, servers, network
//! clients or async runtime. Those live in the workspace's other crates (`pepnet-io`,
//! `pepnet-serve`, `pepnet-store-redis`, `pepnet-train`) and the `pepnet` command.
//!
//! Data flows one way: [`Batch`] (feature ids per column) → GPU buffers → kernels →
//! probabilities. Load a [`Model`], open a [`GpuContext`], build an [`Engine`], and call
//! [`Engine::score`] (or [`Engine::score_async`]); [`reference::forward`] computes the same thing
//! in f64 on the CPU.
//!
//! What a service needs is at the crate root: [`GpuContext`] (a device pepnet opens, or one the
//! host hands over with [`GpuContext::adopt`]), [`Model`] and [`ModelSpec`], [`Batch`],
//! [`Engine`] and [`EngineOptions`], [`Batcher`] for many small requests, [`Precision`], the
//! row store a model's hashed features read ([`EmbeddingStore`], [`MemoryStore`] by default,
//! [`OpenStore`] for a shared one) and [`Error`]. The modules, by what they hold:
//! - the model: [`spec`], [`weights`], [`model`] (PEPNet's blocks), [`batch`];
//! - scoring: [`engine`], [`batcher`], [`cache`] (the GPU embedding cache), [`store`];
//! - the kernel level, which the trainer (`pepnet-train`), the benchmarks and the kernel tests
//!   drive directly: [`gpu`] (one module per WGSL kernel), [`plan`] (the dispatches),
//!   [`forward`] (the plan bound over buffers);
//! - the f64 references the GPU is tested against: [`reference`], [`grad`];
//! - utilities: [`atomic_file`], [`memory`], [`synth`] (random batches), [`precision`].

#![deny(missing_docs)]

pub mod atomic_file;
pub mod batch;
pub mod batcher;
pub mod cache;
pub mod engine;
pub mod error;
pub mod forward;
pub mod gpu;
pub mod grad;
mod math;
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
pub use engine::{Engine, EngineOptions, Scoring};
pub use error::{Error, Result};
pub use gpu::GpuContext;
pub use model::Model;
pub use precision::Precision;
pub use spec::{BiasInit, EmbeddingInit, InitSpec, ModelSpec};
pub use store::{EmbeddingStore, MemoryStore, OpenStore};
pub use weights::Weights;
