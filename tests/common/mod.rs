//! Shared test fixtures of the command's tests: running the binary (`cli`), a served model
//! (`server`), a local Redis Cluster (`redis_cluster`), and the engine's fixtures, which live
//! with pepnet-core's tests.
#![allow(dead_code)]

pub mod cli;
pub mod redis_cluster;
pub mod server;

#[path = "../../crates/pepnet-core/tests/common/mod.rs"]
mod engine;
#[allow(unused_imports)] // Not every test of the command uses the engine's fixtures.
pub use engine::*;
