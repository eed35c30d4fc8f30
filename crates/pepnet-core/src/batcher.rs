//! A dynamic batcher: many small scoring requests (one user's candidates each, say) coalesced
//! into GPU batches, as Triton's dynamic batcher does for online serving. The GPU is efficient
//! only on large batches; callers submit small ones and get their own scores back.
//!
//! ```text
//! submit ──► queue (bounded in rows) ──► worker (one per batch in flight):
//!            waits for max_rows or max_delay ──► merge ──► Engine ──► split ──► each caller
//! ```
//!
//! A request's scores never depend on what it was batched with: the engine must be
//! batch-invariant ([`EngineOptions::batch_invariant`](crate::EngineOptions)), so that every
//! batch runs on the same kernels and a request's scores are bit-identical to scoring it alone.
//! Each request is validated on submission, so a bad request is refused alone and never fails
//! the batch it would have joined.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::batch::{Batch, CheckedBatch};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::reply::Reply;

/// How a [`Batcher`] coalesces requests.
#[derive(Debug, Clone)]
pub struct BatcherOptions {
    /// The most rows one GPU batch holds. Requests are merged up to it; a larger request is
    /// scored alone (the engine splits it into passes).
    pub max_rows: usize,
    /// The longest the first request of a batch waits for others to join it.
    pub max_delay: Duration,
    /// The most rows waiting at once; a request beyond it is refused with
    /// [`Error::Overloaded`] instead of queueing without bound.
    pub max_queued_rows: usize,
    /// Batches scored at once, each by its own worker thread (give the engine as many
    /// workspaces).
    pub in_flight: usize,
}

impl Default for BatcherOptions {
    fn default() -> Self {
        Self {
            max_rows: 4096,
            max_delay: Duration::from_millis(2),
            max_queued_rows: 64 * 1024,
            in_flight: 2,
        }
    }
}

/// Upper bounds of the histogram buckets: rows per GPU batch, and milliseconds a request waited
/// in the queue.
pub const BATCH_ROWS_BUCKETS: [f64; 10] = [
    1.0,
    4.0,
    16.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    f64::INFINITY,
];
/// Upper bounds of the queue-wait histogram buckets, in milliseconds.
pub const QUEUE_MS_BUCKETS: [f64; 10] = [
    0.1,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    50.0,
    100.0,
    1000.0,
    f64::INFINITY,
];

/// A cumulative histogram (Prometheus' convention): per bucket, the observations at or below
/// its bound; with their count and sum.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; 10],
    count: AtomicU64,
    /// Sum of the observations, in millionths.
    sum_micro: AtomicU64,
}

