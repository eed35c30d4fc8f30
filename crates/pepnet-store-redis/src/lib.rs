//! The embedding store on a Redis Cluster: rows that outgrow one host, shared by every scoring
//! process that points at the same cluster and namespace.
//!
//! Layout, per namespace `ns`:
//! - a row: key `pepnet:<ns>:{<feature>:<id>}` (the braces are Redis Cluster's hash tag, so
//!   rows spread over every slot, and a row's companion keys could share its slot), value the
//!   write's version (Unix microseconds, u64 little-endian) then the row: d f32s or d f16s,
//!   little-endian;
//! - `pepnet:<ns>:{<feature>:<id>}:n`: the row's writes in the current update window (the
//!   update cap), expiring with the window;
//! - `pepnet:<ns>:meta`: a hash of `d`, `dtype` (`f32` or `f16`), `rows` (the rows loaded) and
//!   the update policy every process follows: `max_updates` (0: no cap), `window_secs`,
//!   `expire_after_secs` (0: rows never expire);
//! - `pepnet:<ns>:updates`: a stream with one entry (`f`, `id`) per row written.
//!
//! Updates: a write runs one script on the row's slot that counts it against the cap, refuses
//! it past the cap, and sets the row with the expiry as its TTL (so an expired id reads as
//! unknown everywhere); then it appends the key to the stream. Every process with the store
//! open follows the stream on a thread of its own (a blocking XREAD returns as soon as an entry
//! lands) and drops the keys it names from its GPU cache before its next batch, which then
//! fetches the new rows. A cached row also leaves the cache when its TTL runs out (its version
//! says when it was written).
//!
//! One batch's misses are fetched with one pipeline of GETs per node, routed by the cluster's
//! slot map: every node is sent its share first, then the answers are read, so a batch costs one
//! round trip to the slowest node involved, however many keys and nodes. A node's connection is
//! dropped at its first failed or late answer (its other answers are not waited for, so a frozen
//! node costs one timeout, not one per key, and a late answer is never read as the answer to a
//! later command), and its keys are tried once more on a fresh connection. A key a node no
//! longer serves (the cluster resharded) is fetched through the cluster client, which follows the
//! redirection, and the slot map is learned again. A node that still fails makes the fetch fail
//! naming it and the features of its keys, or, in degraded mode, its keys are reported as
//! unavailable (the cache reads their default rows and counts them) and the node is left alone
//! for a second before it is tried again: scoring recovers by itself when the node is back.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use half::f16;
use redis::cluster::{cluster_pipe, ClusterClient, ClusterConnection};
use redis::Value;

use pepnet_core::error::{Error, Result};
use pepnet_core::store::UpdatePolicy;
use pepnet_core::store::{EmbeddingStore, Fetched, Key};

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

    fn bytes(self) -> usize {
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
    /// Connecting to and waiting for a node.
    pub timeout: Duration,
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
            timeout: Duration::from_millis(1000),
            degraded: false,
        })
    }
}

/// Redis Cluster's key slot: CRC16 (XMODEM) of the key's hash tag, modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    let mut crc: u16 = 0;
    for &b in tagged {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// Rows by (feature, id) in a Redis Cluster.
pub struct RedisStore {
    options: RedisOptions,
    /// Spec feature names by index (keys name features, not indices, so a spec that reorders
    /// its features reads the same rows).
    features: Vec<String>,
    d: usize,
    row_type: RowType,
    rows: usize,
    /// The namespace's update policy, from its metadata.
    policy: UpdatePolicy,
    connection: ClusterConnection,
    /// Keys written by any process, from the update stream, not yet taken by the cache.
    changed: Arc<Mutex<Vec<Key>>>,
    /// Tells the stream follower to stop (when the store is dropped).
    stop: Arc<AtomicBool>,
    /// Slot ranges' owners: (first slot, last slot, node), learned at open and again when a
    /// node answers that it no longer serves a key.
    slots: Vec<(u16, u16, String)>,
    /// Each node's connection for reads, made on demand and dropped after any failure.
    links: HashMap<String, redis::Connection>,
    /// Nodes left alone until the instant given (degraded mode).
    resting: HashMap<String, Instant>,
}

/// How long a node that failed is left alone in degraded mode before it is tried again.
const REST: Duration = Duration::from_secs(1);

/// The update stream keeps about this many entries: a follower further behind than that
/// (stopped for long) misses some, and serves those rows stale until they leave its cache.
const STREAM_LENGTH: u64 = 1_000_000;

/// How long a follower's XREAD waits for an entry before checking whether to stop.
const FOLLOW_BLOCK_MS: usize = 200;

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The write of one row under the update policy, atomically on the row's slot. KEYS: the row,
/// its write counter. ARGV: the value, the cap (0: none), the window in seconds, the TTL in
/// seconds (0: none). Returns 0 when capped, 1 for a new row, 2 for a replaced one.
fn write_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        redis::Script::new(
            r"
            local cap = tonumber(ARGV[2])
            if cap > 0 then
                local n = redis.call('INCR', KEYS[2])
                if n == 1 then redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3])) end
                if n > cap then return 0 end
            end
            local existed = redis.call('EXISTS', KEYS[1])
            local ttl = tonumber(ARGV[4])
            if ttl > 0 then
                redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
            else
                redis.call('SET', KEYS[1], ARGV[1])
            end
            return 1 + existed
            ",
        )
    })
}

