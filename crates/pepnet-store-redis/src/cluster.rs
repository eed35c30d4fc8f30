//! The cluster as one store sees it: which primary serves each slot, and which nodes are down.
//!
//! Down nodes are a circuit breaker: a node that missed a deadline (or refused a connection) is
//! marked down once, and from then on every caller skips it at once (a degraded read answers
//! its keys as unavailable; anything else fails naming it) instead of waiting on it again. A
//! prober thread pings the down nodes every probe interval, off every request's path, and
//! closes the circuit when one answers; while any node is down it also learns the slot map
//! again, so a replica promoted in a failover is found without a request paying for it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::Value;

use pepnet_core::error::{Error, Result};

/// How long each kind of operation may wait on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Opening a connection.
    pub connect: Duration,
    /// A batch's row reads (and the metadata, slot map and update stream reads).
    pub read: Duration,
    /// A row write (the update script).
    pub write: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_millis(250),
            read: Duration::from_millis(500),
            write: Duration::from_millis(1000),
        }
    }
}

/// Why a node is down, and since when.
struct Down {
    since: Instant,
    cause: String,
    /// Key lookups answered as unavailable because of it, since it went down.
    skipped: u64,
}

pub(crate) struct Cluster {
    /// Seed nodes, `host:port`.
    seeds: Vec<String>,
    pub timeouts: Timeouts,
    probe: Duration,
    /// Slot ranges' primaries: (first slot, last slot, `host:port`).
    slots: RwLock<Vec<(u16, u16, String)>>,
    down: Mutex<BTreeMap<String, Down>>,
    /// Per node, key lookups answered as unavailable because it was down, ever.
    unavailable: Mutex<BTreeMap<String, u64>>,
    stop: AtomicBool,
}

impl Cluster {
    /// The cluster of `seeds` (`redis://host:port` or `host:port`); nothing is contacted yet.
    pub fn new(seeds: &[String], timeouts: Timeouts, probe: Duration) -> Arc<Self> {
        Arc::new(Self {
            seeds: seeds
                .iter()
                .map(|s| s.trim_start_matches("redis://").to_string())
                .collect(),
            timeouts,
            probe,
            slots: RwLock::new(Vec::new()),
            down: Mutex::new(BTreeMap::new()),
            unavailable: Mutex::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
        })
    }

    /// The seed nodes, `host:port`, comma-separated: how errors name the cluster.
    pub fn seeds(&self) -> String {
        self.seeds.join(",")
    }

    /// Starts the prober thread; it ends after [`Cluster::stop`].
    pub fn start_prober(self: &Arc<Self>) -> Result<()> {
        let cluster = self.clone();
        std::thread::Builder::new()
            .name("pepnet-store-probe".into())
            .spawn(move || cluster.probe_loop())
            .map(|_| ())
            .map_err(|e| Error::Store(format!("starting the store's prober: {e}")))
    }

