//! Where an online run's impressions come from: a Redis stream read through a consumer group
//! (acknowledged once a checkpoint holds what they taught), or a directory where labelled CSV
//! or Parquet files arrive (taken in name order; the checkpoint holds the file and row reached).
//! Either way each sample keeps its position, so a checkpoint records exactly where its steps
//! ended and a resumed run starts right after.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pepnet::io::{Format, InputReader};
use pepnet::store::redis::impressions::Entry;
use pepnet::store::redis::{EntryId, ImpressionStream};
use pepnet::train::LabelledData;
use pepnet::{Error, ModelSpec, Result};

/// Where a sample came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pos {
    /// A stream entry.
    Entry(EntryId),
    /// A file's data row (1-based).
    Row { file: String, row: usize },
}

/// The impressions an online run reads.
pub enum Source {
    Redis(Stream),
    Directory(Box<Directory>),
}

pub struct Stream {
    pub stream: ImpressionStream,
    /// The last entry of the checkpoint resumed from: entries up to it were trained on.
    pub used: Option<EntryId>,
    /// The columns an entry holds: the features, then the label columns.
    pub header: Vec<String>,
}

/// Labelled files arriving in a directory, taken in name order (hidden files and other
/// extensions are not data: write a file under a hidden name, then rename it in).
pub struct Directory {
    pub dir: PathBuf,
    /// The last file finished (every file up to it in name order is done).
    pub done: Option<String>,
    /// The file being read, its reader, and the rows up to which it was trained on before a
    /// resume (skipped).
    pub current: Option<(String, InputReader, usize)>,
    /// Where a resumed run starts: this file, after this row.
    pub resume: Option<(String, usize)>,
    pub batch_size: usize,
}

impl Source {
    /// The source in messages.
    pub fn describe(&self) -> String {
        match self {
            Source::Redis(s) => s.stream.describe(),
            Source::Directory(d) => format!("directory '{}'", d.dir.display()),
        }
    }

    /// The next samples (up to about `max`), waiting up to `wait` for some to arrive; `None`
    /// when none did.
    pub fn read(
        &mut self,
        max: usize,
        wait: Duration,
        spec: &ModelSpec,
        columns: &[String],
    ) -> Result<Option<(LabelledData, Vec<Pos>)>> {
        match self {
            Source::Redis(s) => s.read(max, wait, spec, columns),
            Source::Directory(d) => d.read(wait, spec, columns),
        }
    }

    /// Everything at `positions` is in a checkpoint: acknowledge it (stream entries; a
    /// directory's position lives in the checkpoint alone).
    pub fn ack(&mut self, positions: &[Pos]) -> Result<()> {
        let Source::Redis(s) = self else {
            return Ok(());
        };
        let ids: Vec<EntryId> = positions
            .iter()
            .filter_map(|p| match p {
                Pos::Entry(id) => Some(*id),
                Pos::Row { .. } => None,
            })
            .collect();
        s.stream.ack(&ids)
    }
}

impl Stream {
    fn read(
        &mut self,
        max: usize,
        wait: Duration,
        spec: &ModelSpec,
        columns: &[String],
    ) -> Result<Option<(LabelledData, Vec<Pos>)>> {
        let mut fresh = Vec::new();
        for entry in self.stream.read(max, wait)? {
            if self.used.is_some_and(|u| entry.id <= u) {
                // Trained on and checkpointed before a restart: only its ack was lost.
                self.stream.ack(&[entry.id])?;
                continue;
            }
            fresh.push(entry);
        }
        if fresh.is_empty() {
            return Ok(None);
        }
        let data = decode(&fresh, spec, columns, &self.header, self.stream.describe())?;
        let positions = fresh.iter().map(|e| Pos::Entry(e.id)).collect();
        Ok(Some((data, positions)))
    }
}

impl Directory {
    fn read(
        &mut self,
        wait: Duration,
        spec: &ModelSpec,
        columns: &[String],
    ) -> Result<Option<(LabelledData, Vec<Pos>)>> {
        let deadline = Instant::now() + wait;
        loop {
            if self.current.is_none() {
                match self.next_file()? {
                    Some(name) => {
                        let path = self.dir.join(&name);
                        let reader =
                            InputReader::open(&path, spec, columns, self.batch_size, None)?;
                        let skip = match &self.resume {
                            Some((file, row)) if *file == name => *row,
                            _ => 0,
                        };
                        self.current = Some((name, reader, skip));
                    }
                    None if Instant::now() >= deadline => return Ok(None),
                    None => {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                }
            }
            let (name, reader, skip) = self.current.as_mut().expect("opened above");
            let Some(part) = reader.next() else {
                self.done = self.current.take().map(|(name, _, _)| name);
                continue;
            };
            let part = part?;
            let source = self.dir.join(&*name).display().to_string();
            let data = LabelledData::from_input(&part, columns, &source)?;
            let keep: Vec<usize> = (0..part.rows.len())
                .filter(|&i| part.rows[i] > *skip)
                .collect();
            if keep.is_empty() {
                continue;
            }
            let positions = keep
                .iter()
                .map(|&i| Pos::Row {
                    file: name.clone(),
                    row: part.rows[i],
                })
                .collect();
            let (_, data) = data.split_at(keep[0]);
            return Ok(Some((data, positions)));
        }
    }

    /// The first data file after the last one finished (or the one a resume starts in), by
    /// name.
    fn next_file(&self) -> Result<Option<String>> {
        let after = self.done.as_deref();
        let resume = self.resume.as_ref().map(|(f, _)| f.as_str());
        let mut names = data_files(&self.dir)?;
        names.sort();
        Ok(names.into_iter().find(|n| match (after, resume) {
            (Some(done), _) => n.as_str() > done,
            (None, Some(start)) => n.as_str() >= start,
            (None, None) => true,
        }))
    }
}

/// The data files of `dir`: CSV or Parquet by extension, not hidden.
fn data_files(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let data = match Format::of(&path) {
            Format::Parquet => true,
            Format::Csv => name.ends_with(".csv"),
        };
        if data && !name.starts_with('.') && path.is_file() {
            out.push(name.to_string());
        }
    }
    Ok(out)
}

/// Entries as labelled samples; errors name the stream, the entry and the field.
fn decode(
    entries: &[Entry],
    spec: &ModelSpec,
    columns: &[String],
    header: &[String],
    stream: String,
) -> Result<LabelledData> {
    let mut rows = Vec::with_capacity(entries.len());
    for e in entries {
        let row = header
            .iter()
            .map(|name| {
                e.fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| {
                        Error::Batch(format!(
                            "{stream}, entry {}: no field '{name}' (each entry holds one \
                             impression: a field per feature and label column)",
                            e.id
                        ))
                    })
            })
            .collect::<Result<Vec<String>>>()?;
        rows.push(row);
    }
    let first = entries.first().map_or("-".into(), |e| e.id.to_string());
    let last = entries.last().map_or("-".into(), |e| e.id.to_string());
    // A row number k below is the k-th of entries first..last.
    let name = format!("{stream}, entries {first}..{last}");
    LabelledData::from_text_rows(&name, spec, columns, header, &rows)
}
