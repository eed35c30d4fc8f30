//! Scoring files: reading input (CSV or Parquet, by extension) batch by batch, writing scores
//! (CSV or Parquet) so that a failed run leaves nothing behind, and the optional rejects file.
//!
//! Input: one row per sample and a column per feature, named as in the spec. Sparse columns hold
//! integer ids; multi-hot cells hold ids separated by `|` in CSV (an empty cell is an empty list)
//! and a list of integers in Parquet; dense columns hold numbers. Other columns are ignored unless
//! carried. Carried columns travel as Arrow arrays (strings from CSV, the file's own types from
//! Parquet) to the output, followed by one probability column per task.

mod arrow_input;
mod atomic;
mod csv_file;
pub mod datagen;
pub mod pipeline;
pub mod synth;
pub use atomic::remove_unfinished_on_interrupt;
mod parallel;
mod parquet_file;
pub use parquet_file::ROW_GROUP_ROWS;
mod warm_up;
pub use warm_up::read_warm_up;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::ArrayRef;

use pepnet_core::atomic_file;
use pepnet_core::batch::{check_dense, check_ids, Batch, Column};
use pepnet_core::error::{Error, Result};
use pepnet_core::spec::{FeatureKind, ModelSpec};

pub use arrow_input::ArrowInput;
pub use csv_file::read_text_rows;
pub use csv_file::CsvReader;
pub use parallel::ParallelReader;
pub use parquet_file::ParquetReader;

/// A file format, chosen by extension: `.parquet` / `.pq` are Parquet, anything else CSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Parquet,
}

impl Format {
    pub fn of(path: &Path) -> Format {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
        {
            Some(e) if e == "parquet" || e == "pq" => Format::Parquet,
            _ => Format::Csv,
        }
    }
}

/// One batch of input rows.
pub struct InputBatch {
    pub batch: Batch,
    /// The carried columns of the batch's rows, in `carry` order.
    pub carried: Vec<ArrayRef>,
    /// Each sample's 1-based data row in the file (rejected rows leave gaps).
    pub rows: Vec<usize>,
    /// Rows of the file read so far, this batch's and rejected ones included.
    pub rows_read: usize,
    /// The file's rows, exactly (Parquet) or estimated from the bytes read so far (CSV).
    pub total_rows: Option<u64>,
    /// The `batch::spec_id` of the spec every value of `batch` was checked against.
    pub(crate) spec_id: u64,
}

/// Reads an input file batch by batch; memory stays at a few batches whatever the file size.
pub enum InputReader {
    Csv(CsvReader),
    Parquet(ParquetReader),
    /// Several threads parsing and checking parts of the file, batches delivered in file order.
    Parallel(ParallelReader),
}

/// Which part of a file a reader takes when several share it: CSV chunks of `batch_size`
/// records, or Parquet row groups, number `index`, `index + count`, `index + 2·count`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Part {
    pub index: usize,
    pub count: usize,
}

impl InputReader {
    /// Opens `path` (format by extension) and checks it has every feature and carried column.
    /// With `rejects`, rows whose values do not fit the model go there and are skipped;
    /// without, the first one fails the run.
    pub fn open(
        path: &Path,
        spec: &ModelSpec,
        carry: &[String],
        batch_size: usize,
        rejects: Option<Rejects>,
    ) -> Result<Self> {
        let sink = rejects.map_or(RejectSink::Fail, |r| RejectSink::File(Box::new(r)));
        let rows = RowAssembler::new(spec, path, sink);
        Ok(match Format::of(path) {
            Format::Csv => InputReader::Csv(CsvReader::open(path, carry, batch_size, rows, None)?),
            Format::Parquet => {
                InputReader::Parquet(ParquetReader::open(path, carry, batch_size, rows, None)?)
            }
        })
    }

    /// As [`InputReader::open`], reading a file's bytes held in memory (`name` names them in
    /// errors; `format` says how to read them). One thread.
    pub fn from_bytes(
        name: &str,
        bytes: Vec<u8>,
        format: Format,
        spec: &ModelSpec,
        carry: &[String],
        batch_size: usize,
        rejects: Option<Rejects>,
    ) -> Result<Self> {
        let sink = rejects.map_or(RejectSink::Fail, |r| RejectSink::File(Box::new(r)));
        let rows = RowAssembler::new(spec, Path::new(name), sink);
        Ok(match format {
            Format::Csv => {
                let len = bytes.len() as u64;
                let source = Box::new(std::io::Cursor::new(bytes));
                InputReader::Csv(CsvReader::from_reader(
                    name, source, len, carry, batch_size, rows, None,
                )?)
            }
            Format::Parquet => InputReader::Parquet(ParquetReader::from_bytes(
                name, bytes, carry, batch_size, rows,
            )?),
        })
    }

