//! [`RedisStore`]: the [`EmbeddingStore`] the GPU cache fetches its misses from and writes live
//! updates through.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use redis::Value;

use pepnet_core::error::{Error, Result};
use pepnet_core::store::{EmbeddingStore, Fetched, Key, UpdatePolicy};

use crate::cluster::{Cluster, Links};
use crate::follow::{doorbell, Changes, Follower};
use crate::layout::{
    bucket_of, bucket_slot, check_namespace, decode_row, meta_key, row_key, row_value, stream_key,
    version_now, LAYOUT, MIN_BUCKETS,
};
use crate::{RedisOptions, RowType};

/// The update stream keeps about this many entries per bucket: a follower further behind than
/// that (stopped for long) misses some, and serves those rows stale until they leave its cache.
pub(crate) const STREAM_LENGTH: u64 = 100_000;

/// A namespace's metadata (every bucket holds a copy).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Meta {
    pub d: usize,
    pub row_type: RowType,
    pub buckets: u32,
    pub policy: UpdatePolicy,
    pub generation: u64,
    /// The bucket's rows.
    pub rows: u64,
}

impl Meta {
    /// Reads a bucket's metadata hash; `None` when it is empty (no such bucket).
    pub fn parse(ns: &str, value: Value) -> Result<Option<Self>> {
        let meta: HashMap<String, String> = redis::from_redis_value(value)
            .map_err(|e| Error::Store(format!("namespace '{ns}': metadata is not a hash: {e}")))?;
        if meta.is_empty() {
            return Ok(None);
        }
        let field = |name: &str| {
            meta.get(name)
                .ok_or_else(|| Error::Store(format!("namespace '{ns}': metadata has no '{name}'")))
        };
        let number = |name: &str| -> Result<u64> {
            field(name)?.parse().map_err(|_| {
                Error::Store(format!(
                    "namespace '{ns}': metadata '{name}' is '{}', expected a number",
                    meta[name]
                ))
            })
        };
        let layout = number("layout")?;
        if layout != LAYOUT as u64 {
            return Err(Error::Store(format!(
                "namespace '{ns}' has key layout {layout}, this pepnet reads layout {LAYOUT}; \
                 load the model into it again with `pepnet store load`"
            )));
        }
        let row_type = RowType::parse(field("dtype")?).ok_or_else(|| {
            Error::Store(format!(
                "namespace '{ns}': metadata 'dtype' is '{}', expected f32 or f16",
                meta["dtype"]
            ))
        })?;
        let buckets = number("buckets")?;
        if !(MIN_BUCKETS as u64..=16384).contains(&buckets) {
            return Err(Error::Store(format!(
                "namespace '{ns}': metadata 'buckets' is {buckets}, expected {MIN_BUCKETS} to 16384"
            )));
        }
        Ok(Some(Self {
            d: number("d")? as usize,
            row_type,
            buckets: buckets as u32,
            policy: UpdatePolicy {
                max_updates: Some(number("max_updates")?)
                    .filter(|&n| n > 0)
                    .map(|n| n.min(u32::MAX as u64) as u32),
                window_secs: number("window_secs")?.max(1),
                expire_after_secs: Some(number("expire_after_secs")?).filter(|&n| n > 0),
            },
            generation: number("generation")?,
            rows: number("rows")?,
        }))
    }
}

/// Reads the metadata of `buckets` (one pipeline per node); per bucket, `Ok(Some)`: its copy,
/// `Ok(None)`: it has none (its node lost its data, or no namespace), `Err`: its node did not
/// answer. Fails only on metadata that is there but wrong.
pub(crate) fn read_metas(
    cluster: &Cluster,
    links: &mut Links,
    ns: &str,
    buckets: impl Iterator<Item = u32>,
) -> Result<BTreeMap<u32, std::result::Result<Option<Meta>, String>>> {
    let mut by_node: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for b in buckets {
        match cluster.node_of(bucket_slot(ns, b)) {
            Some(node) => by_node.entry(node).or_default().push(b),
            None => {
                out.insert(b, Err("no node serves its slot".to_string()));
            }
        }
    }
    let requests = by_node
        .iter()
        .map(|(node, bs)| {
            let mut pipe = redis::pipe();
            for &b in bs {
                pipe.cmd("HGETALL").arg(meta_key(ns, b));
            }
            (node.clone(), pipe.get_packed_pipeline(), bs.len())
        })
        .collect();
    for (node, answer) in links.exchange(cluster, requests, cluster.timeouts.read) {
        let bs = &by_node[&node];
        match answer {
            Ok(values) => {
                for (&b, v) in bs.iter().zip(values) {
                    let meta = match v {
                        Value::ServerError(e) => Err(format!("node {node}: {e:?}")),
                        v => Ok(Meta::parse(ns, v)?),
                    };
                    out.insert(b, meta);
                }
            }
            Err(cause) => {
                for &b in bs {
                    out.insert(b, Err(format!("node {node}: {cause}")));
                }
            }
        }
    }
    Ok(out)
}

