//! The server's counters and their Prometheus text (`GET /metrics`).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{App, Refusal};
use pepnet_core::batcher::{BATCH_ROWS_BUCKETS, QUEUE_MS_BUCKETS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    Http,
    Grpc,
}

/// The outcomes counted, in the order of [`Metrics::requests`]' columns.
const OUTCOMES: [Option<Refusal>; 6] = [
    None,
    Some(Refusal::BadRequest),
    Some(Refusal::UnknownModel),
    Some(Refusal::Overloaded),
    Some(Refusal::Timeout),
    Some(Refusal::Internal),
];

/// Each outcome's code in each protocol.
fn code(protocol: Protocol, outcome: Option<Refusal>) -> &'static str {
    match (protocol, outcome) {
        (Protocol::Http, None) => "200",
        (Protocol::Http, Some(Refusal::BadRequest)) => "400",
        (Protocol::Http, Some(Refusal::UnknownModel)) => "404",
        (Protocol::Http, Some(Refusal::Overloaded)) => "429",
        (Protocol::Http, Some(Refusal::Timeout)) => "504",
        (Protocol::Http, Some(Refusal::Internal)) => "500",
        (Protocol::Grpc, None) => "OK",
        (Protocol::Grpc, Some(Refusal::BadRequest)) => "INVALID_ARGUMENT",
        (Protocol::Grpc, Some(Refusal::UnknownModel)) => "NOT_FOUND",
        (Protocol::Grpc, Some(Refusal::Overloaded)) => "RESOURCE_EXHAUSTED",
        (Protocol::Grpc, Some(Refusal::Timeout)) => "DEADLINE_EXCEEDED",
        (Protocol::Grpc, Some(Refusal::Internal)) => "INTERNAL",
    }
}

#[derive(Default)]
pub(super) struct Metrics {
    /// Inference requests answered, by protocol (HTTP, gRPC) and outcome ([`OUTCOMES`]).
    requests: [[AtomicU64; 6]; 2],
    rows: AtomicU64,
    /// Microseconds spent answering successful requests.
    latency_us: AtomicU64,
    pub reloads: AtomicU64,
    /// Hashed ids dropped by expiry.
    pub expired: AtomicU64,
}

impl Metrics {
    pub fn count(&self, protocol: Protocol, outcome: Option<Refusal>) {
        let column = OUTCOMES.iter().position(|&o| o == outcome).unwrap_or(0);
        self.requests[protocol as usize][column].fetch_add(1, Ordering::Relaxed);
    }

    pub fn answered(&self, rows: usize, took: Duration) {
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
        self.latency_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Prometheus' text format of every metric.
pub(super) fn render(app: &App) -> String {
    let m = &app.metrics;
    let served = app.current();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# HELP pepnet_requests_total Inference requests answered, by protocol and status (HTTP \
         status or gRPC code).\n# TYPE pepnet_requests_total counter"
    );
    for (p, protocol) in [(Protocol::Http, "http"), (Protocol::Grpc, "grpc")] {
        for (&outcome, count) in OUTCOMES.iter().zip(&m.requests[p as usize]) {
            let _ = writeln!(
                text,
                "pepnet_requests_total{{protocol=\"{protocol}\",code=\"{}\"}} {}",
                code(p, outcome),
                count.load(Ordering::Relaxed)
            );
        }
    }
    let counters = [
        (
            "pepnet_rows_total",
            "counter",
            "Samples scored.",
            m.rows.load(Ordering::Relaxed) as f64,
        ),
        (
            "pepnet_request_seconds_total",
            "counter",
            "Time spent answering successful requests.",
            m.latency_us.load(Ordering::Relaxed) as f64 / 1e6,
        ),
        (
            "pepnet_queue_rows",
            "gauge",
            "Samples waiting to be batched.",
            served.batcher.queued_rows() as f64,
        ),
        (
            "pepnet_reloads_total",
            "counter",
            "Model reloads that succeeded.",
            m.reloads.load(Ordering::Relaxed) as f64,
        ),
        (
            "pepnet_expired_ids_total",
            "counter",
            "Hashed ids dropped because they were not written for the expiry time.",
            m.expired.load(Ordering::Relaxed) as f64,
        ),
    ];
    for (name, kind, help, value) in counters {
        let _ = writeln!(
            text,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    let _ = writeln!(
        text,
        "# HELP pepnet_model_info The model served.\n# TYPE pepnet_model_info gauge\n\
         pepnet_model_info{{name=\"{}\",version=\"{}\"}} 1",
        app.name, served.version
    );
    let stats = served.batcher.stats();
    for (metric, help, histogram, bounds) in [
        (
            "pepnet_batch_rows",
            "Samples per GPU batch.",
            &stats.batch_rows,
            &BATCH_ROWS_BUCKETS,
        ),
        (
            "pepnet_queue_milliseconds",
            "Time a request waited for its batch.",
            &stats.queue_ms,
            &QUEUE_MS_BUCKETS,
        ),
    ] {
        let (buckets, count, sum) = histogram.snapshot(bounds);
        let _ = writeln!(text, "# HELP {metric} {help}\n# TYPE {metric} histogram");
        for (bound, n) in buckets {
            let le = if bound.is_infinite() {
                "+Inf".to_string()
            } else {
                bound.to_string()
            };
            let _ = writeln!(text, "{metric}_bucket{{le=\"{le}\"}} {n}");
        }
        let _ = writeln!(text, "{metric}_sum {sum}\n{metric}_count {count}");
    }
    let _ = writeln!(
        text,
        "# HELP pepnet_scoring_seconds_total Time scoring batches (upload, GPU, readback).\n\
         # TYPE pepnet_scoring_seconds_total counter\npepnet_scoring_seconds_total {}",
        stats.scoring_us.load(Ordering::Relaxed) as f64 / 1e6
    );
    if let Some(cache) = served.batcher.engine().cache_stats() {
        let _ = writeln!(
            text,
            "# HELP pepnet_cache_hit_ratio Embedding cache hits over lookups, per hashed feature.\n\
             # TYPE pepnet_cache_hit_ratio gauge"
        );
        for f in &cache.features {
            let _ = writeln!(
                text,
                "pepnet_cache_hit_ratio{{feature=\"{}\"}} {}",
                f.feature,
                f.hit_rate()
            );
        }
    }
    text
}