impl Histogram {
    fn observe(&self, bounds: &[f64; 10], x: f64) {
        for (b, bound) in self.buckets.iter().zip(bounds) {
            if x <= *bound {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micro
            .fetch_add((x * 1e6) as u64, Ordering::Relaxed);
    }

    /// (bucket bound, cumulative count) pairs, the count and the sum.
    pub fn snapshot(&self, bounds: &[f64; 10]) -> (Vec<(f64, u64)>, u64, f64) {
        let buckets = bounds
            .iter()
            .zip(&self.buckets)
            .map(|(b, c)| (*b, c.load(Ordering::Relaxed)))
            .collect();
        (
            buckets,
            self.count.load(Ordering::Relaxed),
            self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

/// What the batcher did so far.
#[derive(Debug, Default)]
pub struct BatcherStats {
    /// Rows of each GPU batch.
    pub batch_rows: Histogram,
    /// Milliseconds each request waited before its batch was scored.
    pub queue_ms: Histogram,
    /// Microseconds spent scoring batches (upload, GPU, readback).
    pub scoring_us: AtomicU64,
    stages: Mutex<Stages>,
}

/// Time spent in one stage: how many times, and nanoseconds in all.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StageTime {
    /// Times the stage ran (or requests counted with it).
    pub count: u64,
    /// Nanoseconds in all.
    pub ns: u64,
}

impl StageTime {
    fn add(&mut self, count: u64, ns: u64) {
        self.count += count;
        self.ns += ns;
    }
}

/// The three stages of scoring a batch: merging its requests into one batch, scoring it (the
/// engine: upload, GPU, readback), and splitting the scores back to the requests. (Triton's
/// statistics call them compute input, infer and output.)
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StageTimes {
    /// Merging the requests into one batch.
    pub merge: StageTime,
    /// The engine's scoring of the batch.
    pub score: StageTime,
    /// Splitting the scores back to the requests.
    pub split: StageTime,
}

#[derive(Debug, Default)]
struct Stages {
    /// Per request: its batch's stage times, each request counted with its whole batch's time
    /// (as Triton counts them).
    per_request: StageTimes,
    /// Per batch size (rows): the batches of that size.
    per_batch: BTreeMap<usize, StageTimes>,
}

impl BatcherStats {
    /// Per request, the stage times of its batch; see [`StageTimes`].
    pub fn request_stages(&self) -> StageTimes {
        lock(&self.stages).per_request
    }

    /// Per batch size (rows), the batches of that size and their stage times.
    pub fn batch_stages(&self) -> Vec<(usize, StageTimes)> {
        lock(&self.stages)
            .per_batch
            .iter()
            .map(|(&rows, &t)| (rows, t))
            .collect()
    }

    fn record(&self, requests: usize, rows: usize, [merge, score, split]: [Duration; 3]) {
        let ns = |d: Duration| d.as_nanos().min(u64::MAX as u128) as u64;
        let (merge, score, split) = (ns(merge), ns(score), ns(split));
        let k = requests as u64;
        let mut stages = lock(&self.stages);
        let r = &mut stages.per_request;
        r.merge.add(k, merge.saturating_mul(k));
        r.score.add(k, score.saturating_mul(k));
        r.split.add(k, split.saturating_mul(k));
        let b = stages.per_batch.entry(rows).or_default();
        b.merge.add(1, merge);
        b.score.add(1, score);
        b.split.add(1, split);
    }
}

/// Coalesces requests into batches for one engine. Dropping it finishes the requests already
/// queued, then stops its workers.
pub struct Batcher {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

struct Shared {
    engine: Arc<Engine>,
    options: BatcherOptions,
    stats: Arc<BatcherStats>,
    queue: Mutex<Queue>,
    /// Signalled when a request arrives or the batcher closes.
    arrived: Condvar,
}

#[derive(Default)]
struct Queue {
    requests: VecDeque<Request>,
    rows: usize,
    closed: bool,
}

struct Request {
    batch: Batch,
    arrived: Instant,
    deadline: Option<Instant>,
    reply: Arc<Reply<Result<Vec<f32>>>>,
}

/// A submitted request's scores to come: `.wait()` blocks for them, or `.await` them (an
/// async caller bounds the wait with its runtime's timeout).
pub struct Pending {
    reply: Arc<Reply<Result<Vec<f32>>>>,
    deadline: Option<Instant>,
}

impl Pending {
    /// Blocks until the request is scored or refused, or its deadline passes (then the request
    /// is skipped when a worker reaches it).
    pub fn wait(self) -> Result<Vec<f32>> {
        self.reply.wait(self.deadline).unwrap_or_else(|| {
            Err(Error::DeadlineExceeded(
                "the deadline passed while the request was queued".into(),
            ))
        })
    }
}

impl Future for Pending {
    type Output = Result<Vec<f32>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.reply.poll(cx)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A worker never panics while holding a lock (it scores outside them); if one did, the
    // queue is still consistent, so go on.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Batcher {
    /// Starts the workers. The engine must be batch-invariant (see the module comment).
    pub fn new(engine: Arc<Engine>, options: BatcherOptions) -> Result<Self> {
        Self::with_stats(engine, options, Arc::default())
    }

    /// As [`Batcher::new`], counting into `stats`: a server that replaces a batcher (to reload
    /// its model) keeps counting where the old one stopped.
    pub fn with_stats(
        engine: Arc<Engine>,
        options: BatcherOptions,
        stats: Arc<BatcherStats>,
    ) -> Result<Self> {
        if !engine.is_batch_invariant() {
            return Err(Error::Batch(
                "the batcher needs a batch-invariant engine (EngineOptions::batch_invariant), \
                 so that a request's scores do not depend on what it is batched with"
                    .into(),
            ));
        }
        if options.max_rows == 0 || options.in_flight == 0 || options.max_queued_rows == 0 {
            return Err(Error::Batch(format!(
                "batcher options: max_rows, in_flight and max_queued_rows must be at least 1, \
                 found {}, {} and {}",
                options.max_rows, options.in_flight, options.max_queued_rows
            )));
        }
        let shared = Arc::new(Shared {
            engine,
            options,
            stats,
            queue: Mutex::new(Queue::default()),
            arrived: Condvar::new(),
        });
        let workers = (0..shared.options.in_flight)
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("pepnet-batcher-{i}"))
                    .spawn(move || shared.work())
                    .map_err(|e| Error::Batch(format!("cannot start a batcher thread: {e}")))
            })
            .collect::<Result<_>>()?;
        Ok(Self { shared, workers })
    }

    /// Queues `batch` for scoring; its `len × T` probabilities come through the returned
    /// [`Pending`]. Refused at once when the batch does not fit the model (naming the sample
    /// and feature), when the queue is full ([`Error::Overloaded`]) or the deadline has passed
    /// ([`Error::DeadlineExceeded`]); a request that reaches a worker after its deadline is
    /// not scored.
    pub fn submit(&self, batch: Batch, deadline: Option<Instant>) -> Result<Pending> {
        batch.validate(self.shared.engine.spec(), "request", 1)?;
        self.enqueue(batch, deadline)
    }

    /// As [`Batcher::submit`], for a batch a reader has checked against the engine's spec (a
    /// request decoder's), which is not checked again; one checked against another spec is.
    pub fn submit_checked(
        &self,
        batch: CheckedBatch,
        deadline: Option<Instant>,
    ) -> Result<Pending> {
        if batch.spec_id() != self.shared.engine.spec_id() {
            batch
                .batch()
                .validate(self.shared.engine.spec(), "request", 1)?;
        }
        self.enqueue(batch.into_batch(), deadline)
    }

    fn enqueue(&self, batch: Batch, deadline: Option<Instant>) -> Result<Pending> {
        let rows = batch.len();
        let reply = Arc::new(Reply::default());
        let now = Instant::now();
        if deadline.is_some_and(|d| d <= now) {
            return Err(Error::DeadlineExceeded(
                "the deadline passed before the request was queued".into(),
            ));
        }
        {
            let mut queue = lock(&self.shared.queue);
            let limit = self.shared.options.max_queued_rows;
            if queue.rows + rows > limit && !queue.requests.is_empty() {
                return Err(Error::Overloaded(format!(
                    "{} rows are waiting and this request adds {rows}, beyond the queue's {limit}; \
                     retry later",
                    queue.rows
                )));
            }
            queue.rows += rows;
            queue.requests.push_back(Request {
                batch,
                arrived: now,
                deadline,
                reply: reply.clone(),
            });
        }
        self.shared.arrived.notify_all();
        Ok(Pending { reply, deadline })
    }

    /// Scores `batch`, blocking until its scores come back: [`Batcher::submit`] then
    /// [`Pending::wait`].
    pub fn score(&self, batch: Batch, deadline: Option<Instant>) -> Result<Vec<f32>> {
        self.submit(batch, deadline)?.wait()
    }

    /// Counters and histograms of the batches scored so far.
    pub fn stats(&self) -> &BatcherStats {
        &self.shared.stats
    }

    /// The engine the batcher scores on.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.shared.engine
    }

    /// Rows waiting to be batched now.
    pub fn queued_rows(&self) -> usize {
        lock(&self.shared.queue).rows
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.arrived.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// The batcher's merge: the requests' batches as one, in order. The first is moved, not copied
/// (a batch of one request costs nothing); the others are appended to it.
pub fn merge(batches: impl IntoIterator<Item = Batch>) -> Batch {
    let mut batches = batches.into_iter();
    let mut merged = batches.next().unwrap_or_default();
    for b in batches {
        merged.append(&b);
    }
    merged
}

/// The batcher's split: a merged batch's `len × tasks` scores back to its requests of `rows`
/// samples each. The scores of a batch of one request are moved, not copied.
pub fn split(scores: Vec<f32>, rows: &[usize], tasks: usize) -> Vec<Vec<f32>> {
    if rows.len() == 1 {
        return vec![scores];
    }
    let mut at = 0;
    rows.iter()
        .map(|&n| {
            let part = scores[at..at + n * tasks].to_vec();
            at += n * tasks;
            part
        })
        .collect()
}

impl Shared {
    /// A worker: takes a batch's worth of requests, scores them, replies; until closed and
    /// drained.
    fn work(&self) {
        while let Some(requests) = self.next_batch() {
            self.score(requests);
        }
    }

    /// Waits for requests, then up to `max_delay` after the first one for the batch to fill;
    /// takes requests in arrival order up to `max_rows` (at least one). `None` once closed and
    /// empty.
    fn next_batch(&self) -> Option<Vec<Request>> {
        let mut queue = lock(&self.queue);
        loop {
            while queue.requests.is_empty() {
                if queue.closed {
                    return None;
                }
                queue = self.arrived.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
            let first = queue.requests[0].arrived;
            while !queue.closed && queue.rows < self.options.max_rows {
                let waited = first.elapsed();
                if waited >= self.options.max_delay || queue.requests.is_empty() {
                    break;
                }
                queue = self
                    .arrived
                    .wait_timeout(queue, self.options.max_delay - waited)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            // Another worker may have taken them while this one waited.
            if queue.requests.is_empty() {
                continue;
            }
            let mut taken = Vec::new();
            let mut rows = 0;
            while let Some(r) = queue.requests.front() {
                if !taken.is_empty() && rows + r.batch.len() > self.options.max_rows {
                    break;
                }
                rows += r.batch.len();
                taken.push(queue.requests.pop_front().expect("a front request"));
            }
            queue.rows -= rows;
            return Some(taken);
        }
    }

    /// Scores requests as one batch and sends each its own rows' scores.
    fn score(&self, requests: Vec<Request>) {
        let now = Instant::now();
        let (live, late): (Vec<Request>, Vec<Request>) = requests
            .into_iter()
            .partition(|r| r.deadline.is_none_or(|d| d > now));
        for r in late {
            r.reply.send(Err(Error::DeadlineExceeded(format!(
                "the deadline passed after {:.3} ms in the queue",
                r.arrived.elapsed().as_secs_f64() * 1e3
            ))));
        }
        let mut live = live;
        if live.is_empty() {
            return;
        }
        for r in &live {
            let waited = now.duration_since(r.arrived).as_secs_f64() * 1e3;
            self.stats.queue_ms.observe(&QUEUE_MS_BUCKETS, waited);
        }
        let started = Instant::now();
        let rows: Vec<usize> = live.iter().map(|r| r.batch.len()).collect();
        let merged = merge(live.iter_mut().map(|r| std::mem::take(&mut r.batch)));
        let total = merged.len();
        let spec_id = self.engine.spec_id();
        self.stats
            .batch_rows
            .observe(&BATCH_ROWS_BUCKETS, total as f64);
        let merged = CheckedBatch::from_reader(merged, spec_id);
        let merged_at = Instant::now();
        let scored = self.engine.score_checked(&merged);
        let scored_at = Instant::now();
        self.stats.scoring_us.fetch_add(
            (scored_at - merged_at).as_micros() as u64,
            Ordering::Relaxed,
        );
        match scored {
            Ok(scores) => {
                let requests = live.len();
                let t = self.engine.spec().n_tasks();
                for (r, scores) in live.into_iter().zip(split(scores, &rows, t)) {
                    r.reply.send(Ok(scores));
                }
                let stages = [
                    merged_at - started,
                    scored_at - merged_at,
                    scored_at.elapsed(),
                ];
                self.stats.record(requests, total, stages);
            }
            // Some samples could not be scored (a non-finite probability, a sample too large
            // for the cache): each request alone, so that only those with such samples fail,
            // with their own sample numbers.
            Err(Error::Samples(_)) if live.len() > 1 => {
                let mut at = 0;
                for (r, n) in live.into_iter().zip(rows) {
                    let alone =
                        CheckedBatch::from_reader(merged.batch().slice(at..at + n), spec_id);
                    r.reply.send(self.engine.score_checked(&alone));
                    at += n;
                }
            }
            // Every request of the batch gets the error (of the same kind: errors are not Clone).
            Err(e) => {
                for r in live {
                    r.reply.send(Err(match &e {
                        Error::Gpu(m) => Error::Gpu(m.clone()),
                        Error::Cache(m) => Error::Cache(m.clone()),
                        Error::Memory(m) => Error::Memory(m.clone()),
                        // The embedding store's failure names the node and feature: keep it so.
                        Error::Store(m) => Error::Store(m.clone()),
                        other => Error::Gpu(other.to_string()),
                    }));
                }
            }
        }
    }
}
