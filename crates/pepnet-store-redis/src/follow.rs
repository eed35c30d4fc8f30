//! Following a namespace's update streams, one per bucket. A thread keeps each stream's last
//! entry read and polls every stream with one pipeline per node (all nodes at once): at once
//! again after a poll that read entries, at once when the doorbell rings, else every
//! [`POLL`]. The doorbell is a Pub/Sub channel the write scripts publish to (classic Pub/Sub
//! reaches every node of the cluster); it only makes a write seen sooner, so a lost ring costs
//! at most one poll interval, never an update. A node that is down is skipped (its streams'
//! positions are kept, so nothing written there is missed once it is back, and nothing can be
//! written there while it is down).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::Value;

use pepnet_core::store::Key;

use crate::cluster::{Cluster, Links};
use crate::layout::{bucket_slot, stream_key};

/// How long a poll that read nothing waits for the doorbell before polling anyway.
const POLL: Duration = Duration::from_millis(50);

/// Entries read per stream per poll.
const READ_COUNT: usize = 4096;

/// What the follower saw, until the store takes it.
#[derive(Default)]
pub(crate) struct Changes {
    /// Keys written by some process.
    pub keys: Vec<Key>,
    /// Every cached row may be stale: a load announced a new generation, or a stream's
    /// position was unknown (its node was down when the store opened) and is known now.
    pub reload: bool,
    /// The newest generation announced.
    pub generation: u64,
}

pub(crate) struct Follower {
    pub cluster: Arc<Cluster>,
    pub namespace: String,
    pub buckets: u32,
    /// Feature names by spec index.
    pub features: Vec<String>,
    /// Per bucket, the last entry read; `None`: not known yet.
    pub positions: Vec<Option<String>>,
    pub changes: Arc<Mutex<Changes>>,
    pub links: Links,
    /// Rung (set true) by the doorbell's subscriber.
    pub bell: Arc<(Mutex<bool>, Condvar)>,
    /// Set when the store is dropped.
    pub stop: Arc<std::sync::atomic::AtomicBool>,
}

/// The doorbell channel of namespace `namespace`.
pub(crate) fn doorbell(namespace: &str) -> String {
    format!("pepnet:{namespace}:written")
}

impl Follower {
    /// Learns where each stream ends now (streams on nodes that do not answer stay unknown).
    pub fn start_positions(&mut self) {
        self.poll(true);
    }

    fn stopped(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Polls until the store is dropped.
    pub fn run(mut self) {
        {
            let (cluster, channel) = (self.cluster.clone(), doorbell(&self.namespace));
            let (bell, stop) = (self.bell.clone(), self.stop.clone());
            let _ = std::thread::Builder::new()
                .name("pepnet-store-doorbell".into())
                .spawn(move || listen(&cluster, &channel, &bell, &stop));
        }
        while !self.stopped() {
            if self.poll(false) > 0 {
                continue;
            }
            let (rung, wake) = &*self.bell;
            let guard = rung.lock().unwrap_or_else(|p| p.into_inner());
            let (mut guard, _) = wake
                .wait_timeout_while(guard, POLL, |rung| !*rung)
                .unwrap_or_else(|p| p.into_inner());
            *guard = false;
        }
    }

    /// One poll of every stream on a node that is up; returns the entries read.
    fn poll(&mut self, initial: bool) -> usize {
        let ns = self.namespace.clone();
        let mut by_node: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for b in 0..self.buckets {
            if let Some(node) = self.cluster.node_of(bucket_slot(&ns, b)) {
                by_node.entry(node).or_default().push(b);
            }
        }
        let mut requests = Vec::new();
        for (node, buckets) in &by_node {
            if self.cluster.down(node).is_some() {
                continue;
            }
            let mut pipe = redis::pipe();
            for &b in buckets {
                match &self.positions[b as usize] {
                    Some(position) => pipe
                        .cmd("XREAD")
                        .arg("COUNT")
                        .arg(READ_COUNT)
                        .arg("STREAMS")
                        .arg(stream_key(&ns, b))
                        .arg(position),
                    None => pipe
                        .cmd("XREVRANGE")
                        .arg(stream_key(&ns, b))
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1),
                };
            }
            requests.push((node.clone(), pipe.get_packed_pipeline(), buckets.len()));
        }
        let wait = self.cluster.timeouts.read;
        let answers = self.links.exchange(&self.cluster, requests, wait);
        let index: HashMap<&str, u32> = self
            .features
            .iter()
            .enumerate()
            .map(|(i, f)| (f.as_str(), i as u32))
            .collect();
        let mut read = 0;
        let mut keys = Vec::new();
        let (mut reload, mut generation, mut moved) = (false, None::<u64>, false);
        for (node, answer) in answers {
            let Ok(values) = answer else { continue };
            for (&b, value) in by_node[&node].iter().zip(values) {
                if let Value::ServerError(_) = value {
                    moved = true; // MOVED, CLUSTERDOWN...: the slot map is learned again
                    continue;
                }
                let position = &mut self.positions[b as usize];
                let entries: Vec<StreamId> = if position.is_some() {
                    redis::from_redis_value::<Option<StreamReadReply>>(value)
                        .ok()
                        .flatten()
                        .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                        .unwrap_or_default()
                } else {
                    let last = redis::from_redis_value::<StreamRangeReply>(value)
                        .map(|r| r.ids.into_iter().next().map(|e| e.id))
                        .unwrap_or(None);
                    *position = Some(last.unwrap_or_else(|| "0-0".into()));
                    // Writes may have landed between the open and now, unseen.
                    reload |= !initial;
                    continue;
                };
                for entry in entries {
                    read += 1;
                    if let Some(g) = entry.get::<u64>("generation") {
                        generation = Some(generation.map_or(g, |x| x.max(g)));
                    }
                    let f = entry.get::<String>("f");
                    let id = entry.get::<u64>("id");
                    if let (Some(&f), Some(id)) = (f.as_deref().and_then(|f| index.get(f)), id) {
                        keys.push((f, id));
                    }
                    *position = Some(entry.id);
                }
            }
        }
        if moved {
            let _ = self.cluster.learn_slots();
        }
        if !keys.is_empty() || reload || generation.is_some() {
            let mut changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
            changes.keys.extend(keys);
            changes.reload |= reload;
            if let Some(g) = generation.filter(|&g| g > changes.generation) {
                changes.generation = g;
                changes.reload |= !initial;
            }
        }
        read
    }
}

/// Subscribes to the doorbell on a node that is up, ringing `bell` at every message, until
/// `stop`; moves to another node when its node fails.
fn listen(
    cluster: &Cluster,
    channel: &str,
    bell: &(Mutex<bool>, Condvar),
    stop: &std::sync::atomic::AtomicBool,
) {
    let stopped = || stop.load(std::sync::atomic::Ordering::Relaxed);
    while !stopped() {
        let Some(node) = cluster.up_node() else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let Ok(mut connection) = cluster.connect(&node, Duration::from_millis(200)) else {
            continue;
        };
        let mut pubsub = connection.as_pubsub();
        if pubsub.subscribe(channel).is_err() {
            continue;
        }
        while !stopped() {
            match pubsub.get_message() {
                Ok(_) => {
                    let (rung, wake) = bell;
                    *rung.lock().unwrap_or_else(|p| p.into_inner()) = true;
                    wake.notify_one();
                }
                Err(e) if e.is_timeout() => {}
                Err(_) => break,
            }
        }
    }
}
