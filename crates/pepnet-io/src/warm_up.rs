//! The cache's warm-up list (`--cache-warm-up`): hot ids of hashed features, read from a CSV
//! into the keys an engine's cache is filled with at start-up.

use pepnet_core::error::{Error, Result};
use pepnet_core::spec::ModelSpec;
use pepnet_core::store::Key;

/// Reads a warm-up list: a CSV with a `feature,id` header, a hashed feature's name and a raw id
/// (an unsigned or a negative 64-bit integer, as in input files) per line. Errors name the
/// file, row and column.
pub fn read_warm_up(path: &std::path::Path, spec: &ModelSpec) -> Result<Vec<Key>> {
    let source_name = path.display().to_string();
    let mut reader = csv::Reader::from_path(path).map_err(|e| Error::InputFile {
        source_name: source_name.clone(),
        message: e.to_string(),
    })?;
    let headers = reader.headers().map_err(|e| Error::InputFile {
        source_name: source_name.clone(),
        message: e.to_string(),
    })?;
    if headers.iter().collect::<Vec<_>>() != ["feature", "id"] {
        return Err(Error::InputFile {
            source_name,
            message: format!(
                "header is '{}', expected 'feature,id'",
                headers.iter().collect::<Vec<_>>().join(",")
            ),
        });
    }
    let mut keys = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let bad = |column: &str, message: String| Error::Input {
            source_name: source_name.clone(),
            row: i + 1,
            column: column.into(),
            message,
        };
        let record = record.map_err(|e| bad("feature", e.to_string()))?;
        let name = &record[0];
        let f = spec
            .features
            .iter()
            .position(|f| f.name == name && f.hashed)
            .ok_or_else(|| {
                bad(
                    "feature",
                    format!("'{name}' is not a hashed feature of the model"),
                )
            })?;
        let id = record[1]
            .trim()
            .parse::<u64>()
            .or_else(|_| record[1].trim().parse::<i64>().map(|v| v as u64))
            .map_err(|_| bad("id", format!("'{}' is not a 64-bit integer id", &record[1])))?;
        keys.push((f as u32, id));
    }
    Ok(keys)
}