/// Rows by (feature, id) in a Redis Cluster.
pub struct RedisStore {
    options: RedisOptions,
    cluster: Arc<Cluster>,
    links: Links,
    /// Spec feature names by index (keys name features, not indices, so a spec that reorders
    /// its features reads the same rows).
    features: Vec<String>,
    meta: Meta,
    /// Each bucket's hash slot.
    bucket_slots: Vec<u16>,
    rows: usize,
    changes: Arc<Mutex<Changes>>,
    /// Stops the update follower.
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.cluster.stop();
    }
}

/// The write of one row under the update policy, atomically on its bucket's slot, with its
/// announcement. KEYS: the row, its write counter, the bucket's metadata, the bucket's stream.
/// ARGV: the value, the cap (0: none), the window in seconds, the TTL in seconds (0: none), the
/// feature, the id, the stream's length, the doorbell channel. Returns -1 when the bucket has no metadata (its node
/// lost its data), 0 when capped, 1 for a new row, 2 for a replaced one.
fn write_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        redis::Script::new(
            r"
            if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
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
            if existed == 0 then redis.call('HINCRBY', KEYS[3], 'rows', 1) end
            redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 'f', ARGV[5], 'id', ARGV[6])
            redis.call('PUBLISH', ARGV[8], '1')
            return 1 + existed
            ",
        )
    })
}

/// The removal of one row with its announcement. KEYS: the row, the bucket's metadata, the
/// bucket's stream. ARGV: the feature, the id, the stream's length, the doorbell channel.
/// Returns the keys removed.
fn remove_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        redis::Script::new(
            r"
            local n = redis.call('DEL', KEYS[1])
            if n > 0 then
                redis.call('HINCRBY', KEYS[2], 'rows', -1)
                redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'f', ARGV[1], 'id', ARGV[2])
                redis.call('PUBLISH', ARGV[4], '1')
            end
            return n
            ",
        )
    })
}

/// A node a fetch could not read from.
struct Failed {
    node: String,
    /// Why: down, timed out, refused, or restarted without its data.
    cause: String,
    /// Indices of its keys in the fetch.
    keys: Vec<usize>,
}

