//! CSV input and output.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::ArrayRef;
use arrow_cast::display::{ArrayFormatter, FormatOptions};

use super::{
    find_column, format_probability, quoted, string_array, BadRow, InputBatch, Part, RowAssembler,
    UnitItem,
};
use pepnet_core::atomic_file;
use pepnet_core::error::{Error, Result};
use pepnet_core::spec::FeatureKind;

/// Reads a CSV file batch by batch.
pub struct CsvReader {
    pub(super) rows: RowAssembler,
    reader: csv::Reader<Box<dyn std::io::Read + Send>>,
    file_bytes: u64,
    /// Column index of each feature, in spec order.
    feature_cols: Vec<usize>,
    carry_cols: Vec<usize>,
    batch_size: usize,
    /// Data rows read so far (rejected ones included).
    rows_read: usize,
    record: csv::StringRecord,
    done: bool,
    /// A part reader's share of the file: chunks of `batch_size` records.
    part: Option<Part>,
}

impl CsvReader {
    pub(super) fn open(
        path: &Path,
        carry: &[String],
        batch_size: usize,
        rows: RowAssembler,
        part: Option<Part>,
    ) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        let name = path.display().to_string();
        Self::from_reader(
            &name,
            Box::new(file),
            file_bytes,
            carry,
            batch_size,
            rows,
            part,
        )
    }

    /// As [`CsvReader::open`], reading `source` (of `total_bytes`, for progress) named `name`.
    pub(super) fn from_reader(
        name: &str,
        source: Box<dyn std::io::Read + Send>,
        file_bytes: u64,
        carry: &[String],
        batch_size: usize,
        rows: RowAssembler,
        part: Option<Part>,
    ) -> Result<Self> {
        let name = name.to_string();
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(source);
        let header = reader
            .headers()
            .map_err(|e| Error::InputFile {
                source_name: name.clone(),
                message: format!("cannot read the header row: {e}"),
            })?
            .clone();
        let header: Vec<&str> = header.iter().collect();
        let find = |col: &str, what: &str| find_column(&name, &header, col, what);
        let feature_cols = rows
            .spec()
            .features
            .iter()
            .map(|f| find(&f.name, "a feature of the model"))
            .collect::<Result<_>>()?;
        let carry_cols = carry
            .iter()
            .map(|c| find(c, "asked to be carried"))
            .collect::<Result<_>>()?;
        Ok(Self {
            rows,
            reader,
            file_bytes,
            feature_cols,
            carry_cols,
            batch_size: batch_size.max(1),
            rows_read: 0,
            record: csv::StringRecord::new(),
            done: false,
            part,
        })
    }

    /// A part reader's next unit: skips the other parts' chunks (records split, not parsed),
    /// then parses its own chunk of `batch_size` records.
    pub(super) fn next_unit(&mut self, emit: &mut dyn FnMut(UnitItem) -> bool) -> Result<bool> {
        let part = self.part.expect("a part reader");
        let mut skip = csv::ByteRecord::new();
        loop {
            if self.done {
                return Ok(false);
            }
            if (self.rows_read / self.batch_size) % part.count == part.index {
                break;
            }
            match self.reader.read_byte_record(&mut skip) {
                Ok(false) => self.done = true,
                Ok(true) => self.rows_read += 1,
                // A malformed record is a record: its own chunk's reader reports it.
                Err(e) if !matches!(e.kind(), csv::ErrorKind::Io(_)) => self.rows_read += 1,
                Err(e) => {
                    return Err(Error::InputFile {
                        source_name: self.rows.source().to_string(),
                        message: format!("row {}: {e}", self.rows_read + 1),
                    })
                }
            }
        }
        let chunk_end = (self.rows_read / self.batch_size + 1) * self.batch_size;
        let batch = self.next_batch(chunk_end)?;
        let rejected = self.rows.take_rejected();
        if batch.is_none() && rejected.is_empty() && self.done {
            return Ok(false); // the file ended at the chunk's start
        }
        let sent = (rejected.is_empty() || emit(UnitItem::Rejected(rejected)))
            && batch.is_none_or(|b| emit(UnitItem::Batch(b)))
            && emit(UnitItem::End);
        Ok(sent)
    }

    /// Reads rows into a batch until it holds `batch_size` rows (a whole reader) or the file's
    /// record count reaches `record_limit` (a part reader's chunk), or the file ends.
    fn next_batch(&mut self, record_limit: usize) -> Result<Option<InputBatch>> {
        let mut carried: Vec<Vec<String>> = vec![Vec::new(); self.carry_cols.len()];
        while self.rows.len() < self.batch_size && self.rows_read < record_limit {
            let read = self.reader.read_record(&mut self.record);
            let row = self.rows_read + 1;
            match read {
                Ok(false) => {
                    self.done = true;
                    break;
                }
                Ok(true) => self.rows_read += 1,
                Err(e) => {
                    // A malformed record (e.g. the wrong number of fields) is a bad row; an I/O
                    // error ends the run.
                    if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                        return Err(Error::InputFile {
                            source_name: self.rows.source().to_string(),
                            message: format!("row {row}: {e}"),
                        });
                    }
                    self.rows_read += 1;
                    match self.rows.bad_row(row, "", "", e.to_string()) {
                        BadRow::Skip => continue,
                        BadRow::Fail(e) => return Err(e),
                    }
                }
            }
            if let Err((f, message)) = self.parse_row() {
                let cell = self
                    .record
                    .get(self.feature_cols[f])
                    .unwrap_or("")
                    .trim()
                    .to_string();
                let column = self.rows.spec().features[f].name.clone();
                match self.rows.bad_row(row, &column, &cell, message) {
                    BadRow::Skip => continue,
                    BadRow::Fail(e) => return Err(e),
                }
            }
            self.rows.end_row(row);
            for (cells, &c) in carried.iter_mut().zip(&self.carry_cols) {
                cells.push(self.record.get(c).unwrap_or("").to_string());
            }
        }
        if self.rows.len() == 0 {
            return Ok(None);
        }
        let consumed = self.reader.position().byte().max(1);
        let (batch, rows) = self.rows.take();
        Ok(Some(InputBatch {
            spec_id: self.rows.spec_id(),
            batch,
            rows,
            carried: carried.into_iter().map(string_array).collect(),
            rows_read: self.rows_read,
            total_rows: Some(if self.done {
                self.rows_read as u64
            } else {
                {
                    let estimate =
                        self.rows_read as u128 * self.file_bytes as u128 / consumed as u128;
                    (estimate as u64).max(self.rows_read as u64)
                }
            }),
        }))
    }

    /// Pushes the current record's features; on a bad value, the feature and why.
    fn parse_row(&mut self) -> std::result::Result<(), (usize, String)> {
        let mut ids = Vec::new();
        for f in 0..self.feature_cols.len() {
            let cell = self.record.get(self.feature_cols[f]).unwrap_or("").trim();
            let feature = &self.rows.spec().features[f];
            let pushed = match feature.kind {
                FeatureKind::Dense => match cell.parse::<f32>() {
                    Ok(x) => self.rows.push_dense(f, x),
                    Err(_) => Err(format!("expected a number, found {}", quoted(cell))),
                },
                FeatureKind::Sparse | FeatureKind::MultiHot => {
                    ids.clear();
                    let parts = (feature.kind == FeatureKind::Sparse || !cell.is_empty())
                        .then(|| cell.split('|'));
                    let parsed: std::result::Result<(), String> =
                        parts.into_iter().flatten().try_for_each(|p| {
                            ids.push(parse_id(p.trim())?);
                            Ok(())
                        });
                    parsed.and_then(|()| self.rows.push_ids(f, &ids))
                }
            };
            pushed.map_err(|m| (f, m))?;
        }
        Ok(())
    }
}

