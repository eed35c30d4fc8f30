//! The embedding store on a Redis Cluster: rows that outgrow one host, shared by every scoring
//! process that points at the same cluster and namespace.
//!
//! Layout ([`layout`]): a namespace's rows are grouped into buckets (64 by default), and all of
//! a bucket's keys share one hash tag, so a bucket is one hash slot. Each bucket holds its rows,
//! their write counters (the update cap), a copy of the namespace's metadata (row width, row
//! type, update policy, generation, its row count) and an update stream. So:
//! - a row write, its count against the cap and its announcement on the stream are one script
//!   on one slot: they happen together or not at all, whatever node fails;
//! - any node can say the namespace's metadata, and a bucket without it lives on a node that
//!   restarted without its data: its ids read as unavailable (or fail), never as unknown;
//! - `store load` writes the rows, then bumps the namespace's generation in every bucket with
//!   an announcement on its stream; servers drop every cached row and unknown id and refill.
//!
//! Faults ([`cluster`]): every operation has a deadline per node (connect, read, write). A node
//! that misses one is marked down once; from then on its keys fail at once naming it (or, in
//! degraded mode, read as unavailable: default rows, counted), and a prober thread pings it
//! every probe interval off the request path, closing the circuit when it answers. So a frozen
//! node costs one timeout, not one per request. While a node is down the prober learns the
//! slot map again, so a replica promoted in a failover is used without a restart.
//!
//! Reads ([`store`]): one batch's misses are fetched with one pipeline of GETs per node, routed
//! by the slot map, all nodes sent their share before any answer is read, so a batch costs one
//! round trip to the slowest node involved. Every process follows every bucket's stream
//! ([`follow`]) and drops the keys written from its GPU cache before its next batch.

pub mod cluster;
mod follow;
pub mod impressions;
pub mod layout;
mod load;
mod store;

use std::time::Duration;

use pepnet_core::error::{Error, Result};
use pepnet_core::store::EmbeddingStore;

pub use cluster::Timeouts;
pub use impressions::{EntryId, ImpressionStream};
pub use layout::{key_slot, DEFAULT_BUCKETS};
pub use load::{load, Loaded};
pub use store::RedisStore;

/// How rows are stored in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowType {
    F32,
    F16,
}

impl RowType {
    pub fn name(self) -> &'static str {
        match self {
            RowType::F32 => "f32",
            RowType::F16 => "f16",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" => Some(RowType::F32),
            "f16" => Some(RowType::F16),
            _ => None,
        }
    }

    pub(crate) fn bytes(self) -> usize {
        match self {
            RowType::F32 => 4,
            RowType::F16 => 2,
        }
    }
}

/// Where the store is and how to talk to it.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Seed nodes, `redis://HOST:PORT` each.
    pub nodes: Vec<String>,
    pub namespace: String,
    /// How long each kind of operation may wait on one node before it counts as down.
    pub timeouts: Timeouts,
    /// How often a node that is down is pinged to see whether it is back.
    pub probe: Duration,
    /// Answer keys of a node that is down or slow as unavailable (default rows, counted)
    /// instead of failing.
    pub degraded: bool,
}

impl RedisOptions {
    /// Parses `redis://HOST:PORT[,HOST:PORT...]`; `what` names the flag in errors.
    pub fn from_url(url: &str, what: &str) -> Result<Self> {
        let bad = |why: String| Error::Store(format!("{what} '{url}': {why}"));
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| bad("expected redis://HOST:PORT[,HOST:PORT...]".into()))?;
        let mut nodes = Vec::new();
        for node in rest.split(',') {
            let node = node.trim().trim_end_matches('/');
            let (host, port) = node
                .rsplit_once(':')
                .ok_or_else(|| bad(format!("node '{node}' has no :PORT")))?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad(format!("node '{node}': expected HOST:PORT")));
            }
            nodes.push(format!("redis://{node}"));
        }
        Ok(Self {
            nodes,
            namespace: "default".into(),
            timeouts: Timeouts::default(),
            probe: Duration::from_secs(1),
            degraded: false,
        })
    }
}

impl pepnet_core::store::OpenStore for RedisOptions {
    fn open(&self, spec: &pepnet_core::spec::ModelSpec) -> Result<Box<dyn EmbeddingStore>> {
        Ok(Box::new(RedisStore::open(self.clone(), spec)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse() {
        let urls = RedisOptions::from_url("redis://127.0.0.1:7000,localhost:7001", "--store")
            .unwrap()
            .nodes;
        assert_eq!(urls, ["redis://127.0.0.1:7000", "redis://localhost:7001"]);
        for bad in [
            "127.0.0.1:7000",
            "redis://host",
            "redis://:1",
            "redis://h:99999",
        ] {
            let e = RedisOptions::from_url(bad, "--store")
                .unwrap_err()
                .to_string();
            assert!(e.contains("--store") && e.contains(bad), "{e}");
        }
    }
}