    /// Ends the prober and the update follower.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sleeps `d` in short steps; false when told to stop meanwhile.
    pub fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while !self.stopped() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        false
    }

    /// The primary serving `slot`, from the last slot map learned.
    pub fn node_of(&self, slot: u16) -> Option<String> {
        self.slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, node)| node.clone())
    }

    /// A node that is not down: a primary of the slot map, else a seed.
    pub fn up_node(&self) -> Option<String> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .map(|(_, _, n)| n)
            .chain(&self.seeds)
            .find(|n| self.down(n).is_none())
            .cloned()
    }

    /// Why `node` is down, if it is (its circuit is open).
    pub fn down(&self, node: &str) -> Option<String> {
        let down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        down.get(node).map(|d| {
            format!(
                "{} ({:.1} s ago; probed every {:.1} s)",
                d.cause,
                d.since.elapsed().as_secs_f64(),
                self.probe.as_secs_f64()
            )
        })
    }

    /// Opens `node`'s circuit: callers skip it until the prober hears from it.
    pub fn mark_down(&self, node: &str, cause: &str) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if !down.contains_key(node) {
            tracing::warn!(
                node,
                cause,
                probe_ms = self.probe.as_millis() as u64,
                "store node down: its keys are skipped until it answers a probe"
            );
            down.insert(
                node.to_string(),
                Down {
                    since: Instant::now(),
                    cause: cause.to_string(),
                    skipped: 0,
                },
            );
        }
    }

    /// Every node known (the slot map's primaries, and any down or counted), with its health.
    pub fn health(&self) -> Vec<pepnet_core::store::NodeHealth> {
        let mut nodes: BTreeMap<String, (bool, u64)> = BTreeMap::new();
        for (_, _, n) in self.slots.read().unwrap_or_else(|p| p.into_inner()).iter() {
            nodes.entry(n.clone()).or_default();
        }
        for n in self.down.lock().unwrap_or_else(|p| p.into_inner()).keys() {
            nodes.entry(n.clone()).or_default().0 = true;
        }
        for (n, &count) in self
            .unavailable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            nodes.entry(n.clone()).or_default().1 = count;
        }
        nodes
            .into_iter()
            .map(
                |(node, (down, unavailable))| pepnet_core::store::NodeHealth {
                    node,
                    down,
                    unavailable,
                },
            )
            .collect()
    }

    /// Counts `n` lookups answered unavailable because `node` is down.
    pub fn count_skipped(&self, node: &str, n: u64) {
        *self
            .unavailable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(node.to_string())
            .or_default() += n;
        if let Some(d) = self
            .down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(node)
        {
            d.skipped += n;
        }
    }

    /// A connection to `node` that waits at most the connect timeout to open and `read` for
    /// any answer. A failure marks the node down.
    pub fn connect(
        &self,
        node: &str,
        read: Duration,
    ) -> std::result::Result<redis::Connection, String> {
        connect(node, self.timeouts.connect, read).inspect_err(|cause| self.mark_down(node, cause))
    }

    /// Asks nodes that are not down for the slot map: the primaries last known, then the seeds,
    /// one after another, until one answers. Each node that fails is marked down, so a frozen
    /// node costs this one timeout, once.
    pub fn learn_slots(&self) -> Result<()> {
        let mut candidates: Vec<String> = {
            let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
            slots.iter().map(|(_, _, n)| n.clone()).collect()
        };
        candidates.extend(self.seeds.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        candidates.retain(|n| seen.insert(n.clone()));
        let mut tried = Vec::new();
        for node in candidates {
            if let Some(cause) = self.down(&node) {
                tried.push(format!("{node}: down: {cause}"));
                continue;
            }
            let answer = self.connect(&node, self.timeouts.read).and_then(|mut c| {
                redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query::<Value>(&mut c)
                    .map_err(|e| e.to_string())
            });
            match answer {
                Ok(value) => {
                    let map = parse_slots(&value);
                    if map.is_empty() {
                        tried.push(format!("{node}: serves no slots (not a cluster node?)"));
                        continue;
                    }
                    *self.slots.write().unwrap_or_else(|p| p.into_inner()) = map;
                    return Ok(());
                }
                Err(cause) => {
                    self.mark_down(&node, &cause);
                    tried.push(format!("{node}: {cause}"));
                }
            }
        }
        Err(Error::Store(format!(
            "no node of the cluster {} answered CLUSTER SLOTS ({})",
            self.seeds(),
            tried.join("; ")
        )))
    }

    /// Until stopped: every probe interval, pings the down nodes and closes the circuit of
    /// those that answer; learns the slot map again while any node is down or one came back.
    fn probe_loop(&self) {
        while self.sleep(self.probe) {
            let down: Vec<String> = self
                .down
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned()
                .collect();
            if down.is_empty() {
                continue;
            }
            for node in down {
                let answered = connect(&node, self.timeouts.connect, self.timeouts.read)
                    .and_then(|mut c| {
                        redis::cmd("PING")
                            .query::<String>(&mut c)
                            .map_err(|e| e.to_string())
                    })
                    .is_ok();
                if answered {
                    let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(d) = down.remove(&node) {
                        tracing::warn!(
                            node,
                            down_secs = d.since.elapsed().as_secs_f64(),
                            lookups_unavailable = d.skipped,
                            "store node answers again"
                        );
                    }
                }
            }
            let _ = self.learn_slots();
        }
    }
}

/// A plain connection to `node` (`host:port`), with `connect` to open and `read` on every
/// answer (and on writing the command).
pub(crate) fn connect(
    node: &str,
    connect: Duration,
    read: Duration,
) -> std::result::Result<redis::Connection, String> {
    let client = redis::Client::open(format!("redis://{node}")).map_err(|e| e.to_string())?;
    let c = client
        .get_connection_with_timeout(connect)
        .map_err(|e| e.to_string())?;
    c.set_read_timeout(Some(read)).map_err(|e| e.to_string())?;
    c.set_write_timeout(Some(read)).map_err(|e| e.to_string())?;
    Ok(c)
}

