//! Outputs that appear whole or not at all, and never destroy what they should not touch.
//!
//! A regular file is written to a temporary file beside it and renamed into place once complete;
//! dropping the output before that deletes the temporary file and leaves the target untouched.
//! A symlink is followed: the file it points to is replaced that way and the link stays. A FIFO
//! or a device (e.g. `/dev/null`) cannot be replaced by a rename, so it is written as the stream
//! it is. A directory, or a symlink to nothing, is refused.
//!
//! A run stopped by SIGINT or SIGTERM leaves nothing either: every unfinished temporary file is
//! registered, and a program's interrupt handler deletes them ([`take_unfinished`]) before it exits.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Temporary files not yet renamed into place (or deleted), for an interrupt to remove.
static UNFINISHED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn unfinished() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    UNFINISHED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes the list of unfinished outputs' temporary files, for an interrupt handler to delete
/// before the process exits (`pepnet_io::remove_unfinished_on_interrupt` is one).
pub fn take_unfinished() -> Vec<PathBuf> {
    std::mem::take(&mut *unfinished())
}

/// An output being written: see the module comment.
pub enum Output {
    /// A temporary file, renamed over `target` by [`Output::commit`] (`None` once it has been).
    Temp {
        /// The temporary file beside `target`, written to until the commit.
        tmp: Option<tempfile::NamedTempFile>,
        /// The path the output ends up at.
        target: PathBuf,
    },
    /// A FIFO or device, written in place.
    Stream(File),
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Output::Temp { tmp: Some(t), .. } => t.write(buf),
            Output::Temp { tmp: None, .. } => Err(std::io::Error::other("output already complete")),
            Output::Stream(f) => f.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Temp { tmp: Some(t), .. } => t.flush(),
            Output::Temp { tmp: None, .. } => Ok(()),
            Output::Stream(f) => f.flush(),
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        // The temporary file deletes itself (or was renamed); it is no longer unfinished.
        if let Output::Temp { tmp: Some(t), .. } = self {
            let path = t.path().to_path_buf();
            unfinished().retain(|p| *p != path);
        }
    }
}

impl Output {
    /// Opens the output for `path` (errors name `path`).
    pub fn create(path: &Path) -> Result<Self> {
        let (target, meta) = output_target(path)?;
        match meta {
            Some(m) if !m.is_file() => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&target)
                    .map_err(|e| Error::io(path, e))?;
                Ok(Output::Stream(f))
            }
            _ => {
                let tmp = temp_beside(&target)?;
                unfinished().push(tmp.path().to_path_buf());
                Ok(Output::Temp {
                    tmp: Some(tmp),
                    target,
                })
            }
        }
    }

    /// Completes the output: the temporary file takes the target's place (errors name `path`).
    pub fn commit(mut self, path: &Path) -> Result<()> {
        match &mut self {
            Output::Temp { tmp, target } => {
                let t = tmp.take().expect("an output is committed once");
                let temp_path = t.path().to_path_buf();
                let persisted = t.persist(&*target);
                unfinished().retain(|p| *p != temp_path);
                persisted.map_err(|e| Error::io(path, e.error))?;
            }
            Output::Stream(f) => f.flush().map_err(|e| Error::io(path, e))?,
        }
        Ok(())
    }
}

/// A temporary file in `path`'s directory, readable by others once renamed (as a plain
/// `File::create` would make it).
fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
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

/// Checks, before any work, that `path` can be written as an [`Output`] will write it: not a
/// directory nor a dangling symlink, in an existing directory where a file can be created (a
/// temporary file is made there and removed). Streams and devices are not opened (a FIFO's
/// open would wait for a reader).
pub fn check_output_file(path: &Path) -> Result<()> {
    match output_target(path)? {
        (_, Some(m)) if !m.is_file() => Ok(()),
        (target, _) => temp_beside(&target).map(drop),
    }
}

/// Where an output to `path` goes (a symlink's target, the link kept) and what is there now;
/// a dangling symlink or a directory is refused.
fn output_target(path: &Path) -> Result<(PathBuf, Option<std::fs::Metadata>)> {
    let refuse = |why: &str| Error::io(path, std::io::Error::other(why.to_string()));
    let target = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path)
            .map_err(|_| refuse("is a symlink to nothing; give the file itself"))?,
        _ => path.to_path_buf(),
    };
    match std::fs::metadata(&target) {
        Ok(m) if m.is_dir() => Err(refuse("is a directory, not a file to write")),
        Ok(m) => Ok((target, Some(m))),
        Err(_) => Ok((target, None)),
    }
}

/// As [`check_output_file`], for an output directory that is created when missing: it is a
/// directory, or its nearest existing ancestor is one where a file can be created.
pub fn check_output_dir(dir: &Path) -> Result<()> {
    let mut at = dir;
    loop {
        match std::fs::metadata(at) {
            Ok(m) if m.is_dir() => return temp_beside(&at.join("probe")).map(drop),
            Ok(_) => {
                return Err(Error::io(
                    dir,
                    std::io::Error::other(format!(
                        "{} is not a directory, so the output directory cannot be made",
                        at.display()
                    )),
                ))
            }
            Err(e) => match at.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(parent) => at = parent,
                None if at != Path::new(".") => at = Path::new("."),
                None => return Err(Error::io(dir, e)),
            },
        }
    }
}

/// Writes `bytes` to `path` atomically (see [`Output`]): a failed or interrupted write leaves
/// the target as it was.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    write(path, bytes)
}

/// Writes `bytes` to `path` as an [`Output`].
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut out = Output::create(path)?;
    out.write_all(bytes).map_err(|e| Error::io(path, e))?;
    out.commit(path)
}

/// Whether two paths name the same file (the same device and inode, however spelled; through
/// symlinks), or, where one does not exist yet, the same place.
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    match (place(a), place(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// An absolute spelling of a path whose directory exists: the canonical directory and the name.
fn place(path: &Path) -> Option<PathBuf> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Some(std::fs::canonicalize(dir).ok()?.join(path.file_name()?))
}
