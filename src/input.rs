//! Scoring files: reading CSV input in batches, and writing scores so that a failed run leaves
//! nothing behind.
//!
//! Input: a header row, then one row per sample, with a column per feature named as in the
//! spec. Sparse cells hold an integer id, multi-hot cells ids separated by `|` (an empty cell is
//! an empty list), dense cells a number. Other columns are ignored unless carried.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::atomic_file;
use crate::batch::{Batch, Column};
use crate::error::{Error, Result};
use crate::spec::{FeatureKind, ModelSpec};

/// Reads a CSV file batch by batch; each batch comes with the carried columns' raw cells.
pub struct CsvBatches<'a> {
    spec: &'a ModelSpec,
    name: String,
    reader: csv::Reader<File>,
    /// Column index of each feature, in spec order.
    feature_cols: Vec<usize>,
    carry_cols: Vec<usize>,
    batch_size: usize,
    /// Data rows read so far.
    rows_read: usize,
    record: csv::StringRecord,
    done: bool,
}

/// One batch of input rows.
pub struct InputBatch {
    pub batch: Batch,
    /// Per row, the carried cells in `carry` order.
    pub carried: Vec<Vec<String>>,
    /// 1-based data row of the batch's first sample.
    pub first_row: usize,
}

impl<'a> CsvBatches<'a> {
    /// Opens `path` and checks its header has every feature and carried column.
    pub fn open(
        path: &Path,
        spec: &'a ModelSpec,
        carry: &[String],
        batch_size: usize,
    ) -> Result<Self> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(file);
        let header = reader
            .headers()
            .map_err(|e| Error::InputFile {
                source_name: name.clone(),
                message: format!("cannot read the header row: {e}"),
            })?
            .clone();
        let find = |col: &str, what: &str| {
            header
                .iter()
                .position(|h| h.trim() == col)
                .ok_or_else(|| Error::InputFile {
                    source_name: name.clone(),
                    message: format!(
                        "missing column '{col}' ({what}); the header has {:?}",
                        header.iter().collect::<Vec<_>>()
                    ),
                })
        };
        let feature_cols = spec
            .features
            .iter()
            .map(|f| find(&f.name, "a feature of the model"))
            .collect::<Result<_>>()?;
        let carry_cols = carry
            .iter()
            .map(|c| find(c, "asked to be carried"))
            .collect::<Result<_>>()?;
        Ok(Self {
            spec,
            name,
            reader,
            feature_cols,
            carry_cols,
            batch_size: batch_size.max(1),
            rows_read: 0,
            record: csv::StringRecord::new(),
            done: false,
        })
    }

    fn next_batch(&mut self) -> Result<Option<InputBatch>> {
        let first_row = self.rows_read + 1;
        let mut columns: Vec<Column> = self
            .spec
            .features
            .iter()
            .map(|f| match f.kind {
                FeatureKind::Sparse => Column::Sparse(Vec::new()),
                FeatureKind::MultiHot => Column::MultiHot {
                    offsets: vec![0],
                    ids: Vec::new(),
                },
                FeatureKind::Dense => Column::Dense(Vec::new()),
            })
            .collect();
        let mut carried = Vec::new();
        while carried.len() < self.batch_size {
            let more = self
                .reader
                .read_record(&mut self.record)
                .map_err(|e| Error::InputFile {
                    source_name: self.name.clone(),
                    message: format!("row {}: {e}", self.rows_read + 1),
                })?;
            if !more {
                self.done = true;
                break;
            }
            self.rows_read += 1;
            let row = self.rows_read;
            for ((f, &c), column) in self
                .spec
                .features
                .iter()
                .zip(&self.feature_cols)
                .zip(&mut columns)
            {
                let cell = self.record.get(c).unwrap_or("").trim();
                let bad = |message: String| Error::Input {
                    source_name: self.name.clone(),
                    row,
                    column: f.name.clone(),
                    message,
                };
                match column {
                    Column::Sparse(ids) => ids.push(parse_id(cell).map_err(bad)?),
                    Column::MultiHot { offsets, ids } => {
                        if !cell.is_empty() {
                            let max_len = f.max_len.unwrap_or(0);
                            for (n, part) in cell.split('|').enumerate() {
                                if n == max_len {
                                    return Err(bad(format!(
                                        "list '{cell}' has more than max_len {max_len} ids"
                                    )));
                                }
                                ids.push(parse_id(part.trim()).map_err(bad)?);
                            }
                        }
                        offsets.push(ids.len());
                    }
                    Column::Dense(values) => {
                        let x: f32 = cell
                            .parse()
                            .map_err(|_| bad(format!("expected a number, found '{cell}'")))?;
                        if !x.is_finite() {
                            return Err(bad(format!("expected a finite number, found '{cell}'")));
                        }
                        values.push(x);
                    }
                }
            }
            carried.push(
                self.carry_cols
                    .iter()
                    .map(|&c| self.record.get(c).unwrap_or("").to_string())
                    .collect(),
            );
        }
        if carried.is_empty() {
            return Ok(None);
        }
        let batch = Batch::new(columns);
        batch.validate(self.spec, &self.name, first_row)?;
        Ok(Some(InputBatch {
            batch,
            carried,
            first_row,
        }))
    }
}

fn parse_id(cell: &str) -> std::result::Result<u64, String> {
    cell.parse::<u64>()
        .map_err(|_| format!("expected a non-negative integer id, found '{cell}'"))
}

impl Iterator for CsvBatches<'_> {
    type Item = Result<InputBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let result = self.next_batch();
        if result.is_err() {
            self.done = true;
        }
        result.transpose()
    }
}

/// Writes the scores CSV to a temporary file beside `path`, renamed into place only by
/// [`ScoreWriter::finish`]; dropping the writer (a failed run) deletes it.
pub struct ScoreWriter {
    path: PathBuf,
    writer: csv::Writer<tempfile::NamedTempFile>,
    tasks: usize,
}

impl ScoreWriter {
    pub fn create(path: &Path, carry: &[String], tasks: &[String]) -> Result<Self> {
        let tmp = atomic_file::temp_beside(path)?;
        let mut writer = csv::Writer::from_writer(tmp);
        writer
            .write_record(carry.iter().chain(tasks))
            .map_err(|e| Error::io(path, e.into()))?;
        Ok(Self {
            path: path.to_path_buf(),
            writer,
            tasks: tasks.len(),
        })
    }

    /// Appends rows: `carried[i]` then the T scores of sample i.
    pub fn write(&mut self, carried: &[Vec<String>], scores: &[f32]) -> Result<()> {
        let mut fields: Vec<String> = Vec::new();
        for (cells, p) in carried.iter().zip(scores.chunks_exact(self.tasks)) {
            fields.clear();
            fields.extend(cells.iter().cloned());
            fields.extend(p.iter().map(|&x| format_probability(x)));
            self.writer
                .write_record(&fields)
                .map_err(|e| Error::io(&self.path, e.into()))?;
        }
        Ok(())
    }

    /// Flushes and moves the file into place.
    pub fn finish(self) -> Result<()> {
        let mut tmp = self
            .writer
            .into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))?;
        tmp.flush().map_err(|e| Error::io(&self.path, e))?;
        tmp.persist(&self.path)
            .map_err(|e| Error::io(&self.path, e.error))?;
        Ok(())
    }
}

/// The shortest text that reads back as the same f32; scientific notation below 1e-4, where
/// plain notation would be a long run of zeros.
fn format_probability(x: f32) -> String {
    if x != 0.0 && x.abs() < 1e-4 {
        format!("{x:e}")
    } else {
        x.to_string()
    }
}
