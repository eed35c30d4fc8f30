//! `pepnet store load`: every hashed row of a model into a namespace, then the namespace's
//! next generation announced on every bucket's stream, so servers using it drop what they
//! cached and read the new rows.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use redis::Value;

use pepnet_core::error::{Error, Result};
use pepnet_core::store::UpdatePolicy;

use crate::cluster::{Answers, Cluster, Links};
use crate::layout::{
    bucket_of, bucket_slot, check_namespace, meta_key, row_key, row_value, stream_key, version_now,
    DEFAULT_BUCKETS, LAYOUT,
};
use crate::store::{read_metas, STREAM_LENGTH};
use crate::{RedisOptions, RowType};

/// What a bulk load wrote.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Loaded {
    pub rows: usize,
    /// The namespace's generation now (1 for its first load).
    pub generation: u64,
    pub seconds: f64,
}

/// A bucket's metadata and the announcement of a generation, atomically. KEYS: the bucket's
/// metadata, its stream. ARGV: the generation, the stream's length, the doorbell channel, then
/// the metadata's field and value pairs.
const META_SCRIPT: &str = r"
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'generation', ARGV[1])
redis.call('PUBLISH', ARGV[3], '1')
return 1
";

/// Writes every hashed row of `weights` into namespace `options.namespace` as `row_type`, in
/// chunks of `chunk` rows (one pipeline per node per chunk, to every node at once), then each
/// bucket's metadata with the update `policy` every process using it will follow and the next
/// generation (rows expire `policy.expire_after_secs` after the load unless written again).
/// Every node must answer. `progress` is told the rows written so far.
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
    let ns = &options.namespace;
    check_namespace(ns)?;
    let cluster = Cluster::new(&options.nodes, options.timeouts, options.probe);
    cluster.learn_slots()?;
    let mut links = Links::default();
    // The generation after the newest any bucket holds; a namespace keeps its buckets.
    let mut generation = 0;
    let mut buckets = DEFAULT_BUCKETS;
    for (b, meta) in read_metas(&cluster, &mut links, ns, 0..DEFAULT_BUCKETS)? {
        match meta {
            Ok(Some(m)) => {
                generation = generation.max(m.generation);
                buckets = m.buckets;
            }
            Ok(None) => {}
            Err(cause) => {
                return Err(Error::Store(format!(
                    "loading namespace '{ns}' needs every node; bucket {b}'s {cause}"
                )))
            }
        }
    }
    generation += 1;
    let d = spec.d();
    let total: usize = spec
        .features
        .iter()
        .filter_map(|f| weights.hashed(&f.name))
        .map(|h| h.ids.len())
        .sum();
    let version = version_now();
    let slots: Vec<u16> = (0..buckets).map(|b| bucket_slot(ns, b)).collect();
    let mut rows_in = vec![0u64; buckets as usize];
    let mut written = 0;
    let chunk = chunk.max(1);
    for feature in &spec.features {
        let Some(h) = weights.hashed(&feature.name) else {
            continue;
        };
        for (c, ids) in h.ids.chunks(chunk).enumerate() {
            let pairs: Vec<(String, Vec<u8>, u16)> = ids
                .iter()
                .enumerate()
                .map(|(i, &id)| {
                    let r = c * chunk + i;
                    let b = bucket_of(&feature.name, id, buckets);
                    rows_in[b as usize] += 1;
                    let value = row_value(version, &h.rows[r * d..(r + 1) * d], row_type);
                    (row_key(ns, b, &feature.name, id), value, slots[b as usize])
                })
                .collect();
            write_routed(&cluster, &mut links, &pairs, policy, &feature.name)?;
            written += ids.len();
            progress(written, total);
        }
    }
    // Each bucket's metadata last: a server that sees the new generation reads the new rows.
    let mut by_node: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for b in 0..buckets {
        by_node
            .entry(node(&cluster, slots[b as usize])?)
            .or_default()
            .push(b);
    }
    let requests = by_node
        .iter()
        .map(|(n, bs)| {
            let mut pipe = redis::pipe();
            for &b in bs {
                pipe.cmd("EVAL")
                    .arg(META_SCRIPT)
                    .arg(2)
                    .arg(meta_key(ns, b))
                    .arg(stream_key(ns, b))
                    .arg(generation)
                    .arg(STREAM_LENGTH)
                    .arg(crate::follow::doorbell(ns))
                    .arg("layout")
                    .arg(LAYOUT)
                    .arg("d")
                    .arg(d)
                    .arg("dtype")
                    .arg(row_type.name())
                    .arg("buckets")
                    .arg(buckets)
                    .arg("rows")
                    .arg(rows_in[b as usize])
                    .arg("generation")
                    .arg(generation)
                    .arg("max_updates")
                    .arg(policy.max_updates.unwrap_or(0))
                    .arg("window_secs")
                    .arg(policy.window_secs)
                    .arg("expire_after_secs")
                    .arg(policy.expire_after_secs.unwrap_or(0));
            }
            (n.clone(), pipe.get_packed_pipeline(), bs.len())
        })
        .collect();
    let answers = links.exchange(&cluster, requests, cluster.timeouts.write);
    check(answers, &format!("writing namespace '{ns}''s metadata"))?;
    Ok(Loaded {
        rows: written,
        generation,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The primary of `slot`, or an error.
fn node(cluster: &Cluster, slot: u16) -> Result<String> {
    cluster
        .node_of(slot)
        .ok_or_else(|| Error::Store(format!("no node of {} serves slot {slot}", cluster.seeds())))
}

/// Sets `pairs` (key, value, slot) with the policy's TTL, one pipeline per node; follows one
/// change of the slot map.
fn write_routed(
    cluster: &Cluster,
    links: &mut Links,
    pairs: &[(String, Vec<u8>, u16)],
    policy: &UpdatePolicy,
    feature: &str,
) -> Result<()> {
    let what = format!("writing rows of feature '{feature}'");
    for round in 0..2 {
        let mut by_node: BTreeMap<String, redis::Pipeline> = BTreeMap::new();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for (key, value, slot) in pairs {
            let n = node(cluster, *slot)?;
            let pipe = by_node.entry(n.clone()).or_insert_with(redis::pipe);
            match policy.expire_after_secs {
                Some(ttl) => pipe.set_ex(key, value, ttl),
                None => pipe.set(key, value),
            };
            *counts.entry(n).or_default() += 1;
        }
        let requests = by_node
            .into_iter()
            .map(|(n, pipe)| {
                let count = counts[&n];
                (n, pipe.get_packed_pipeline(), count)
            })
            .collect();
        let answers = links.exchange(cluster, requests, cluster.timeouts.write);
        let moved = answers.iter().any(|(_, a)| {
            a.as_ref()
                .is_ok_and(|v| v.iter().any(|x| matches!(x, Value::ServerError(_))))
        });
        if moved && round == 0 {
            cluster.learn_slots()?;
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        return check(answers, &what);
    }
    Ok(())
}

/// Fails naming the first node that did not answer, or answered with an error.
fn check(answers: Vec<(String, Answers)>, what: &str) -> Result<()> {
    for (node, answer) in answers {
        let error = match answer {
            Err(cause) => Some(cause),
            Ok(values) => values.into_iter().find_map(|v| match v {
                Value::ServerError(e) => Some(format!("{e:?}")),
                _ => None,
            }),
        };
        if let Some(cause) = error {
            return Err(Error::Store(format!(
                "{what}: node {node}: {cause}; the load did not finish (run it again)"
            )));
        }
    }
    Ok(())
}