impl RedisStore {
    /// Opens namespace `options.namespace`, which a `pepnet store load` must have written, for
    /// a model whose features are `spec`'s. Any node that answers can say the namespace's
    /// metadata, so a down node does not stop the open: its rows fail or degrade when read.
    pub fn open(options: RedisOptions, spec: &pepnet_core::spec::ModelSpec) -> Result<Self> {
        let ns = options.namespace.clone();
        check_namespace(&ns)?;
        let features: Vec<String> = spec.features.iter().map(|f| f.name.clone()).collect();
        let cluster = Cluster::new(&options.nodes, options.timeouts, options.probe);
        cluster.learn_slots()?;
        let mut links = Links::default();
        let mut metas = read_metas(&cluster, &mut links, &ns, 0..MIN_BUCKETS)?;
        let Some(meta) = metas.values().find_map(|m| m.clone().ok().flatten()) else {
            let unanswered: Vec<String> = metas.values().filter_map(|m| m.clone().err()).collect();
            return Err(Error::Store(if unanswered.len() == metas.len() {
                format!(
                    "namespace '{ns}': no node holding its metadata answered ({})",
                    unanswered.join("; ")
                )
            } else {
                format!(
                    "namespace '{ns}' holds no rows on {}; load a model into it with \
                     `pepnet store load` (a namespace loaded by a pepnet older than key layout \
                     {LAYOUT} must be loaded again)",
                    cluster.seeds()
                )
            }));
        };
        let d = spec.d();
        if meta.d != d {
            return Err(Error::Store(format!(
                "namespace '{ns}' holds rows of {} floats, the model's d is {d}",
                meta.d
            )));
        }
        if meta.buckets > MIN_BUCKETS {
            metas.extend(read_metas(
                &cluster,
                &mut links,
                &ns,
                MIN_BUCKETS..meta.buckets,
            )?);
        }
        let rows = metas
            .values()
            .filter_map(|m| m.clone().ok().flatten())
            .map(|m| m.rows)
            .sum::<u64>() as usize;
        let generation = metas
            .values()
            .filter_map(|m| m.clone().ok().flatten())
            .map(|m| m.generation)
            .max()
            .unwrap_or(meta.generation);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let changes = Arc::new(Mutex::new(Changes {
            generation,
            ..Default::default()
        }));
        let mut follower = Follower {
            cluster: cluster.clone(),
            namespace: ns.clone(),
            buckets: meta.buckets,
            features: features.clone(),
            positions: vec![None; meta.buckets as usize],
            changes: changes.clone(),
            links: Links::default(),
            bell: Arc::new((Mutex::new(false), std::sync::Condvar::new())),
            stop: stop.clone(),
        };
        follower.start_positions();
        std::thread::Builder::new()
            .name("pepnet-store-updates".into())
            .spawn(move || follower.run())
            .map_err(|e| Error::Store(format!("starting the update follower: {e}")))?;
        cluster.start_prober()?;
        Ok(Self {
            bucket_slots: (0..meta.buckets).map(|b| bucket_slot(&ns, b)).collect(),
            options,
            cluster,
            links,
            features,
            meta: Meta { generation, ..meta },
            rows,
            changes,
            stop,
        })
    }

    /// The update policy every process using the namespace follows.
    pub fn policy(&self) -> UpdatePolicy {
        self.meta.policy
    }

    pub fn row_type(&self) -> RowType {
        self.meta.row_type
    }

    /// The namespace's generation: how many loads it has had.
    pub fn generation(&self) -> u64 {
        self.meta.generation
    }

    fn bucket(&self, key: Key) -> u32 {
        bucket_of(&self.features[key.0 as usize], key.1, self.meta.buckets)
    }

    fn key(&self, key: Key) -> String {
        row_key(
            &self.options.namespace,
            self.bucket(key),
            &self.features[key.0 as usize],
            key.1,
        )
    }

