//! Host memory, estimated before a large allocation: a model too large for this machine is an
//! error naming its size, never an abort in the allocator.

use crate::error::{Error, Result};

/// Bytes the kernel says can be allocated without swapping (`MemAvailable`), where known.
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Refuses `bytes` for `what` when they exceed the memory available now. Where the OS does
/// not say (not Linux), the allocation goes ahead.
pub fn check_host(bytes: u64, what: &str) -> Result<()> {
    match available_bytes() {
        Some(free) if bytes > free => Err(Error::Memory(format!(
            "{what} needs {bytes} bytes ({:.1} GiB) of host memory; {free} bytes ({:.1} GiB) are \
             available",
            bytes as f64 / (1u64 << 30) as f64,
            free as f64 / (1u64 << 30) as f64
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_impossible_size_is_refused_and_a_small_one_is_not() {
        if available_bytes().is_none() {
            return;
        }
        let err = check_host(u64::MAX, "the test").unwrap_err().to_string();
        assert!(
            err.contains("the test needs 18446744073709551615 bytes"),
            "{err}"
        );
        check_host(1 << 10, "a kibibyte").unwrap();
    }
}
