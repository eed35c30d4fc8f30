//! Many input files in one run, or one share of them per task of a job array: `pepnet score
//! --input DIR_OR_GLOB --output DIR [--shard I/N]`.

use std::path::{Path, PathBuf};

use pepnet::{Error, Result};

/// Task `index` of `count` (`--shard I/N`, 0 ≤ I < N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

/// Parses `I/N`.
pub fn parse_shard(s: &str) -> std::result::Result<Shard, String> {
    let bad = || format!("'{s}': expected I/N with 0 <= I < N (task I of N), e.g. 0/4");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (index, count) = (
        i.trim().parse::<usize>().map_err(|_| bad())?,
        n.trim().parse::<usize>().map_err(|_| bad())?,
    );
    if count == 0 || index >= count {
        return Err(bad());
    }
    Ok(Shard { index, count })
}

/// Whether `--input` names many files: a directory, or a pattern with `*`, `?` or `[`.
pub fn names_many(input: &Path) -> bool {
    input.is_dir() || is_pattern(&input.to_string_lossy())
}

fn is_pattern(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The input files `input` names, sorted by name: a directory's CSV and Parquet files (`.csv`,
/// `.parquet`, `.pq`; not its subdirectories), or the files of a directory whose names match a
/// pattern (`*` any run of characters, `?` one, `[abc]` one of a set; in the file name only).
pub fn input_files(input: &Path) -> Result<Vec<PathBuf>> {
    let (dir, pattern) = if input.is_dir() {
        (input.to_path_buf(), None)
    } else {
        let dir = input
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if is_pattern(&dir.to_string_lossy()) {
            return Err(Error::io(
                input,
                std::io::Error::other("a pattern may name files, not directories"),
            ));
        }
        let name = input.file_name().map(|n| n.to_string_lossy().into_owned());
        (dir.to_path_buf(), name)
    };
    let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let wanted = match &pattern {
            Some(p) => matches(p.as_bytes(), name.as_bytes()),
            None => {
                let ext = path
                    .extension()
                    .map(|e| e.to_string_lossy().to_ascii_lowercase());
                matches!(ext.as_deref(), Some("csv" | "parquet" | "pq"))
            }
        };
        if wanted && !name.starts_with(".pepnet-") {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::io(
            input,
            std::io::Error::other("names no input file (CSV, or Parquet: .parquet, .pq)"),
        ));
    }
    Ok(files)
}

/// The files of `shard`: every `count`-th of the sorted list from `index`, so the tasks of a
/// job array, each listing the same files, cover each exactly once.
pub fn share(files: Vec<PathBuf>, shard: Option<Shard>) -> Vec<PathBuf> {
    match shard {
        None => files,
        Some(s) => files
            .into_iter()
            .enumerate()
            .filter(|(k, _)| k % s.count == s.index)
            .map(|(_, f)| f)
            .collect(),
    }
}

/// Whether `name` matches `pattern` (`*`, `?`, `[set]`).
fn matches(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.first() {
        None => name.is_empty(),
        Some(b'*') => (0..=name.len()).any(|k| matches(&pattern[1..], &name[k..])),
        Some(b'?') => !name.is_empty() && matches(&pattern[1..], &name[1..]),
        Some(b'[') => match pattern.iter().position(|&b| b == b']') {
            Some(end) if !name.is_empty() => {
                pattern[1..end].contains(&name[0]) && matches(&pattern[end + 1..], &name[1..])
            }
            _ => false,
        },
        Some(&c) => name.first() == Some(&c) && matches(&pattern[1..], &name[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_file_once_and_patterns_match() {
        assert_eq!(parse_shard("2/3"), Ok(Shard { index: 2, count: 3 }));
        for bad in ["3/3", "1", "a/2", "0/0", "-1/2"] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
        let files: Vec<PathBuf> = (0..8).map(|i| PathBuf::from(format!("{i}"))).collect();
        let mut seen: Vec<PathBuf> = (0..3)
            .flat_map(|index| share(files.clone(), Some(Shard { index, count: 3 })))
            .collect();
        seen.sort();
        assert_eq!(seen, files);
        assert!(matches(b"part-*.parquet", b"part-0001.parquet"));
        assert!(!matches(b"part-*.parquet", b"part-0001.csv"));
        assert!(matches(b"p?rt[0-9].csv", b"part0.csv") || matches(b"p?rt[01].csv", b"part0.csv"));
        assert!(!matches(b"a?", b"a"));
    }
}