/// Follows namespace `options.namespace`'s update stream from entry `from`, adding the keys
/// written to `changed`, until `stop`. A broken connection is made again (the entries written
/// meanwhile are still read, from the last id seen).
fn follow(
    options: RedisOptions,
    features: Vec<String>,
    from: String,
    changed: Arc<Mutex<Vec<Key>>>,
    stop: Arc<AtomicBool>,
) {
    use redis::streams::{StreamReadOptions, StreamReadReply};
    use redis::Commands;
    let index: HashMap<&str, u32> = features
        .iter()
        .enumerate()
        .map(|(i, f)| (f.as_str(), i as u32))
        .collect();
    let stream = RedisStore::stream_key(&options.namespace);
    let mut last = from;
    let mut connection = None;
    let read = StreamReadOptions::default()
        .block(FOLLOW_BLOCK_MS)
        .count(4096);
    while !stop.load(Ordering::Relaxed) {
        let c = match connection.as_mut() {
            Some(c) => c,
            None => {
                let mut o = options.clone();
                o.timeout += Duration::from_millis(FOLLOW_BLOCK_MS as u64);
                match RedisStore::connect(&o) {
                    Ok(c) => connection.insert(c),
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                }
            }
        };
        let reply: redis::RedisResult<Option<StreamReadReply>> =
            c.xread_options(&[&stream], &[&last], &read);
        match reply {
            Ok(Some(reply)) => {
                let mut keys = Vec::new();
                for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
                    let f = entry.get::<String>("f");
                    let id = entry.get::<u64>("id");
                    if let (Some(&f), Some(id)) = (f.as_deref().and_then(|f| index.get(f)), id) {
                        keys.push((f, id));
                    }
                    last = entry.id;
                }
                changed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(keys);
            }
            Ok(None) => {}
            Err(_) => {
                connection = None;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn redis_error(what: &str, e: redis::RedisError) -> Error {
    Error::Store(format!("{what}: {e}"))
}

impl RedisStore {
    fn client(options: &RedisOptions) -> Result<ClusterClient> {
        ClusterClient::builder(options.nodes.clone())
            .connection_timeout(options.timeout)
            .response_timeout(options.timeout)
            .retries(2)
            .min_retry_wait(10)
            .max_retry_wait(100)
            .build()
            .map_err(|e| redis_error(&format!("cluster {}", options.nodes.join(",")), e))
    }

    fn connect(options: &RedisOptions) -> Result<ClusterConnection> {
        Self::client(options)?
            .get_connection()
            .map_err(|e| redis_error(&format!("cluster {}", options.nodes.join(",")), e))
    }

    fn meta_key(namespace: &str) -> String {
        format!("pepnet:{namespace}:meta")
    }

    /// Opens namespace `options.namespace`, which a `pepnet store load` must have written, for
    /// a model whose features are `features` and rows `d` wide.
    pub fn open(options: RedisOptions, spec: &pepnet_core::spec::ModelSpec) -> Result<Self> {
        let features: Vec<String> = spec.features.iter().map(|f| f.name.clone()).collect();
        let d = spec.d();
        let mut connection = Self::connect(&options)?;
        let meta: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(Self::meta_key(&options.namespace))
            .query(&mut connection)
            .map_err(|e| redis_error("reading the namespace's metadata", e))?;
        let ns = &options.namespace;
        if meta.is_empty() {
            return Err(Error::Store(format!(
                "namespace '{ns}' holds no rows on {}; load a model into it with `pepnet store load`",
                options.nodes.join(",")
            )));
        }
        let field = |name: &str| {
            meta.get(name)
                .ok_or_else(|| Error::Store(format!("namespace '{ns}': metadata has no '{name}'")))
        };
        let stored_d: usize = field("d")?
            .parse()
            .map_err(|_| Error::Store(format!("namespace '{ns}': metadata 'd' is not a number")))?;
        if stored_d != d {
            return Err(Error::Store(format!(
                "namespace '{ns}' holds rows of {stored_d} floats, the model's d is {d}"
            )));
        }
        let row_type = RowType::parse(field("dtype")?).ok_or_else(|| {
            Error::Store(format!(
                "namespace '{ns}': metadata 'dtype' is '{}', expected f32 or f16",
                meta["dtype"]
            ))
        })?;
        let number = |name: &str| meta.get(name).and_then(|r| r.parse::<u64>().ok());
        let rows = number("rows").unwrap_or(0) as usize;
        let policy = UpdatePolicy {
            max_updates: number("max_updates")
                .filter(|&n| n > 0)
                .map(|n| n.min(u32::MAX as u64) as u32),
            window_secs: number("window_secs").unwrap_or(3600).max(1),
            expire_after_secs: number("expire_after_secs").filter(|&n| n > 0),
        };
        let changed = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let start = Self::stream_end(&mut connection, &options.namespace)?;
        {
            let (options, features, changed, stop) = (
                options.clone(),
                features.clone(),
                changed.clone(),
                stop.clone(),
            );
            std::thread::Builder::new()
                .name("pepnet-store-updates".into())
                .spawn(move || follow(options, features, start, changed, stop))
                .map_err(|e| Error::Store(format!("starting the update follower: {e}")))?;
        }
        let mut store = Self {
            options,
            features,
            d,
            row_type,
            rows,
            policy,
            connection,
            changed,
            stop,
            slots: Vec::new(),
            links: HashMap::new(),
            resting: HashMap::new(),
        };
        store.learn_slots()?;
        Ok(store)
    }

    fn stream_key(namespace: &str) -> String {
        format!("pepnet:{namespace}:updates")
    }

    /// The id of the update stream's last entry ("0-0" before any): where following starts.
    fn stream_end(connection: &mut ClusterConnection, namespace: &str) -> Result<String> {
        let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(Self::stream_key(namespace))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(connection)
            .map_err(|e| redis_error("reading the update stream", e))?;
        Ok(last
            .ids
            .first()
            .map_or_else(|| "0-0".to_string(), |e| e.id.clone()))
    }

    /// The update policy every process using the namespace follows.
    pub fn policy(&self) -> UpdatePolicy {
        self.policy
    }

    pub fn row_type(&self) -> RowType {
        self.row_type
    }

    fn key(&self, key: Key) -> String {
        row_key(
            &self.options.namespace,
            &self.features[key.0 as usize],
            key.1,
        )
    }

    /// The node serving `slot`, from the last slot map learned.
    fn node_of(&self, slot: u16) -> Option<&str> {
        self.slots
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, node)| node.as_str())
    }

    /// Asks the seed nodes, one after another, for the cluster's slot map.
    fn learn_slots(&mut self) -> Result<()> {
        let mut last_error = String::from("no seed nodes");
        for seed in &self.options.nodes {
            match node_connection(seed, self.options.timeout).and_then(|mut c| {
                redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query::<Value>(&mut c)
                    .map_err(|e| e.to_string())
            }) {
                Ok(value) => {
                    self.slots = parse_slots(&value);
                    return Ok(());
                }
                Err(e) => last_error = format!("{seed}: {e}"),
            }
        }
        Err(Error::Store(format!(
            "no seed node answered CLUSTER SLOTS (last: {last_error})"
        )))
    }

    /// Fetches the values of `keys` (by index; `None`: no such key) into `values`, one pipeline
    /// per node; returns the nodes that failed, each with why and its keys' indices.
    fn fetch_routed(&mut self, keys: &[Key], values: &mut [Option<Vec<u8>>]) -> Vec<Failed> {
        let names: Vec<String> = keys.iter().map(|&k| self.key(k)).collect();
        let mut by_node: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            let node = self
                .node_of(key_slot(name.as_bytes()))
                .unwrap_or("(no node serves the slot)");
            by_node.entry(node.to_string()).or_default().push(i);
        }
        let mut failed = Vec::new();
        let mut sent = Vec::new();
        for (node, indices) in by_node {
            let link = match self.links.entry(node.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
                std::collections::hash_map::Entry::Vacant(e) => {
                    node_connection(&format!("redis://{node}"), self.options.timeout)
                        .map(|c| e.insert(c))
                }
            };
            let mut pipe = redis::pipe();
            for &i in &indices {
                pipe.get(&names[i]);
            }
            let sending = link.and_then(|c| {
                c.send_packed_command(&pipe.get_packed_pipeline())
                    .map_err(|e| e.to_string())
            });
            match sending {
                Ok(()) => sent.push((node, indices)),
                Err(cause) => {
                    self.links.remove(&node);
                    failed.push(Failed {
                        node,
                        cause,
                        keys: indices,
                    });
                }
            }
        }
        let mut redirected = Vec::new();
        for (node, indices) in sent {
            let link = self.links.get_mut(&node).expect("sent on it");
            let mut cause = None;
            for &i in &indices {
                match link.recv_response() {
                    Ok(Value::Nil) => values[i] = None,
                    Ok(Value::BulkString(bytes)) => values[i] = Some(bytes),
                    // MOVED, ASK, TRYAGAIN, CLUSTERDOWN...: the cluster client sorts it out.
                    Ok(Value::ServerError(_)) => redirected.push(i),
                    Ok(other) => {
                        cause = Some(format!("answered a GET with {other:?}"));
                        break;
                    }
                    Err(e) => {
                        cause = Some(e.to_string());
                        break;
                    }
                }
            }
            if let Some(cause) = cause {
                // Its unread answers may still come: this connection is never read again.
                self.links.remove(&node);
                failed.push(Failed {
                    node,
                    cause,
                    keys: indices,
                });
            }
        }
        if !redirected.is_empty() {
            let _ = self.learn_slots();
            let mut pipe = cluster_pipe();
            for &i in &redirected {
                pipe.get(&names[i]);
            }
            match pipe.query::<Vec<Option<Vec<u8>>>>(&mut self.connection) {
                Ok(answers) => {
                    for (&i, v) in redirected.iter().zip(answers) {
                        values[i] = v;
                    }
                }
                Err(e) => failed.push(Failed {
                    node: "the cluster (following a redirection)".into(),
                    cause: e.to_string(),
                    keys: redirected,
                }),
            }
        }
        failed
    }

    /// Copies a stored value's row into `out`; returns its version (write time, µs).
    fn decode(&self, key: Key, bytes: &[u8], out: &mut [f32]) -> Result<u64> {
        let want = 8 + self.d * self.row_type.bytes();
        if bytes.len() != want {
            return Err(Error::Store(format!(
                "key {}: {} bytes, expected {want} (an 8-byte version and {} {} values)",
                self.key(key),
                bytes.len(),
                self.d,
                self.row_type.name()
            )));
        }
        let data = &bytes[8..];
        match self.row_type {
            RowType::F32 => {
                for (x, b) in out.iter_mut().zip(data.chunks_exact(4)) {
                    *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            RowType::F16 => {
                for (x, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                    *x = f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
        }
        Ok(u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")))
    }

    /// The error naming each node that failed, the features of its keys, and why.
    fn node_error(&self, keys: &[Key], failed: &[Failed]) -> Error {
        let nodes: Vec<String> = failed
            .iter()
            .map(|f| {
                let features: BTreeSet<u32> = f.keys.iter().map(|&i| keys[i].0).collect();
                let names: Vec<String> = features
                    .iter()
                    .map(|&f| match self.features.get(f as usize) {
                        Some(name) => format!("feature '{name}'"),
                        None => format!("feature #{f}"),
                    })
                    .collect();
                format!(
                    "node {} (rows of {}: {})",
                    f.node,
                    names.join(", "),
                    f.cause
                )
            })
            .collect();
        Error::Store(format!(
            "{} did not answer; start it again, or score with default rows for its ids with \
             --degraded",
            nodes.join(" and ")
        ))
    }
}

/// A node a fetch could not read from.
struct Failed {
    node: String,
    /// The connection error, the timeout, or an answer that is not a row.
    cause: String,
    /// Indices of its keys in the fetch.
    keys: Vec<usize>,
}

/// A row's key.
pub fn row_key(namespace: &str, feature: &str, id: u64) -> String {
    format!("pepnet:{namespace}:{{{feature}:{id}}}")
}

/// A row's value: the version, then the row as `row_type`.
pub fn row_value(version: u64, row: &[f32], row_type: RowType) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + row.len() * row_type.bytes());
    v.extend_from_slice(&version.to_le_bytes());
    for &x in row {
        match row_type {
            RowType::F32 => v.extend_from_slice(&x.to_le_bytes()),
            RowType::F16 => v.extend_from_slice(&f16::from_f32(x).to_le_bytes()),
        }
    }
    v
}

/// Microseconds since the Unix epoch: a row's version.
fn version_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A plain connection to one node, with `timeout` on connecting, reading and writing.
fn node_connection(url: &str, timeout: Duration) -> std::result::Result<redis::Connection, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let c = client
        .get_connection_with_timeout(timeout)
        .map_err(|e| e.to_string())?;
    c.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    c.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    Ok(c)
}

/// CLUSTER SLOTS' answer as (first, last, "host:port" of the primary).
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

impl EmbeddingStore for RedisStore {
    fn dim(&self) -> usize {
        self.d
    }

    fn get_many(&mut self, keys: &[Key], out: &mut [f32], found: &mut [Fetched]) -> Result<()> {
        let now = Instant::now();
        self.resting.retain(|_, until| *until > now);
        // Degraded mode: keys of resting nodes are unavailable without asking.
        let mut asked: Vec<usize> = (0..keys.len()).collect();
        if self.options.degraded && !self.resting.is_empty() {
            asked.retain(|&i| {
                let slot = key_slot(self.key(keys[i]).as_bytes());
                let resting = self
                    .node_of(slot)
                    .is_some_and(|n| self.resting.contains_key(n));
                if resting {
                    found[i] = Fetched::Unavailable;
                }
                !resting
            });
        }
        let asked_keys: Vec<Key> = asked.iter().map(|&i| keys[i]).collect();
        let mut values = vec![None; asked_keys.len()];
        let mut failed = self.fetch_routed(&asked_keys, &mut values);
        if !failed.is_empty() {
            // Once more on fresh connections (a node that restarted leaves the old one broken;
            // the slot map may have changed).
            let _ = self.learn_slots();
            let again: Vec<usize> = failed.iter().flat_map(|f| f.keys.clone()).collect();
            let again_keys: Vec<Key> = again.iter().map(|&i| asked_keys[i]).collect();
            let mut again_values = vec![None; again.len()];
            failed = self.fetch_routed(&again_keys, &mut again_values);
            for (&i, v) in again.iter().zip(again_values) {
                values[i] = v;
            }
            for f in &mut failed {
                for k in &mut f.keys {
                    *k = again[*k];
                }
            }
        }
        if !failed.is_empty() && !self.options.degraded {
            return Err(self.node_error(&asked_keys, &failed));
        }
        let mut unavailable = vec![false; asked.len()];
        let until = Instant::now() + REST;
        for f in &failed {
            self.resting.insert(f.node.clone(), until);
            for &k in &f.keys {
                unavailable[k] = true;
            }
        }
        let d = self.d;
        for (j, (&i, value)) in asked.iter().zip(values).enumerate() {
            found[i] = match value {
                _ if unavailable[j] => Fetched::Unavailable,
                Some(bytes) => {
                    let written = self.decode(keys[i], &bytes, &mut out[i * d..(i + 1) * d])?;
                    match self.policy.expire_after_secs {
                        // Redis drops the key at its TTL; the cache drops its copy then too.
                        Some(after) => Fetched::Expires(written / 1_000_000 + after),
                        None => Fetched::Row,
                    }
                }
                None => Fetched::Unknown,
            };
        }
        Ok(())
    }

    fn put(&mut self, key: Key, row: &[f32]) -> Result<bool> {
        let name = self.key(key);
        let value = row_value(version_now(), row, self.row_type);
        let outcome: i64 = write_script()
            .key(&name)
            .key(format!("{name}:n"))
            .arg(value)
            .arg(self.policy.max_updates.unwrap_or(0))
            .arg(self.policy.window_secs)
            .arg(self.policy.expire_after_secs.unwrap_or(0))
            .invoke(&mut self.connection)
            .map_err(|e| {
                // Name the node the row lives on, and its feature, as a failed read does.
                let node = self
                    .node_of(key_slot(name.as_bytes()))
                    .map_or_else(|| "the node".to_string(), |n| format!("node {n}"));
                let feature = &self.features[key.0 as usize];
                redis_error(
                    &format!("writing {name} (a row of feature '{feature}', held by {node})"),
                    e,
                )
            })?;
        if outcome == 0 {
            return Ok(false); // capped
        }
        if outcome == 1 {
            self.rows += 1;
        }
        redis::cmd("XADD")
            .arg(Self::stream_key(&self.options.namespace))
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_LENGTH)
            .arg("*")
            .arg("f")
            .arg(&self.features[key.0 as usize])
            .arg("id")
            .arg(key.1)
            .query::<()>(&mut self.connection)
            .map_err(|e| redis_error("announcing a write on the update stream", e))?;
        Ok(true)
    }

    fn take_changed(&mut self) -> Vec<Key> {
        std::mem::take(&mut *self.changed.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn keeps_update_policy(&self) -> Option<UpdatePolicy> {
        Some(self.policy)
    }

    fn remove(&mut self, key: Key) -> Result<bool> {
        let n: i64 = redis::cmd("DEL")
            .arg(self.key(key))
            .query(&mut self.connection)
            .map_err(|e| redis_error(&format!("deleting {}", self.key(key)), e))?;
        if n > 0 {
            self.rows = self.rows.saturating_sub(1);
        }
        Ok(n > 0)
    }

    fn len(&self) -> usize {
        self.rows
    }

    fn keys(&self) -> Option<Vec<Key>> {
        None
    }
}

/// What a bulk load wrote.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Loaded {
    pub rows: usize,
    pub seconds: f64,
}

/// Writes every hashed row of `weights` into namespace `options.namespace` as `row_type`, in
/// pipelines of `chunk` rows (one round trip each, to every node at once), then the namespace's
/// metadata with the update `policy` every process using it will follow (rows expire
/// `policy.expire_after_secs` after the load unless written again). `progress` is told the
/// rows written so far.
pub fn load(
    options: &RedisOptions,
    spec: &pepnet_core::spec::ModelSpec,
    weights: &pepnet_core::weights::Weights,
    row_type: RowType,
    policy: &UpdatePolicy,
    chunk: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Loaded> {
    let start = Instant::now();
    let mut connection = RedisStore::connect(options)?;
    let d = spec.d();
    let total: usize = spec
        .features
        .iter()
        .filter_map(|f| weights.hashed(&f.name))
        .map(|h| h.ids.len())
        .sum();
    let version = version_now();
    let mut written = 0;
    for feature in &spec.features {
        let Some(h) = weights.hashed(&feature.name) else {
            continue;
        };
        for (c, ids) in h.ids.chunks(chunk.max(1)).enumerate() {
            let mut pipe = cluster_pipe();
            for (i, &id) in ids.iter().enumerate() {
                let r = c * chunk.max(1) + i;
                let key = row_key(&options.namespace, &feature.name, id);
                let value = row_value(version, &h.rows[r * d..(r + 1) * d], row_type);
                match policy.expire_after_secs {
                    Some(ttl) => pipe.set_ex(key, value, ttl).ignore(),
                    None => pipe.set(key, value).ignore(),
                };
            }
            pipe.query::<()>(&mut connection).map_err(|e| {
                redis_error(
                    &format!("writing rows of feature '{}' to the cluster", feature.name),
                    e,
                )
            })?;
            written += ids.len();
            progress(written, total);
        }
    }
    redis::cmd("HSET")
        .arg(RedisStore::meta_key(&options.namespace))
        .arg("d")
        .arg(d)
        .arg("dtype")
        .arg(row_type.name())
        .arg("rows")
        .arg(written)
        .arg("max_updates")
        .arg(policy.max_updates.unwrap_or(0))
        .arg("window_secs")
        .arg(policy.window_secs)
        .arg("expire_after_secs")
        .arg(policy.expire_after_secs.unwrap_or(0))
        .query::<()>(&mut connection)
        .map_err(|e| redis_error("writing the namespace's metadata", e))?;
    Ok(Loaded {
        rows: written,
        seconds: start.elapsed().as_secs_f64(),
    })
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
    fn key_slots_match_redis_cluster() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(key_slot(b"123456789"), 0x31C3); // the CRC16 check value
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }

    #[test]
    fn rows_encode_with_their_version_and_store_urls_parse() {
        let row = [0.1f32, -2.5, 1e-3, 7.0];
        for t in [RowType::F32, RowType::F16] {
            let v = row_value(42, &row, t);
            assert_eq!(v.len(), 8 + 4 * t.bytes());
            assert_eq!(u64::from_le_bytes(v[..8].try_into().unwrap()), 42);
        }
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
