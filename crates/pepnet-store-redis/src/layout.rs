//! Where a namespace's keys live. Rows are grouped into buckets; each bucket's keys share one
//! hash tag, so one bucket is one hash slot, and a row, its write counter, its bucket's metadata
//! and its bucket's update stream can be written by one script, atomically. Buckets spread
//! over the cluster's slots as rows would (a bucket is a hash of the feature's name and the id).

use half::f16;

use pepnet_core::error::{Error, Result};

use crate::RowType;

/// The key layout this crate reads and writes (metadata `layout`).
pub const LAYOUT: u32 = 2;

/// Fewest buckets a namespace may have: opening reads the metadata of the first of them that
/// lives on a node that answers, so they must spread over several nodes.
pub const MIN_BUCKETS: u32 = 16;

/// Buckets when `store load` is not told: enough slots to spread rows over a few dozen
/// primaries, few enough that a follower polls every stream in one round trip per node.
pub const DEFAULT_BUCKETS: u32 = 64;

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

/// A namespace's name, checked: it sits inside the hash tag, so braces would move keys.
pub fn check_namespace(namespace: &str) -> Result<()> {
    if namespace.is_empty() || namespace.contains(['{', '}']) {
        return Err(Error::Store(format!(
            "namespace '{namespace}': expected a non-empty name without braces"
        )));
    }
    Ok(())
}

/// The bucket of feature `feature`'s id `id`, of `buckets`: FNV-1a over the name, then the id
/// mixed in (SplitMix64's finaliser), so the same key lands in the same bucket in every
/// process and every version.
pub fn bucket_of(feature: &str, id: u64, buckets: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in feature.as_bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = h ^ id.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % buckets as u64) as u32
}

/// A row's key: `pepnet:{<ns>:<bucket>}:<feature>:<id>`.
pub fn row_key(namespace: &str, bucket: u32, feature: &str, id: u64) -> String {
    format!("pepnet:{{{namespace}:{bucket}}}:{feature}:{id}")
}

/// A bucket's metadata: a hash of `layout`, `d`, `dtype`, `buckets`, the update policy
/// (`max_updates`, `window_secs`, `expire_after_secs`), `generation` (bumped by every load) and
/// `rows` (the bucket's). Every bucket holds the namespace's metadata, so any node can say it;
/// a bucket without it lives on a node that lost its data (restarted empty).
pub fn meta_key(namespace: &str, bucket: u32) -> String {
    format!("pepnet:{{{namespace}:{bucket}}}:meta")
}

/// A bucket's update stream: one entry (`f`, `id`) per row written, and one (`generation`) per
/// load.
pub fn stream_key(namespace: &str, bucket: u32) -> String {
    format!("pepnet:{{{namespace}:{bucket}}}:updates")
}

/// The hash slot of every key of `bucket`.
pub fn bucket_slot(namespace: &str, bucket: u32) -> u16 {
    key_slot(meta_key(namespace, bucket).as_bytes())
}

/// A row's value: the version (write time, µs, u64 little-endian), then the row as `row_type`.
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

/// Copies a stored value's row into `out` (`out.len()` floats); returns its version, or why
/// the value is not such a row.
pub fn decode_row(
    bytes: &[u8],
    row_type: RowType,
    out: &mut [f32],
) -> std::result::Result<u64, String> {
    let want = 8 + out.len() * row_type.bytes();
    if bytes.len() != want {
        return Err(format!(
            "{} bytes, expected {want} (an 8-byte version and {} {} values)",
            bytes.len(),
            out.len(),
            row_type.name()
        ));
    }
    let data = &bytes[8..];
    match row_type {
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

/// Microseconds since the Unix epoch: a row's version.
pub fn version_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
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
    fn a_buckets_keys_share_its_slot_and_buckets_spread() {
        for b in [0, 1, 63] {
            let slot = bucket_slot("ns", b);
            for key in [
                row_key("ns", b, "user_id", 7),
                row_key("ns", b, "a:b}c{", u64::MAX),
                stream_key("ns", b),
            ] {
                assert_eq!(key_slot(key.as_bytes()), slot, "{key}");
            }
        }
        let mut counts = [0u32; 64];
        for id in 0..64_000u64 {
            counts[bucket_of("item_id", id, 64) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
        assert_ne!(bucket_of("a", 1, 64), bucket_of("b", 1, 64));
        assert!(check_namespace("m{1}").is_err() && check_namespace("").is_err());
    }

    #[test]
    fn rows_encode_with_their_version_and_decode_back() {
        let row = [0.1f32, -2.5, 1e-3, 7.0];
        for t in [RowType::F32, RowType::F16] {
            let v = row_value(42, &row, t);
            assert_eq!(v.len(), 8 + 4 * t.bytes());
            let mut out = [0.0f32; 4];
            assert_eq!(decode_row(&v, t, &mut out), Ok(42));
            for (a, b) in out.iter().zip(row) {
                assert!((a - b).abs() <= b.abs() * 1e-3, "{a} {b}");
            }
            assert!(decode_row(&v[1..], t, &mut out)
                .unwrap_err()
                .contains("expected"));
        }
    }
}
