//! The tools the `pepnet` binary runs beside scoring and training: the benchmark harness
//! (`bench`), the host-side benchmark (`host_bench`), the embedding-cache benchmark
//! (`cache_bench`), the training benchmark (`train_bench`), the ablation study (`ablation`),
//! the load generator for `pepnet serve` (`loadgen`) and the KuaiRand converter (`kuairand`).
//!
//! They use the library; nothing in the library uses them. They live in the library crate (not
//! beside `main.rs`) only so that their tests can call them directly.

pub mod ablation;
pub mod bench;
pub mod cache_bench;
pub mod host_bench;
pub mod kuairand;
pub mod loadgen;
pub mod train_bench;
