//! The statistics extension: per model version, requests that succeeded and failed, samples
//! and batches scored, and the time in each stage, in Triton's field names and shape (what
//! perf_analyzer reads to split a request's latency between queue and compute).
//!
//! Triton's stages map onto the batcher's: `queue` is the wait for a batch, `compute_input`
//! the merge of a batch's requests, `compute_infer` the engine's scoring (upload, GPU,
//! readback) and `compute_output` the split of the scores back to the requests. Each request is
//! counted with its whole batch's time, as Triton counts it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::proto::{InferBatchStatistics, InferStatistics, ModelStatistics, StatisticDuration};
use pepnet_core::batcher::{BatcherStats, StageTime};

/// One model version's counters; kept across reloads of that version.
#[derive(Default)]
pub(crate) struct VersionStats {
    /// The batcher's own: queue, batches and their stages.
    pub batcher: Arc<BatcherStats>,
    success: [AtomicU64; 2],
    fail: [AtomicU64; 2],
    /// Samples scored.
    rows: AtomicU64,
    /// Milliseconds since the epoch of the last request scored.
    last_ms: AtomicU64,
}

impl VersionStats {
    /// Counts a request this version answered (`ok`) or refused, with its `rows` and time.
    pub fn answered(&self, ok: bool, rows: usize, took: Duration) {
        let [count, ns] = if ok { &self.success } else { &self.fail };
        count.fetch_add(1, Ordering::Relaxed);
        ns.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        if ok {
            self.rows.fetch_add(rows as u64, Ordering::Relaxed);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            self.last_ms.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// The statistics of version `version` of model `name`, as gRPC's `ModelStatistics`.
    pub fn snapshot(&self, name: &str, version: &str) -> ModelStatistics {
        let load = |[count, ns]: &[AtomicU64; 2]| StatisticDuration {
            count: count.load(Ordering::Relaxed),
            ns: ns.load(Ordering::Relaxed),
        };
        let stage = |t: StageTime| {
            Some(StatisticDuration {
                count: t.count,
                ns: t.ns,
            })
        };
        let b = &self.batcher;
        // The queue histogram's sum is in millionths of a millisecond: nanoseconds.
        let (_, queued, queue_ns) = b.queue_ms.snapshot(&pepnet_core::batcher::QUEUE_MS_BUCKETS);
        let (_, executions, _) = b
            .batch_rows
            .snapshot(&pepnet_core::batcher::BATCH_ROWS_BUCKETS);
        let r = b.request_stages();
        ModelStatistics {
            name: name.into(),
            version: version.into(),
            last_inference: self.last_ms.load(Ordering::Relaxed),
            inference_count: self.rows.load(Ordering::Relaxed),
            execution_count: executions,
            inference_stats: Some(InferStatistics {
                success: Some(load(&self.success)),
                fail: Some(load(&self.fail)),
                queue: Some(StatisticDuration {
                    count: queued,
                    ns: (queue_ns * 1e6).round() as u64,
                }),
                compute_input: stage(r.merge),
                compute_infer: stage(r.score),
                compute_output: stage(r.split),
                cache_hit: Some(StatisticDuration::default()),
                cache_miss: Some(StatisticDuration::default()),
            }),
            batch_stats: b
                .batch_stages()
                .into_iter()
                .map(|(rows, t)| InferBatchStatistics {
                    batch_size: rows as u64,
                    compute_input: stage(t.merge),
                    compute_infer: stage(t.score),
                    compute_output: stage(t.split),
                })
                .collect(),
        }
    }
}

/// A `StatisticDuration` in JSON.
fn duration(d: Option<StatisticDuration>) -> Value {
    let d = d.unwrap_or_default();
    json!({"count": d.count, "ns": d.ns})
}

/// Statistics in the JSON shape of Triton's HTTP statistics extension.
pub(crate) fn to_json(stats: &[ModelStatistics]) -> Value {
    let models: Vec<Value> = stats
        .iter()
        .map(|m| {
            let i = m.inference_stats.unwrap_or_default();
            json!({
                "name": m.name,
                "version": m.version,
                "last_inference": m.last_inference,
                "inference_count": m.inference_count,
                "execution_count": m.execution_count,
                "inference_stats": {
                    "success": duration(i.success),
                    "fail": duration(i.fail),
                    "queue": duration(i.queue),
                    "compute_input": duration(i.compute_input),
                    "compute_infer": duration(i.compute_infer),
                    "compute_output": duration(i.compute_output),
                    "cache_hit": duration(i.cache_hit),
                    "cache_miss": duration(i.cache_miss),
                },
                "batch_stats": m.batch_stats.iter().map(|b| json!({
                    "batch_size": b.batch_size,
                    "compute_input": duration(b.compute_input),
                    "compute_infer": duration(b.compute_infer),
                    "compute_output": duration(b.compute_output),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "model_stats": models })
}
