//! pepnet: the `pepnet` command's library. It gathers the workspace's crates under the module
//! names the command, its tools, the benchmarks and the tests use: the GPU engine
//! ([`pepnet_core`]), files ([`pepnet_io`]), training ([`pepnet_train`]), the Redis Cluster
//! store ([`pepnet_store_redis`]) and the server ([`pepnet_serve`]), plus the command's own
//! [`tools`]. A service that embeds the engine depends on `pepnet-core` (and the integrations it
//! wants) instead.

pub use pepnet_core::{
    atomic_file, batch, batcher, cache, engine, error, forward, gpu, grad, memory, model, plan,
    precision, reference, spec, weights,
};
pub use pepnet_core::{
    check_output_dir, check_output_file, write_file, Batch, Batcher, BatcherOptions, BiasInit,
    Column, EmbeddingInit, Engine, EngineOptions, Error, GpuContext, InitSpec, Model, ModelSpec,
    Precision, Result, Weights,
};
pub use pepnet_io as io;
pub use pepnet_io::{datagen, pipeline, remove_unfinished_on_interrupt};
pub use pepnet_serve as serve;
pub use pepnet_train as train;
pub use pepnet_train::{eval, metrics};

/// The embedding store: the trait and the in-memory store ([`pepnet_core::store`]), and the
/// Redis Cluster store ([`redis`]).
pub mod store {
    pub use pepnet_core::store::*;
    pub use pepnet_store_redis as redis;
}

/// Synthetic inputs: random batches ([`pepnet_core::synth`]) and files of them
/// ([`pepnet_io::synth`]).
pub mod synth {
    pub use pepnet_core::synth::*;
    pub use pepnet_io::synth::*;
}

pub mod tools;