    /// As [`InputReader::open`], with `threads` threads parsing and checking the file's values
    /// (CSV chunks of `batch_size` records, or Parquet row groups, taken in turn); batches and
    /// rejected rows come out in file order, the first bad row in file order fails the run.
    /// One thread reads as `open` does.
    pub fn open_parallel(
        path: &Path,
        spec: &ModelSpec,
        carry: &[String],
        batch_size: usize,
        rejects: Option<Rejects>,
        threads: usize,
    ) -> Result<Self> {
        if threads <= 1 {
            return Self::open(path, spec, carry, batch_size, rejects);
        }
        Ok(InputReader::Parallel(ParallelReader::open(
            path, spec, carry, batch_size, rejects, threads,
        )?))
    }

    /// A reader of one part of the file for a [`ParallelReader`]'s thread; rejected rows are
    /// collected (`collect`) or fail the read.
    pub(crate) fn open_part(
        path: &Path,
        spec: &ModelSpec,
        carry: &[String],
        batch_size: usize,
        collect: bool,
        part: Part,
    ) -> Result<Self> {
        let sink = if collect {
            RejectSink::Collect(Vec::new())
        } else {
            RejectSink::Fail
        };
        let rows = RowAssembler::new(spec, path, sink);
        Ok(match Format::of(path) {
            Format::Csv => {
                InputReader::Csv(CsvReader::open(path, carry, batch_size, rows, Some(part))?)
            }
            Format::Parquet => InputReader::Parquet(ParquetReader::open(
                path,
                carry,
                batch_size,
                rows,
                Some(part),
            )?),
        })
    }

    /// For a part reader: the most items one unit hands its consumer (each batch may come
    /// after a list of rejected rows, and an end marker closes the unit), so that a thread can
    /// read a whole unit while the consumer drains another's.
    pub(crate) fn max_items_per_unit(&self) -> usize {
        match self {
            InputReader::Csv(_) => 3,
            InputReader::Parquet(r) => 2 * r.max_batches_per_unit() + 1,
            InputReader::Parallel(_) => unreachable!("parts are plain readers"),
        }
    }

    /// For a part reader: reads its next unit (a CSV chunk or a Parquet row group), passing
    /// each rejected-rows list and batch to `emit` in file order. Returns false when the part
    /// has no unit left or `emit` refused (the consumer is gone).
    pub(crate) fn next_unit(&mut self, emit: &mut dyn FnMut(UnitItem) -> bool) -> Result<bool> {
        match self {
            InputReader::Csv(r) => r.next_unit(emit),
            InputReader::Parquet(r) => r.next_unit(emit),
            InputReader::Parallel(_) => unreachable!("parts are plain readers"),
        }
    }

    /// Rows rejected so far.
    pub fn rejected(&self) -> usize {
        match self {
            InputReader::Csv(r) => r.rows.rejected(),
            InputReader::Parquet(r) => r.rows.rejected(),
            InputReader::Parallel(r) => r.rejected(),
        }
    }

    /// Ends the read: moves the rejects file into place. Call only when the whole run succeeded.
    pub fn finish(self) -> Result<usize> {
        self.finish_with(Vec::new())
    }

    /// As [`InputReader::finish`], first adding rows rejected after reading (by the scorer),
    /// which the rejects file lists after those rejected while reading.
    pub(crate) fn finish_with(self, late: Vec<RejectedRow>) -> Result<usize> {
        let rejects = match self {
            InputReader::Csv(r) => r.rows.into_rejects(),
            InputReader::Parquet(r) => r.rows.into_rejects(),
            InputReader::Parallel(r) => r.into_rejects(),
        };
        match rejects {
            Some(mut r) => {
                for row in late {
                    r.add(row.row, &row.column, &row.value, &row.reason)?;
                }
                r.finish()
            }
            None if late.is_empty() => Ok(0),
            None => Err(Error::InputFile {
                source_name: String::new(),
                message: "rows were rejected without a rejects file".into(),
            }),
        }
    }
}