    /// Fetches `keys` into `values` (`None`: no such key), one pipeline per node, each with
    /// one check per bucket that the bucket's metadata is there; returns the nodes that failed
    /// (down, late, or without the namespace's data) with their keys' indices.
    fn fetch(&mut self, keys: &[Key], values: &mut [Option<Vec<u8>>]) -> Vec<Failed> {
        let ns = self.options.namespace.clone();
        let mut failed: Vec<Failed> = Vec::new();
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        for round in 0..2 {
            let nodes: Vec<Option<String>> = self
                .bucket_slots
                .iter()
                .map(|&s| self.cluster.node_of(s))
                .collect();
            // Per node: its keys and the distinct buckets they are in.
            let mut by_node: BTreeMap<String, (Vec<usize>, BTreeSet<u32>)> = BTreeMap::new();
            for &i in &pending {
                let b = self.bucket(keys[i]);
                match &nodes[b as usize] {
                    Some(node) => {
                        let e = by_node.entry(node.clone()).or_default();
                        e.0.push(i);
                        e.1.insert(b);
                    }
                    None => failed.push(Failed {
                        node: "(none)".into(),
                        cause: format!("no node serves slot {}", self.bucket_slots[b as usize]),
                        keys: vec![i],
                    }),
                }
            }
            let requests = by_node
                .iter()
                .map(|(node, (indices, buckets))| {
                    let mut pipe = redis::pipe();
                    for &i in indices {
                        pipe.get(self.key(keys[i]));
                    }
                    for &b in buckets {
                        pipe.exists(meta_key(&ns, b));
                    }
                    let n = indices.len() + buckets.len();
                    (node.clone(), pipe.get_packed_pipeline(), n)
                })
                .collect();
            let wait = self.cluster.timeouts.read;
            let mut redirected = Vec::new();
            for (node, answer) in self.links.exchange(&self.cluster, requests, wait) {
                let (indices, buckets) = &by_node[&node];
                let values_of_node = match answer {
                    Ok(v) => v,
                    Err(cause) => {
                        failed.push(Failed {
                            node,
                            cause,
                            keys: indices.clone(),
                        });
                        continue;
                    }
                };
                let (gets, exists) = values_of_node.split_at(indices.len());
                let lost: BTreeSet<u32> = buckets
                    .iter()
                    .zip(exists)
                    .filter(|(_, v)| matches!(v, Value::Int(0)))
                    .map(|(&b, _)| b)
                    .collect();
                let mut lost_keys = Vec::new();
                for (&i, v) in indices.iter().zip(gets) {
                    match v {
                        _ if lost.contains(&self.bucket(keys[i])) => lost_keys.push(i),
                        Value::Nil => values[i] = None,
                        Value::BulkString(bytes) => values[i] = Some(bytes.clone()),
                        // MOVED, ASK, TRYAGAIN, CLUSTERDOWN: asked again once the slot map
                        // is learned again.
                        Value::ServerError(_) => redirected.push(i),
                        other => failed.push(Failed {
                            node: node.clone(),
                            cause: format!("answered a GET with {other:?}"),
                            keys: vec![i],
                        }),
                    }
                }
                if !lost_keys.is_empty() {
                    failed.push(Failed {
                        node: node.clone(),
                        cause: format!(
                            "it holds no metadata of namespace '{ns}' for {} of its buckets \
                             (restarted without its data?): load the namespace again",
                            lost.len()
                        ),
                        keys: lost_keys,
                    });
                }
            }
            if redirected.is_empty() {
                break;
            }
            let _ = self.cluster.learn_slots();
            if round == 1 {
                failed.push(Failed {
                    node: "the cluster".into(),
                    cause: "redirected the keys twice (resharding or failing over)".into(),
                    keys: redirected,
                });
                break;
            }
            pending = redirected;
        }
        failed
    }