fn parse_id(cell: &str) -> std::result::Result<u64, String> {
    cell.parse::<u64>()
        .map_err(|_| format!("expected a non-negative integer id, found {}", quoted(cell)))
}

impl Iterator for CsvReader {
    type Item = Result<InputBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done && self.rows.len() == 0 {
            return None;
        }
        let result = self.next_batch(usize::MAX);
        if result.is_err() {
            self.done = true;
        }
        result.transpose()
    }
}

/// Writes the scores CSV.
pub struct CsvScoreWriter {
    path: PathBuf,
    writer: csv::Writer<atomic_file::Output>,
    tasks: usize,
    fields: Vec<String>,
}

impl CsvScoreWriter {
    pub(super) fn create(path: &Path, carry: &[String], tasks: &[String]) -> Result<Self> {
        let mut writer = csv::Writer::from_writer(atomic_file::Output::create(path)?);
        writer
            .write_record(carry.iter().chain(tasks))
            .map_err(|e| Error::io(path, e.into()))?;
        Ok(Self {
            path: path.to_path_buf(),
            writer,
            tasks: tasks.len(),
            fields: Vec::new(),
        })
    }

    pub(super) fn write(&mut self, carried: &[ArrayRef], scores: &[f32]) -> Result<()> {
        let options = FormatOptions::default();
        let formatters = carried
            .iter()
            .map(|a| ArrayFormatter::try_new(a.as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::io(&self.path, std::io::Error::other(e)))?;
        for (i, p) in scores.chunks_exact(self.tasks).enumerate() {
            self.fields.clear();
            self.fields
                .extend(formatters.iter().map(|f| f.value(i).to_string()));
            self.fields.extend(p.iter().map(|&x| format_probability(x)));
            self.writer
                .write_record(&self.fields)
                .map_err(|e| Error::io(&self.path, e.into()))?;
        }
        Ok(())
    }

    pub(super) fn finish(self) -> Result<()> {
        crate::atomic::persist_csv(self.writer, &self.path)
    }
}

/// The named columns of a CSV file, row by row, as trimmed text. Errors name the file, and the
/// row of a malformed record.
pub fn read_text_rows(path: &Path, names: &[&str]) -> Result<Vec<Vec<String>>> {
    let source_name = path.display().to_string();
    let file_err = |message: String| Error::InputFile {
        source_name: source_name.clone(),
        message,
    };
    let mut reader = csv::Reader::from_path(path).map_err(|e| file_err(e.to_string()))?;
    let header = reader
        .headers()
        .map_err(|e| file_err(format!("cannot read the header row: {e}")))?
        .clone();
    let header: Vec<&str> = header.iter().collect();
    let cols = names
        .iter()
        .map(|n| find_column(&source_name, &header, n, "asked for"))
        .collect::<Result<Vec<_>>>()?;
    reader
        .records()
        .enumerate()
        .map(|(i, record)| {
            let record = record.map_err(|e| file_err(format!("row {}: {e}", i + 1)))?;
            Ok(cols
                .iter()
                .map(|&c| record.get(c).unwrap_or("").trim().to_string())
                .collect())
        })
        .collect()
}

pub(super) fn read_number_columns(path: &Path, names: &[String]) -> Result<Vec<Vec<f32>>> {
    let names_ref: Vec<&str> = names.iter().map(String::as_str).collect();
    let rows = read_text_rows(path, &names_ref)?;
    let mut out = vec![Vec::with_capacity(rows.len()); names.len()];
    for (i, row) in rows.iter().enumerate() {
        for ((values, cell), name) in out.iter_mut().zip(row).zip(names) {
            values.push(cell.parse().map_err(|_| Error::Input {
                source_name: path.display().to_string(),
                row: i + 1,
                column: name.clone(),
                message: format!("expected a number, found {}", quoted(cell)),
            })?);
        }
    }
    Ok(out)
}
