//! A Redis stream of labelled impressions, read through a consumer group: what an online
//! trainer consumes. Each entry is one impression, its fields the columns (feature names and
//! label columns) with values written as CSV cells are (`7`, `0.5`, `3|9|12` for multi-hot).
//!
//! Delivery is at least once and acknowledgement is the reader's to give: an entry read stays
//! in the group's pending list until [`ImpressionStream::ack`]. A reader that restarts reads
//! its own pending entries first (in stream order), then new ones, so nothing delivered before
//! a crash is lost; a reader that records the last entry it used in its checkpoint skips (and
//! acknowledges) the pending entries up to it, so nothing is used twice.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use pepnet_core::error::{Error, Result};

use crate::cluster::{Cluster, Links, Timeouts};
use crate::layout::key_slot;

/// A stream entry: its id (`ms-seq`) and its fields, in the order written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: EntryId,
    pub fields: Vec<(String, String)>,
}

/// A stream entry's id, `ms-seq`, ordered as the stream orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl std::str::FromStr for EntryId {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        match (ms.parse(), seq.parse()) {
            (Ok(ms), Ok(seq)) => Ok(Self { ms, seq }),
            _ => Err(format!("'{s}' is not a stream entry id (ms-seq)")),
        }
    }
}

/// One consumer of a consumer group on a stream of a Redis Cluster (or a single node).
pub struct ImpressionStream {
    cluster: Arc<Cluster>,
    links: Links,
    key: String,
    group: String,
    consumer: String,
    slot: u16,
    /// Reading this consumer's pending entries after this id; `None` once they are all read
    /// (then new entries, `>`).
    pending_after: Option<EntryId>,
}

impl ImpressionStream {
    /// Joins consumer group `group` of stream `key` on the cluster of `nodes`
    /// (`redis://HOST:PORT` each) as `consumer`, creating the group (from the stream's start)
    /// and the stream when they do not exist.
    pub fn open(
        nodes: &[String],
        key: &str,
        group: &str,
        consumer: &str,
        timeouts: Timeouts,
    ) -> Result<Self> {
        let mut stream = Self::producer(nodes, key, timeouts)?;
        stream.group = group.to_string();
        stream.consumer = consumer.to_string();
        let mut create = redis::cmd("XGROUP");
        create
            .arg("CREATE")
            .arg(key)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM");
        let created: Result<Value> = stream.run(timeouts.read, |c| create.query(c));
        match created {
            Ok(_) => {}
            Err(e) if e.to_string().contains("BUSYGROUP") => {}
            Err(e) => return Err(e),
        }
        Ok(stream)
    }

    /// A writer of stream `key` ([`ImpressionStream::add`] only): no group is joined or made.
    pub fn producer(nodes: &[String], key: &str, timeouts: Timeouts) -> Result<Self> {
        let cluster = Cluster::new(nodes, timeouts, Duration::from_secs(1));
        cluster.learn_slots()?;
        // A node marked down is pinged until it answers (and the slot map relearned meanwhile,
        // for a failover), so the reader recovers without a restart.
        cluster.start_prober()?;
        Ok(Self {
            cluster,
            links: Links::default(),
            key: key.to_string(),
            group: String::new(),
            consumer: String::new(),
            slot: key_slot(key.as_bytes()),
            pending_after: Some(EntryId::default()),
        })
    }

    /// The stream's name in messages: `stream 'KEY' (group 'G')`.
    pub fn describe(&self) -> String {
        format!("stream '{}' (group '{}')", self.key, self.group)
    }

    /// Up to `count` entries: this consumer's pending ones first (delivered before, not
    /// acknowledged), then new ones, waiting up to `block` for them. Empty when none came.
    pub fn read(&mut self, count: usize, block: Duration) -> Result<Vec<Entry>> {
        if let Some(after) = self.pending_after {
            let entries = self.read_group(count, &after.to_string(), None)?;
            match entries.last() {
                Some(last) => {
                    self.pending_after = Some(last.id);
                    return Ok(entries);
                }
                None => self.pending_after = None,
            }
        }
        self.read_group(count, ">", Some(block))
    }

    /// Acknowledges `ids`: the group will not deliver them again.
    pub fn ack(&mut self, ids: &[EntryId]) -> Result<()> {
        let wait = self.cluster.timeouts.write;
        for chunk in ids.chunks(1024) {
            let mut cmd = redis::cmd("XACK");
            cmd.arg(&self.key).arg(&self.group);
            for id in chunk {
                cmd.arg(id.to_string());
            }
            self.run(wait, |c| cmd.query::<i64>(c))?;
        }
        Ok(())
    }

