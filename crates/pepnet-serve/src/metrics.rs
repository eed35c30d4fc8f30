//! The server's counters and their Prometheus text (`GET /metrics`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::App;
use pepnet_core::batcher::{BATCH_ROWS_BUCKETS, QUEUE_MS_BUCKETS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Protocol {
    Http,
    Grpc,
}

/// The codes each protocol's counter shows from the start (others appear once seen).
const CODES: [(Protocol, &str); 16] = [
    (Protocol::Http, "200"),
    (Protocol::Http, "400"),
    (Protocol::Http, "404"),
    (Protocol::Http, "413"),
    (Protocol::Http, "429"),
    (Protocol::Http, "500"),
    (Protocol::Http, "503"),
    (Protocol::Http, "504"),
    (Protocol::Grpc, "OK"),
    (Protocol::Grpc, "INVALID_ARGUMENT"),
    (Protocol::Grpc, "NOT_FOUND"),
    (Protocol::Grpc, "OUT_OF_RANGE"),
    (Protocol::Grpc, "RESOURCE_EXHAUSTED"),
    (Protocol::Grpc, "DEADLINE_EXCEEDED"),
    (Protocol::Grpc, "UNAVAILABLE"),
    (Protocol::Grpc, "INTERNAL"),
];

#[derive(Default)]
pub(super) struct Metrics {
    /// Inference requests answered, by protocol and code (HTTP status, gRPC code name).
    requests: Mutex<BTreeMap<(Protocol, String), u64>>,
    rows: AtomicU64,
    /// Microseconds spent answering successful requests.
    latency_us: AtomicU64,
    pub reloads: AtomicU64,
    /// Hashed ids dropped by expiry.
    pub expired: AtomicU64,
}

impl Metrics {
    /// Counts an answer to an inference request.
    pub fn count(&self, protocol: Protocol, code: &str) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        match requests.get_mut(&(protocol, code.to_string())) {
            Some(n) => *n += 1,
            None => {
                requests.insert((protocol, code.to_string()), 1);
            }
        }
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
    let served = app.all_served();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# HELP pepnet_requests_total Inference requests answered, by protocol and status (HTTP \
         status or gRPC code), refusals included.\n# TYPE pepnet_requests_total counter"
    );
    let mut requests = m.requests.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (protocol, code) in CODES {
        requests.entry((protocol, code.to_string())).or_insert(0);
    }
    for ((protocol, code), count) in requests {
        let protocol = match protocol {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        };
        let _ = writeln!(
            text,
            "pepnet_requests_total{{protocol=\"{protocol}\",code=\"{code}\"}} {count}"
        );
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
            served
                .iter()
                .map(|s| s.batcher.queued_rows())
                .sum::<usize>() as f64,
        ),
        (
            "pepnet_reloads_total",
            "counter",
            "Model loads that succeeded (the first ones included).",
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
        "# HELP pepnet_model_info The model versions served.\n# TYPE pepnet_model_info gauge"
    );
    for s in &served {
        let _ = writeln!(
            text,
            "pepnet_model_info{{name=\"{}\",version=\"{}\"}} 1",
            s.name, s.version
        );
    }
    for (metric, help, bounds) in [
        (
            "pepnet_batch_rows",
            "Samples per GPU batch.",
            &BATCH_ROWS_BUCKETS,
        ),
        (
            "pepnet_queue_milliseconds",
            "Time a request waited for its batch.",
            &QUEUE_MS_BUCKETS,
        ),
    ] {
        let _ = writeln!(text, "# HELP {metric} {help}\n# TYPE {metric} histogram");
        for s in &served {
            let stats = s.batcher.stats();
            let histogram = match metric {
                "pepnet_batch_rows" => &stats.batch_rows,
                _ => &stats.queue_ms,
            };
            let labels = format!("model=\"{}\",version=\"{}\"", s.name, s.version);
            let (buckets, count, sum) = histogram.snapshot(bounds);
            for (bound, n) in buckets {
                let le = if bound.is_infinite() {
                    "+Inf".to_string()
                } else {
                    bound.to_string()
                };
                let _ = writeln!(text, "{metric}_bucket{{{labels},le=\"{le}\"}} {n}");
            }
            let _ = writeln!(
                text,
                "{metric}_sum{{{labels}}} {sum}\n{metric}_count{{{labels}}} {count}"
            );
        }
    }
    let _ = writeln!(
        text,
        "# HELP pepnet_scoring_seconds_total Time scoring batches (upload, GPU, readback).\n\
         # TYPE pepnet_scoring_seconds_total counter"
    );
    for s in &served {
        let _ = writeln!(
            text,
            "pepnet_scoring_seconds_total{{model=\"{}\",version=\"{}\"}} {}",
            s.name,
            s.version,
            s.batcher.stats().scoring_us.load(Ordering::Relaxed) as f64 / 1e6
        );
    }
    let _ = writeln!(
        text,
        "# HELP pepnet_cache_hit_ratio Embedding cache hits over lookups, per hashed feature.\n\
         # TYPE pepnet_cache_hit_ratio gauge"
    );
    for s in &served {
        if let Some(cache) = s.batcher.engine().cache_stats() {
            for f in &cache.features {
                let _ = writeln!(
                    text,
                    "pepnet_cache_hit_ratio{{model=\"{}\",version=\"{}\",feature=\"{}\"}} {}",
                    s.name,
                    s.version,
                    f.feature,
                    f.hit_rate()
                );
            }
        }
    }
    let caches: Vec<_> = served
        .iter()
        .filter_map(|s| Some((s, s.batcher.engine().cache_stats()?)))
        .collect();
    let _ = writeln!(
        text,
        "# HELP pepnet_cache_unavailable_total Id lookups scored with the default row because \
         their store node was down (degraded mode), per hashed feature.\n\
         # TYPE pepnet_cache_unavailable_total counter"
    );
    for (s, cache) in &caches {
        for f in &cache.features {
            let _ = writeln!(
                text,
                "pepnet_cache_unavailable_total{{model=\"{}\",version=\"{}\",feature=\"{}\"}} {}",
                s.name, s.version, f.feature, f.unavailable
            );
        }
    }
    let _ = writeln!(
        text,
        "# HELP pepnet_cache_store_reloads_total Loads of the store's namespace the cache \
         followed by dropping every row and unknown id it held.\n\
         # TYPE pepnet_cache_store_reloads_total counter"
    );
    for (s, cache) in &caches {
        let _ = writeln!(
            text,
            "pepnet_cache_store_reloads_total{{model=\"{}\",version=\"{}\"}} {}",
            s.name, s.version, cache.store_reloads
        );
    }
    let families = [
        (
            "pepnet_store_node_down",
            "gauge",
            "Whether a store node is skipped now (it missed a deadline and has not answered a \
             probe since).",
        ),
        (
            "pepnet_store_unavailable_total",
            "counter",
            "Keys fetched as unavailable because their store node was down, per node (each \
             distinct key of a batch's misses once).",
        ),
    ];
    for (family, kind, help) in families {
        let _ = writeln!(text, "# HELP {family} {help}\n# TYPE {family} {kind}");
        for (s, cache) in &caches {
            for n in &cache.store_nodes {
                let value = match kind {
                    "gauge" => u64::from(n.down),
                    _ => n.unavailable,
                };
                let _ = writeln!(
                    text,
                    "{family}{{model=\"{}\",version=\"{}\",node=\"{}\"}} {value}",
                    s.name, s.version, n.node
                );
            }
        }
    }
    text
}