impl Iterator for InputReader {
    type Item = Result<InputBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let source = match self {
            InputReader::Csv(r) => r.rows.source().to_string(),
            InputReader::Parquet(r) => r.rows.source().to_string(),
            InputReader::Parallel(r) => return r.next(),
        };
        // A damaged file can make a decoding library panic: an error of this file then.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match self {
            InputReader::Csv(r) => r.next(),
            InputReader::Parquet(r) => r.next(),
            InputReader::Parallel(r) => r.next(),
        }))
        .unwrap_or_else(|panic| Some(Err(decoder_panic(&source, &*panic))))
    }
}

/// Installs a panic hook that keeps quiet about panics raised inside the Parquet and Arrow
/// decoders, which the readers catch and report as an error naming the file (the default hook
/// would print a backtrace first, as if the program had crashed); every other panic is printed
/// by the hook installed before. For programs, such as the `pepnet` command line.
pub fn quiet_decoder_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_decoder = info.location().is_some_and(|l| {
            let file = l.file();
            file.contains("/parquet-") || file.contains("/arrow-")
        });
        if !in_decoder {
            previous(info);
        }
    }));
}

/// The error for a panic caught while decoding `source`.
pub(crate) fn decoder_panic(source: &str, panic: &(dyn std::any::Any + Send)) -> Error {
    let why = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    Error::InputFile {
        source_name: source.to_string(),
        message: format!(
            "the file could not be decoded (the decoder failed: {why}); is it damaged?"
        ),
    }
}

/// What a part reader hands its consumer, in file order.
pub(crate) enum UnitItem {
    Rejected(Vec<RejectedRow>),
    Batch(InputBatch),
    /// The unit (CSV chunk, Parquet row group) is complete.
    End,
}

/// A rejected row, kept by a part reader until its consumer writes it in file order.
#[derive(Debug, Clone)]
pub(crate) struct RejectedRow {
    pub row: usize,
    pub column: String,
    pub value: String,
    pub reason: String,
}

/// Where rows that do not fit go.
pub(crate) enum RejectSink {
    /// Nowhere: the first one fails the read.
    Fail,
    /// The rejects file (boxed: it holds a CSV writer's buffer).
    File(Box<Rejects>),
    /// Kept in memory (a part reader's, written out in order by its consumer).
    Collect(Vec<RejectedRow>),
}

/// Builds a batch row by row, checking each value as it arrives; a bad row is rolled back and
/// either rejected (with `--rejects`) or turned into an error naming file, row and column.
pub(crate) struct RowAssembler {
    spec: ModelSpec,
    spec_id: u64,
    source: String,
    columns: Vec<Column>,
    rows: usize,
    /// The file rows of the completed rows.
    row_numbers: Vec<usize>,
    rejects: RejectSink,
}

/// What to do after a row's value did not fit.
pub(crate) enum BadRow {
    /// Skip the row (it went to the rejects file).
    Skip,
    /// Fail the run.
    Fail(Error),
}

impl RowAssembler {
    pub(crate) fn new(spec: &ModelSpec, path: &Path, rejects: RejectSink) -> Self {
        let mut a = Self {
            spec: spec.clone(),
            spec_id: pepnet_core::batch::spec_id(spec),
            source: path.display().to_string(),
            columns: Vec::new(),
            rows: 0,
            row_numbers: Vec::new(),
            rejects,
        };
        a.reset();
        a
    }

    fn reset(&mut self) {
        self.rows = 0;
        self.columns = self
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
    }

    pub(crate) fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub(crate) fn spec_id(&self) -> u64 {
        self.spec_id
    }

    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    /// Rows completed in the current batch.
    pub(crate) fn len(&self) -> usize {
        self.rows
    }

    /// Appends feature `f`'s sparse id or list of ids to the current row.
    pub(crate) fn push_ids(&mut self, f: usize, ids: &[u64]) -> std::result::Result<(), String> {
        check_ids(&self.spec.features[f], ids)?;
        match &mut self.columns[f] {
            Column::Sparse(v) => v.push(ids[0]),
            Column::MultiHot { offsets, ids: all } => {
                all.extend_from_slice(ids);
                offsets.push(all.len());
            }
            Column::Dense(_) => unreachable!("dense features take push_dense"),
        }
        Ok(())
    }

    /// Appends feature `f`'s dense value to the current row.
    pub(crate) fn push_dense(&mut self, f: usize, x: f32) -> std::result::Result<(), String> {
        check_dense(x)?;
        match &mut self.columns[f] {
            Column::Dense(v) => v.push(x),
            _ => unreachable!("only dense features take push_dense"),
        }
        Ok(())
    }