    /// Appends an entry (for producers and tests); returns its id.
    pub fn add(&mut self, fields: &[(String, String)]) -> Result<EntryId> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.key).arg("*");
        for (name, value) in fields {
            cmd.arg(name).arg(value);
        }
        let id: String = self.run(self.cluster.timeouts.write, |c| cmd.query(c))?;
        id.parse().map_err(Error::Store)
    }

    /// The group's entries delivered and not acknowledged, all consumers together.
    pub fn pending(&mut self) -> Result<u64> {
        let wait = self.cluster.timeouts.read;
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(&self.key).arg(&self.group);
        let answer: Value = self.run(wait, |c| cmd.query(c))?;
        match answer {
            Value::Array(v) => match v.first() {
                Some(Value::Int(n)) => Ok(*n as u64),
                _ => Ok(0),
            },
            _ => Ok(0),
        }
    }

    fn read_group(
        &mut self,
        count: usize,
        from: &str,
        block: Option<Duration>,
    ) -> Result<Vec<Entry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count.max(1));
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(&self.key).arg(from);
        let wait = self.cluster.timeouts.read + block.unwrap_or_default();
        let answer: Value = self.run(wait, |c| cmd.query(c))?;
        parse_read(&answer)
            .map_err(|why| Error::Store(format!("{}: XREADGROUP answered {why}", self.describe())))
    }

    /// Runs `f` on the node serving the stream's slot, following one redirection; errors name
    /// the stream and the node.
    fn run<T>(
        &mut self,
        wait: Duration,
        mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let mut last = String::new();
        for _ in 0..2 {
            let node = self
                .cluster
                .node_of(self.slot)
                .or_else(|| self.cluster.up_node())
                .unwrap_or_else(|| "(no node serves the slot)".into());
            match self.links.with(&self.cluster, &node, wait, &mut f) {
                Ok(Ok(v)) => return Ok(v),
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
        Err(Error::Store(format!("{}: {last}", self.describe())))
    }
}

impl Drop for ImpressionStream {
    fn drop(&mut self) {
        self.cluster.stop();
    }
}

/// XREADGROUP's answer (RESP2 or RESP3) as entries; nil (a timeout) is none.
fn parse_read(v: &Value) -> std::result::Result<Vec<Entry>, String> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    };
    let streams: Vec<&Value> = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(s) => s.iter().collect(),
        Value::Map(m) => m.iter().map(|(_, v)| v).collect(),
        other => return Err(format!("{other:?}")),
    };
    let mut out = Vec::new();
    for stream in streams {
        // RESP2: [key, entries]; RESP3 maps: entries.
        let entries = match stream {
            Value::Array(pair) if pair.len() == 2 && text(&pair[0]).is_some() => &pair[1],
            other => other,
        };
        let Value::Array(entries) = entries else {
            return Err(format!("{entries:?}"));
        };
        for entry in entries {
            let Value::Array(parts) = entry else {
                return Err(format!("{entry:?}"));
            };
            let id = parts
                .first()
                .and_then(text)
                .ok_or_else(|| format!("{entry:?}"))?;
            let id: EntryId = id.parse()?;
            let fields = match parts.get(1) {
                Some(Value::Array(kv)) => kv
                    .chunks(2)
                    .map(|p| match (text(&p[0]), p.get(1).and_then(text)) {
                        (Some(k), Some(v)) => Ok((k, v)),
                        _ => Err(format!("{entry:?}")),
                    })
                    .collect::<std::result::Result<Vec<_>, String>>()?,
                Some(Value::Map(kv)) => kv
                    .iter()
                    .map(|(k, v)| match (text(k), text(v)) {
                        (Some(k), Some(v)) => Ok((k, v)),
                        _ => Err(format!("{entry:?}")),
                    })
                    .collect::<std::result::Result<Vec<_>, String>>()?,
                // An entry deleted while pending comes back without fields.
                Some(Value::Nil) | None => Vec::new(),
                Some(other) => return Err(format!("{other:?}")),
            };
            out.push(Entry { id, fields });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_parse_and_order_as_the_stream_does() {
        let a: EntryId = "1700000000000-5".parse().unwrap();
        let b: EntryId = "1700000000000-12".parse().unwrap();
        assert!(a < b, "by sequence, not as text");
        assert_eq!(a.to_string(), "1700000000000-5");
        assert!("x-1".parse::<EntryId>().is_err());
    }

    #[test]
    fn read_answers_parse_and_nil_is_none() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let answer = Value::Array(vec![Value::Array(vec![
            bulk("imp"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("5-0"),
                    Value::Array(vec![bulk("user_id"), bulk("7"), bulk("click"), bulk("1")]),
                ]),
                Value::Array(vec![bulk("6-1"), Value::Nil]),
            ]),
        ])]);
        let entries = parse_read(&answer).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, EntryId { ms: 5, seq: 0 });
        assert_eq!(
            entries[0].fields,
            vec![("user_id".into(), "7".into()), ("click".into(), "1".into())]
        );
        assert!(entries[1].fields.is_empty());
        assert!(parse_read(&Value::Nil).unwrap().is_empty());
        assert!(parse_read(&Value::Int(3)).is_err());
    }
}