    /// The error naming each node that failed, the features of its keys, and why.
    fn node_error(&self, keys: &[Key], failed: &[Failed]) -> Error {
        let nodes: Vec<String> = failed
            .iter()
            .map(|f| {
                let features: BTreeSet<&str> = f
                    .keys
                    .iter()
                    .map(|&i| self.features[keys[i].0 as usize].as_str())
                    .collect();
                let names: Vec<String> = features.iter().map(|n| format!("'{n}'")).collect();
                format!(
                    "node {} (rows of feature {}: {})",
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

    /// Runs `script` for `key`'s bucket on the node serving it, following one redirection.
    fn run_script(&mut self, key: Key, invoke: &redis::ScriptInvocation<'_>) -> Result<i64> {
        let name = self.key(key);
        let feature = &self.features[key.0 as usize];
        let slot = self.bucket_slots[self.bucket(key) as usize];
        let mut last = String::new();
        for _ in 0..2 {
            let node = self
                .cluster
                .node_of(slot)
                .unwrap_or_else(|| "(no node serves the slot)".into());
            let wait = self.cluster.timeouts.write;
            match self
                .links
                .with(&self.cluster, &node, wait, |c| invoke.invoke::<i64>(c))
            {
                Ok(Ok(n)) => return Ok(n),
                // The slot moved (a failover or a resharding): once more where it is now.
                Ok(Err(e)) if e.redirect_node().is_some() => {
                    last = format!("node {node}: {e}");
                    let _ = self.cluster.learn_slots();
                }
                Ok(Err(e)) => {
                    last = format!("node {node}: {e}");
                    break;
                }
                Err(cause) => {
                    last = format!("node {node}: {cause}");
                    break;
                }
            }
        }
        Err(Error::Store(format!(
            "writing {name} (a row of feature '{feature}') was refused: {last}; nothing was \
             written or announced"
        )))
    }

    /// Writes many rows (`rows`: `keys.len() × d`), each exactly as [`EmbeddingStore::put`]
    /// writes one (the same script: counted against the cap, announced to every follower), but
    /// pipelined: in chunks, one pipeline per node per chunk, sent to every node before any
    /// answer is read. What a publisher of thousands of rows needs: one round trip per chunk
    /// instead of one per row. Returns, per row, whether it was written (false: the cap
    /// refused it). Fails naming the node and the feature when a node does not answer or lost
    /// its data; rows of other nodes may have been written then.
    pub fn put_many(&mut self, keys: &[Key], rows: &[f32]) -> Result<Vec<bool>> {
        let d = self.meta.d;
        assert_eq!(rows.len(), keys.len() * d, "d floats per key");
        let ns = self.options.namespace.clone();
        let policy = self.meta.policy;
        let script = write_script();
        let mut written = vec![false; keys.len()];
        // EVALSHA in a pipeline cannot load the script: every node gets it first.
        let mut loaded = BTreeSet::new();
        for chunk in (0..keys.len()).collect::<Vec<_>>().chunks(2048) {
            let mut by_node: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            let mut alone = Vec::new();
            for &i in chunk {
                let slot = self.bucket_slots[self.bucket(keys[i]) as usize];
                match self.cluster.node_of(slot) {
                    Some(node) => by_node.entry(node).or_default().push(i),
                    None => alone.push(i),
                }
            }
            for node in by_node.keys() {
                if loaded.insert(node.clone()) {
                    let wait = self.cluster.timeouts.write;
                    match self
                        .links
                        .with(&self.cluster, node, wait, |c| script.load(c))
                    {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(Error::Store(format!("node {node}: {e}"))),
                        Err(cause) => return Err(Error::Store(format!("node {node}: {cause}"))),
                    }
                }
            }
            let requests = by_node
                .iter()
                .map(|(node, indices)| {
                    let mut pipe = redis::pipe();
                    for &i in indices {
                        let key = keys[i];
                        let b = self.bucket(key);
                        let name = self.key(key);
                        let value =
                            row_value(version_now(), &rows[i * d..(i + 1) * d], self.meta.row_type);
                        pipe.cmd("EVALSHA")
                            .arg(script.get_hash())
                            .arg(4)
                            .arg(&name)
                            .arg(format!("{name}:n"))
                            .arg(meta_key(&ns, b))
                            .arg(stream_key(&ns, b))
                            .arg(value)
                            .arg(policy.max_updates.unwrap_or(0))
                            .arg(policy.window_secs)
                            .arg(policy.expire_after_secs.unwrap_or(0))
                            .arg(&self.features[key.0 as usize])
                            .arg(key.1)
                            .arg(STREAM_LENGTH)
                            .arg(doorbell(&ns));
                    }
                    (node.clone(), pipe.get_packed_pipeline(), indices.len())
                })
                .collect();
            let wait = self.cluster.timeouts.write;
            for (node, answer) in self.links.exchange(&self.cluster, requests, wait) {
                let indices = &by_node[&node];
                let answers = answer.map_err(|cause| {
                    let feature = &self.features[keys[indices[0]].0 as usize];
                    Error::Store(format!(
                        "writing rows of feature '{feature}' (and others) to node {node}: \
                         {cause}"
                    ))
                })?;
                for (&i, v) in indices.iter().zip(answers) {
                    match v {
                        Value::Int(-1) => return Err(self.lost_bucket(keys[i], &node)),
                        Value::Int(0) => {}
                        Value::Int(n) => {
                            written[i] = true;
                            if n == 1 {
                                self.rows += 1;
                            }
                        }
                        // MOVED, ASK, TRYAGAIN (a failover or a resharding): one by one below.
                        _ => alone.push(i),
                    }
                }
            }
            for i in alone {
                written[i] = self.put(keys[i], &rows[i * d..(i + 1) * d])?;
            }
        }
        Ok(written)
    }

    /// The error of a write refused because `node` holds no metadata for `key`'s bucket.
    fn lost_bucket(&self, key: Key, node: &str) -> Error {
        Error::Store(format!(
            "writing {} (a row of feature '{}') was refused: node {node} holds no metadata of \
             namespace '{}' for its bucket (restarted without its data?); load the namespace \
             again",
            self.key(key),
            self.features[key.0 as usize],
            self.options.namespace
        ))
    }

    /// Re-reads the metadata after a load (its row type or update policy may have changed).
    fn reread_meta(&mut self) {
        let ns = self.options.namespace.clone();
        if let Ok(metas) = read_metas(&self.cluster, &mut self.links, &ns, 0..self.meta.buckets) {
            let present: Vec<Meta> = metas
                .values()
                .filter_map(|m| m.clone().ok().flatten())
                .collect();
            if let Some(newest) = present.iter().max_by_key(|m| m.generation) {
                if newest.d == self.meta.d && newest.buckets == self.meta.buckets {
                    self.rows = present.iter().map(|m| m.rows).sum::<u64>() as usize;
                    self.meta = *newest;
                }
            }
        }
    }
}

impl EmbeddingStore for RedisStore {
    fn dim(&self) -> usize {
        self.meta.d
    }

    fn get_many(&mut self, keys: &[Key], out: &mut [f32], found: &mut [Fetched]) -> Result<()> {
        let mut values = vec![None; keys.len()];
        let failed = self.fetch(keys, &mut values);
        if !failed.is_empty() && !self.options.degraded {
            return Err(self.node_error(keys, &failed));
        }
        let mut unavailable = vec![false; keys.len()];
        for f in &failed {
            self.cluster.count_skipped(&f.node, f.keys.len() as u64);
            for &k in &f.keys {
                unavailable[k] = true;
            }
        }
        let d = self.meta.d;
        for (i, value) in values.into_iter().enumerate() {
            found[i] = match value {
                _ if unavailable[i] => Fetched::Unavailable,
                Some(bytes) => {
                    let row = &mut out[i * d..(i + 1) * d];
                    let written = decode_row(&bytes, self.meta.row_type, row)
                        .map_err(|why| Error::Store(format!("key {}: {why}", self.key(keys[i]))))?;
                    match self.meta.policy.expire_after_secs {
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
        let ns = self.options.namespace.clone();
        let b = self.bucket(key);
        let value = row_value(version_now(), row, self.meta.row_type);
        let policy = self.meta.policy;
        let mut invocation = write_script().prepare_invoke();
        invocation
            .key(self.key(key))
            .key(format!("{}:n", self.key(key)))
            .key(meta_key(&ns, b))
            .key(stream_key(&ns, b))
            .arg(value)
            .arg(policy.max_updates.unwrap_or(0))
            .arg(policy.window_secs)
            .arg(policy.expire_after_secs.unwrap_or(0))
            .arg(&self.features[key.0 as usize])
            .arg(key.1)
            .arg(STREAM_LENGTH)
            .arg(doorbell(&ns));
        match self.run_script(key, &invocation)? {
            -1 => {
                let node = self
                    .cluster
                    .node_of(self.bucket_slots[b as usize])
                    .unwrap_or_default();
                Err(self.lost_bucket(key, &node))
            }
            0 => Ok(false), // capped
            1 => {
                self.rows += 1;
                Ok(true)
            }
            _ => Ok(true),
        }
    }

    fn nodes(&self) -> Vec<pepnet_core::store::NodeHealth> {
        self.cluster.health()
    }

    fn take_changed(&mut self) -> Vec<Key> {
        std::mem::take(&mut self.changes.lock().unwrap_or_else(|p| p.into_inner()).keys)
    }

    fn take_reloaded(&mut self) -> bool {
        let reload = std::mem::take(
            &mut self
                .changes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .reload,
        );
        if reload {
            self.reread_meta();
            tracing::info!(
                namespace = %self.options.namespace,
                generation = self.meta.generation,
                "the namespace was loaded again: cached rows and unknown ids are dropped"
            );
        }
        reload
    }

    fn keeps_update_policy(&self) -> Option<UpdatePolicy> {
        Some(self.meta.policy)
    }

    fn remove(&mut self, key: Key) -> Result<bool> {
        let ns = self.options.namespace.clone();
        let b = self.bucket(key);
        let mut invocation = remove_script().prepare_invoke();
        invocation
            .key(self.key(key))
            .key(meta_key(&ns, b))
            .key(stream_key(&ns, b))
            .arg(&self.features[key.0 as usize])
            .arg(key.1)
            .arg(STREAM_LENGTH)
            .arg(doorbell(&ns));
        let n = self.run_script(key, &invocation)?;
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