    /// Completes the current row, file row `row` (1-based).
    pub(crate) fn end_row(&mut self, row: usize) {
        self.rows += 1;
        self.row_numbers.push(row);
    }

    /// Rolls back a partly pushed row, then rejects it or turns it into an error. `row` is the
    /// 1-based data row of the file; `column` and `value` name the culprit ("" if none).
    pub(crate) fn bad_row(
        &mut self,
        row: usize,
        column: &str,
        value: &str,
        message: String,
    ) -> BadRow {
        let n = self.rows;
        for c in &mut self.columns {
            match c {
                Column::Sparse(v) => v.truncate(n),
                Column::Dense(v) => v.truncate(n),
                Column::MultiHot { offsets, ids } => {
                    offsets.truncate(n + 1);
                    ids.truncate(offsets[n]);
                }
            }
        }
        match &mut self.rejects {
            RejectSink::File(rejects) => {
                match rejects.add(row, column, value, &with_value(message, value)) {
                    Ok(()) => BadRow::Skip,
                    Err(e) => BadRow::Fail(e),
                }
            }
            RejectSink::Collect(rows) => {
                rows.push(RejectedRow {
                    row,
                    column: column.to_string(),
                    value: value.to_string(),
                    reason: with_value(message, value),
                });
                BadRow::Skip
            }
            RejectSink::Fail => BadRow::Fail(if column.is_empty() {
                Error::InputFile {
                    source_name: self.source.clone(),
                    message: format!("row {row}: {message}"),
                }
            } else {
                Error::Input {
                    source_name: self.source.clone(),
                    row,
                    column: column.to_string(),
                    message: with_value(message, value),
                }
            }),
        }
    }

    /// The completed rows as a batch, with their file rows; starts the next one.
    pub(crate) fn take(&mut self) -> (Batch, Vec<usize>) {
        let batch = Batch::new(std::mem::take(&mut self.columns));
        let rows = std::mem::take(&mut self.row_numbers);
        self.reset();
        (batch, rows)
    }

    fn rejected(&self) -> usize {
        match &self.rejects {
            RejectSink::File(r) => r.count,
            _ => 0,
        }
    }

    /// The rows rejected since the last call (a part reader's).
    pub(crate) fn take_rejected(&mut self) -> Vec<RejectedRow> {
        match &mut self.rejects {
            RejectSink::Collect(rows) => std::mem::take(rows),
            _ => Vec::new(),
        }
    }

    fn into_rejects(self) -> Option<Rejects> {
        match self.rejects {
            RejectSink::File(r) => Some(*r),
            _ => None,
        }
    }
}

/// `message`, naming `value` as the file holds it unless it already does.
fn with_value(message: String, value: &str) -> String {
    if value.is_empty() || message.contains(&quoted(value)) {
        message
    } else {
        format!("{message} (the cell holds {})", quoted(value))
    }
}

/// The one column of `header` named `col` (names trimmed), or an error naming the file: the
/// column is missing, or more than one column has its name (which one was meant is unknown).
pub(crate) fn find_column<S: AsRef<str>>(
    source: &str,
    header: &[S],
    col: &str,
    what: &str,
) -> Result<usize> {
    let mut hits = header
        .iter()
        .enumerate()
        .filter(|(_, h)| h.as_ref().trim() == col)
        .map(|(i, _)| i);
    let names = || header.iter().map(|h| h.as_ref().trim()).collect::<Vec<_>>();
    match (hits.next(), hits.next()) {
        (Some(i), None) => Ok(i),
        (None, _) => Err(Error::InputFile {
            source_name: source.to_string(),
            message: format!(
                "missing column '{col}' ({what}); the header has {:?}",
                names()
            ),
        }),
        (Some(i), Some(j)) => Err(Error::InputFile {
            source_name: source.to_string(),
            message: format!(
                "column '{col}' ({what}) appears more than once in the header (columns {} and \
                 {}); rename or drop the copies",
                i + 1,
                j + 1
            ),
        }),
    }
}

/// The output's header (carried columns, then one per task) names each column once: a
/// carried column named like a task would make the score and the copy indistinguishable.
pub(crate) fn check_output_header(path: &Path, carry: &[String], tasks: &[String]) -> Result<()> {
    let mut seen = std::collections::HashMap::new();
    for (what, name) in carry
        .iter()
        .map(|c| ("a carried column", c))
        .chain(tasks.iter().map(|t| ("a task's score", t)))
    {
        if let Some(before) = seen.insert(name.as_str(), what) {
            return Err(Error::io(
                path,
                std::io::Error::other(format!(
                    "the output would have two columns named '{name}' ({before} and {what}); \
                     carry a column only once and none named like a task"
                )),
            ));
        }
    }
    Ok(())
}

