//! Files that appear whole or not at all: written to a temporary file beside their final path
//! and renamed into place once complete. Dropping one before that deletes it.

use std::path::Path;

use crate::error::{Error, Result};

/// A temporary file in `path`'s directory, readable by others once renamed (as a plain
/// `File::create` would make it).
pub(crate) fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".pepnet-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    builder.tempfile_in(dir).map_err(|e| {
        let why = std::io::Error::new(
            e.kind(),
            format!("cannot create a file in this directory ({})", e.kind()),
        );
        Error::io(dir, why)
    })
}

/// Writes `bytes` to `path` atomically.
pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut tmp = temp_beside(path)?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Flushes a CSV writer over a temporary file from [`temp_beside`] and moves the file to `path`.
pub(crate) fn persist_csv(writer: csv::Writer<tempfile::NamedTempFile>, path: &Path) -> Result<()> {
    let tmp = writer
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}