/// CLUSTER SLOTS' answer as (first, last, `host:port` of the primary).
fn parse_slots(value: &Value) -> Vec<(u16, u16, String)> {
    let int = |v: &Value| match v {
        Value::Int(i) => Some(*i),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let Value::Array(ranges) = value else {
        return Vec::new();
    };
    ranges
        .iter()
        .filter_map(|range| {
            let Value::Array(r) = range else { return None };
            let (first, last) = (int(r.first()?)?, int(r.get(1)?)?);
            let Value::Array(primary) = r.get(2)? else {
                return None;
            };
            let host = text(primary.first()?)?;
            let port = int(primary.get(1)?)?;
            Some((first as u16, last as u16, format!("{host}:{port}")))
        })
        .collect()
}

/// One connection per node, made on demand and dropped after any failure (a late answer on
/// it must never be read as the answer to a later command).
#[derive(Default)]
pub(crate) struct Links {
    links: HashMap<String, redis::Connection>,
}

/// One node's share of a pipelined exchange: the answers, or why there are none.
pub(crate) type Answers = std::result::Result<Vec<Value>, String>;

impl Links {
    /// Sends each node its packed pipeline (all nodes first, so the exchange costs one round
    /// trip to the slowest), then reads each node's `n` answers, waiting at most `wait` per
    /// node. Down nodes are not contacted: their share fails at once with why they are down.
    /// A node that fails to answer is marked down. Server errors come back as values.
    pub fn exchange(
        &mut self,
        cluster: &Cluster,
        requests: Vec<(String, Vec<u8>, usize)>,
        wait: Duration,
    ) -> Vec<(String, Answers)> {
        let mut sent = Vec::new();
        let mut out = Vec::new();
        for (node, packed, n) in requests {
            if let Some(cause) = cluster.down(&node) {
                out.push((node, Err(format!("down: {cause}"))));
                continue;
            }
            let reused = self.links.contains_key(&node);
            match self.send(cluster, &node, &packed, wait) {
                Ok(()) => sent.push((node, packed, n, reused)),
                // A connection the node closed (it restarted): once more on a fresh one.
                Err(_) if reused => match self.send(cluster, &node, &packed, wait) {
                    Ok(()) => sent.push((node, packed, n, false)),
                    Err(cause) => {
                        let cause = self.failed(cluster, &node, cause);
                        out.push((node, Err(cause)));
                    }
                },
                Err(cause) => {
                    let cause = self.failed(cluster, &node, cause);
                    out.push((node, Err(cause)));
                }
            }
        }
        for (node, packed, n, reused) in sent {
            let answers = match self.receive(&node, n, wait) {
                // Closed under us, not late: once more on a fresh connection.
                Err((cause, false)) if reused => match self.send(cluster, &node, &packed, wait) {
                    Ok(()) => self.receive(&node, n, wait).map_err(|(e, _)| e),
                    Err(e) => Err(e),
                }
                .map_err(|e| format!("{cause}; then {e}")),
                other => other.map_err(|(e, _)| e),
            };
            match answers {
                Ok(answers) => out.push((node, Ok(answers))),
                Err(cause) => {
                    let cause = self.failed(cluster, &node, cause);
                    out.push((node, Err(cause)));
                }
            }
        }
        out
    }

    /// Sends `packed` to `node`, connecting first if there is no connection.
    fn send(
        &mut self,
        cluster: &Cluster,
        node: &str,
        packed: &[u8],
        wait: Duration,
    ) -> std::result::Result<(), String> {
        let link = match self.links.entry(node.to_string()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(connect(node, cluster.timeouts.connect, wait)?)
            }
        };
        let sending = link
            .set_read_timeout(Some(wait))
            .and_then(|()| link.send_packed_command(packed));
        sending.map_err(|e| {
            self.links.remove(node);
            e.to_string()
        })
    }

    /// Reads `n` answers from `node`; on failure drops the connection (its unread answers may
    /// still come) and says why and whether it was a timeout.
    fn receive(
        &mut self,
        node: &str,
        n: usize,
        wait: Duration,
    ) -> std::result::Result<Vec<Value>, (String, bool)> {
        let link = self.links.get_mut(node).expect("sent on it");
        let mut answers = Vec::with_capacity(n);
        for _ in 0..n {
            match link.recv_response() {
                Ok(v) => answers.push(v),
                Err(e) => {
                    self.links.remove(node);
                    return Err((describe(&e, wait), e.is_timeout()));
                }
            }
        }
        Ok(answers)
    }

    /// Marks `node` down for `cause`; returns the cause.
    fn failed(&mut self, cluster: &Cluster, node: &str, cause: String) -> String {
        self.links.remove(node);
        cluster.mark_down(node, &cause);
        cause
    }

    /// Runs `f` on `node`'s connection, with `wait` on its answer (once more on a fresh
    /// connection when a reused one was closed under it: the node restarted); a failed
    /// connection, a timeout or an IO failure drops the connection and marks the node down.
    pub fn with<T>(
        &mut self,
        cluster: &Cluster,
        node: &str,
        wait: Duration,
        mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> std::result::Result<redis::RedisResult<T>, String> {
        if let Some(cause) = cluster.down(node) {
            return Err(format!("down: {cause}"));
        }
        let mut reused = self.links.contains_key(node);
        loop {
            let link = match self.links.entry(node.to_string()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(cluster.connect(node, wait)?)
                }
            };
            link.set_read_timeout(Some(wait))
                .and_then(|()| link.set_write_timeout(Some(wait)))
                .map_err(|e| e.to_string())?;
            match f(link) {
                Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                    self.links.remove(node);
                    if reused && !e.is_timeout() {
                        reused = false;
                        continue;
                    }
                    let cause = describe(&e, wait);
                    cluster.mark_down(node, &cause);
                    return Err(cause);
                }
                other => return Ok(other),
            }
        }
    }
}

/// An IO failure in words: a timeout says how long was waited.
fn describe(e: &redis::RedisError, wait: Duration) -> String {
    if e.is_timeout() {
        format!("no answer within {} ms", wait.as_millis())
    } else {
        e.to_string()
    }
}