/// A cell as an error message shows it: quoted, and cut short when long, so that a 10 MB cell
/// makes a one-line message.
pub(crate) fn quoted(cell: &str) -> String {
    const SHOWN: usize = 60;
    match cell.char_indices().nth(SHOWN) {
        None => format!("'{cell}'"),
        Some((end, _)) => format!("'{}…' (a cell of {} bytes)", &cell[..end], cell.len()),
    }
}

/// The rejects file: `row,column,value,reason` per rejected row, written beside its final path
/// and moved into place only when the run succeeds.
pub struct Rejects {
    path: PathBuf,
    writer: ::csv::Writer<atomic_file::Output>,
    count: usize,
}

impl Rejects {
    pub fn create(path: &Path) -> Result<Self> {
        let mut writer = ::csv::Writer::from_writer(atomic_file::Output::create(path)?);
        writer
            .write_record(["row", "column", "value", "reason"])
            .map_err(|e| Error::io(path, e.into()))?;
        Ok(Self {
            path: path.to_path_buf(),
            writer,
            count: 0,
        })
    }

    pub(crate) fn add(
        &mut self,
        row: usize,
        column: &str,
        value: &str,
        reason: &str,
    ) -> Result<()> {
        self.count += 1;
        self.writer
            .write_record([row.to_string().as_str(), column, value, reason])
            .map_err(|e| Error::io(&self.path, e.into()))
    }

    pub(crate) fn count(&self) -> usize {
        self.count
    }

    pub(crate) fn finish(self) -> Result<usize> {
        crate::atomic::persist_csv(self.writer, &self.path)?;
        Ok(self.count)
    }
}

/// Writes scores (carried columns, then one probability column per task) to a temporary file
/// beside `path`, renamed into place by [`ScoreWriter::finish`]; dropping it deletes the file.
pub enum ScoreWriter {
    Csv(csv_file::CsvScoreWriter),
    Parquet(parquet_file::ParquetScoreWriter),
}

impl ScoreWriter {
    pub fn create(path: &Path, carry: &[String], tasks: &[String]) -> Result<Self> {
        check_output_header(path, carry, tasks)?;
        Ok(match Format::of(path) {
            Format::Csv => ScoreWriter::Csv(csv_file::CsvScoreWriter::create(path, carry, tasks)?),
            Format::Parquet => ScoreWriter::Parquet(parquet_file::ParquetScoreWriter::create(
                path, carry, tasks,
            )?),
        })
    }

    /// Appends rows: the carried arrays, then the T scores of each sample (sample-major).
    pub fn write(&mut self, carried: &[ArrayRef], scores: &[f32]) -> Result<()> {
        match self {
            ScoreWriter::Csv(w) => w.write(carried, scores),
            ScoreWriter::Parquet(w) => w.write(carried, scores),
        }
    }

    pub fn finish(self) -> Result<()> {
        match self {
            ScoreWriter::Csv(w) => w.finish(),
            ScoreWriter::Parquet(w) => w.finish(),
        }
    }
}

/// The shortest text that reads back as the same f32; scientific notation below 1e-4, where
/// plain notation would be a long run of zeros.
pub(crate) fn format_probability(x: f32) -> String {
    if x != 0.0 && x.abs() < 1e-4 {
        format!("{x:e}")
    } else {
        x.to_string()
    }
}

/// A string array of carried cells.
pub(crate) fn string_array(values: Vec<String>) -> ArrayRef {
    Arc::new(arrow_array::StringArray::from(values))
}

/// Reads whole columns of numbers from a CSV or Parquet file (e.g. a scores file), by name.
/// Errors name the file, and the row and column of a cell that is not a number.
pub fn read_number_columns(path: &Path, names: &[String]) -> Result<Vec<Vec<f32>>> {
    // A damaged file can make a decoding library panic: an error of this file then.
    std::panic::catch_unwind(|| match Format::of(path) {
        Format::Csv => csv_file::read_number_columns(path, names),
        Format::Parquet => parquet_file::read_number_columns(path, names),
    })
    .unwrap_or_else(|panic| Err(decoder_panic(&path.display().to_string(), &*panic)))
}
