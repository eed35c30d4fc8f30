//! Parquet input and output, through Arrow record batches.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use arrow_array::{Array, ArrayRef, Float32Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::errors::ParquetError;

use super::{find_column, InputBatch, Part, RowAssembler, UnitItem};
use pepnet_core::atomic_file;
use pepnet_core::error::{Error, Result};

/// Rows per Parquet row group in the files written here: several threads read a file a row
/// group each, in turn.
pub const ROW_GROUP_ROWS: usize = 65536;

/// Opens one row group of the file: a reader of its projected columns, batch by batch.
type OpenGroup = Box<dyn FnMut(usize) -> parquet::errors::Result<ParquetRecordBatchReader> + Send>;

/// Reads a Parquet file one record batch (of at most the batch size) at a time, only the
/// feature and carried columns.
///
/// Every read goes row group by row group, each group on a reader of its own, and checks that
/// the group gave the rows its metadata claims: in a damaged file whose column chunks disagree
/// on a group's row count, a reader spanning groups would shift one column's values into the
/// next group's rows, a silent misalignment; read this way it is an error naming the group (and
/// one thread and several read alike).
pub struct ParquetReader {
    pub(super) rows: RowAssembler,
    carry: Vec<String>,
    total_rows: u64,
    rows_read: usize,
    open_group: OpenGroup,
    /// Rows before each row group.
    starts: Vec<usize>,
    /// The row group being read, and its reader.
    current: Option<(usize, ParquetRecordBatchReader)>,
    /// The next row group to open, and the step to the one after: a part reader takes every
    /// `count`-th group from its index, a whole-file reader every group.
    next_group: usize,
    step: usize,
    batch_size: usize,
}

impl ParquetReader {
    pub(super) fn open(
        path: &Path,
        carry: &[String],
        batch_size: usize,
        rows: RowAssembler,
        part: Option<Part>,
    ) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let name = path.display().to_string();
        // Each row group's reader reads through a handle of its own (it seeks before reading).
        let reopen = move || file.try_clone();
        Self::from_source(&name, reopen, carry, batch_size, rows, part)
    }

    /// A whole-file reader of Parquet bytes in memory, named `name` in errors.
    pub(super) fn from_bytes(
        name: &str,
        bytes: Vec<u8>,
        carry: &[String],
        batch_size: usize,
        rows: RowAssembler,
    ) -> Result<Self> {
        let data = bytes::Bytes::from(bytes);
        Self::from_source(
            name,
            move || Ok(data.clone()),
            carry,
            batch_size,
            rows,
            None,
        )
    }

    /// The reader over the source `reopen` hands out (once per row group, and once for the
    /// footer).
    fn from_source<T: parquet::file::reader::ChunkReader + 'static>(
        name: &str,
        reopen: impl Fn() -> std::io::Result<T> + Send + 'static,
        carry: &[String],
        batch_size: usize,
        rows: RowAssembler,
        part: Option<Part>,
    ) -> Result<Self> {
        let name = name.to_string();
        let file_err = |message: String| Error::InputFile {
            source_name: name.clone(),
            message,
        };
        let source = reopen().map_err(|e| Error::io(&name, e))?;
        // A damaged footer can make the decoder panic (an overflow it does not check): an
        // error of this file.
        let metadata = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ArrowReaderMetadata::load(&source, ArrowReaderOptions::default())
        }))
        .map_err(|panic| super::decoder_panic(&name, &*panic))?
        .map_err(|e| file_err(format!("not a readable Parquet file: {e}")))?;
        let (starts, total_rows) = row_group_starts(metadata.metadata(), &name)?;
        let schema = metadata.schema().clone();
        let names: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
        let find = |col: &str, what: &str| find_column(&name, &names, col, what);
        let mut wanted = crate::arrow_input::check_schema(&name, &schema, rows.spec())?;
        for c in carry {
            wanted.push(find(c, "asked to be carried")?);
        }
        let mask = ProjectionMask::roots(metadata.parquet_schema(), wanted);
        let batch_size = batch_size.max(1);
        let open_group: OpenGroup = Box::new(move |group| {
            let source = reopen().map_err(|e| ParquetError::External(Box::new(e)))?;
            ParquetRecordBatchReaderBuilder::new_with_metadata(source, metadata.clone())
                .with_batch_size(batch_size)
                .with_projection(mask.clone())
                .with_row_groups(vec![group])
                .build()
        });
        let (next_group, step) = part.map_or((0, 1), |p| (p.index, p.count.max(1)));
        Ok(Self {
            rows,
            carry: carry.to_vec(),
            total_rows,
            rows_read: 0,
            open_group,
            starts,
            current: None,
            next_group,
            step,
            batch_size,
        })
    }

    /// The rows row group `group` holds by the metadata.
    fn group_rows(&self, group: usize) -> usize {
        let end = self
            .starts
            .get(group + 1)
            .copied()
            .unwrap_or(self.total_rows as usize);
        end - self.starts[group]
    }

    /// Opens this reader's next row group; `None` after its last.
    fn open_next_group(&mut self) -> Option<Result<()>> {
        let group = self.next_group;
        if group >= self.starts.len() {
            return None;
        }
        self.next_group += self.step;
        self.rows_read = self.starts[group];
        Some(match (self.open_group)(group) {
            Ok(reader) => {
                self.current = Some((group, reader));
                Ok(())
            }
            Err(e) => Err(Error::InputFile {
                source_name: self.rows.source().to_string(),
                message: format!("row group {group}: cannot read: {e}"),
            }),
        })
    }

    /// The open row group's next record batch; `None` once it ended with the rows its metadata
    /// claims (or none is open), an error if it gave others.
    fn next_in_group(&mut self) -> Option<Result<RecordBatch>> {
        let (group, reader) = self.current.as_mut()?;
        let group = *group;
        let source_name = || self.rows.source().to_string();
        match reader.next() {
            Some(Ok(record)) => Some(Ok(record)),
            Some(Err(e)) => Some(Err(Error::InputFile {
                source_name: source_name(),
                message: format!("after row {}: {e}", self.rows_read),
            })),
            None => {
                self.current = None;
                let read = self.rows_read - self.starts[group];
                let claimed = self.group_rows(group);
                (read != claimed).then(|| {
                    Err(Error::InputFile {
                        source_name: source_name(),
                        message: format!(
                            "row group {group} holds {claimed} rows by the file's metadata, but \
                             its columns gave {read}; the file is damaged"
                        ),
                    })
                })
            }
        }
    }

    /// The next record batch of this reader's row groups, opening the next group when one
    /// ends; `None` after the last.
    fn next_record(&mut self) -> Option<Result<RecordBatch>> {
        loop {
            if self.current.is_none() {
                if let Err(e) = self.open_next_group()? {
                    return Some(Err(e));
                }
            }
            if let Some(record) = self.next_in_group() {
                return Some(record);
            }
        }
    }

    /// The most batches a row group of this file makes.
    pub(super) fn max_batches_per_unit(&self) -> usize {
        let rows = (0..self.starts.len())
            .map(|g| self.group_rows(g))
            .max()
            .unwrap_or(0);
        rows.div_ceil(self.batch_size).max(1)
    }

    /// A part reader's next unit: its next row group, batch by batch.
    pub(super) fn next_unit(&mut self, emit: &mut dyn FnMut(UnitItem) -> bool) -> Result<bool> {
        match self.open_next_group() {
            None => return Ok(false),
            Some(opened) => opened?,
        }
        while let Some(record) = self.next_in_group() {
            let batch = self.convert(record?)?;
            let rejected = self.rows.take_rejected();
            if !rejected.is_empty() && !emit(UnitItem::Rejected(rejected)) {
                return Ok(false);
            }
            if let Some(b) = batch {
                if !emit(UnitItem::Batch(b)) {
                    return Ok(false);
                }
            }
        }
        Ok(emit(UnitItem::End))
    }

    fn convert(&mut self, record: RecordBatch) -> Result<Option<InputBatch>> {
        let first_row = self.rows_read + 1;
        self.rows_read += record.num_rows();
        let Some((batch, rows, carried)) =
            crate::arrow_input::convert(&mut self.rows, &self.carry, &record, first_row)?
        else {
            return Ok(None);
        };
        Ok(Some(InputBatch {
            spec_id: self.rows.spec_id(),
            batch,
            rows,
            carried,
            rows_read: self.rows_read,
            total_rows: Some(self.total_rows),
        }))
    }
}

impl Iterator for ParquetReader {
    type Item = Result<InputBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let record = match self.next_record()? {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            };
            match self.convert(record) {
                Ok(Some(batch)) => return Some(Ok(batch)),
                Ok(None) => continue, // every row of this record batch was rejected
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Writes the scores as Parquet: the carried columns in their own types, then a float column
/// per task.
pub struct ParquetScoreWriter {
    path: PathBuf,
    carry: Vec<String>,
    tasks: Vec<String>,
    tmp: Option<atomic_file::Output>,
    writer: Option<(SchemaRef, ArrowWriter<atomic_file::Output>)>,
}

impl ParquetScoreWriter {
    pub(super) fn create(path: &Path, carry: &[String], tasks: &[String]) -> Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            carry: carry.to_vec(),
            tasks: tasks.to_vec(),
            tmp: Some(atomic_file::Output::create(path)?),
            writer: None,
        })
    }

    fn err(&self, e: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::io(&self.path, std::io::Error::other(e))
    }

    /// The writer, created on the first batch, when the carried columns' types are known.
    fn writer(
        &mut self,
        carried_types: &[DataType],
    ) -> Result<&mut (SchemaRef, ArrowWriter<atomic_file::Output>)> {
        if self.writer.is_none() {
            let fields: Vec<Field> = self
                .carry
                .iter()
                .zip(carried_types)
                .map(|(name, t)| Field::new(name, t.clone(), true))
                .chain(
                    self.tasks
                        .iter()
                        .map(|t| Field::new(t, DataType::Float32, false)),
                )
                .collect();
            let schema = Arc::new(Schema::new(fields));
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::SNAPPY)
                .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
                .build();
            let tmp = self.tmp.take().expect("the temporary file is taken once");
            let writer =
                ArrowWriter::try_new(tmp, schema.clone(), Some(props)).map_err(|e| self.err(e))?;
            self.writer = Some((schema, writer));
        }
        Ok(self.writer.as_mut().expect("just created"))
    }

    pub(super) fn write(&mut self, carried: &[ArrayRef], scores: &[f32]) -> Result<()> {
        let types: Vec<DataType> = carried.iter().map(|a| a.data_type().clone()).collect();
        let t_count = self.tasks.len();
        let mut columns: Vec<ArrayRef> = carried.to_vec();
        for t in 0..t_count {
            let p: Float32Array = scores.iter().skip(t).step_by(t_count).copied().collect();
            columns.push(Arc::new(p));
        }
        let (schema, writer) = self.writer(&types)?;
        let batch = RecordBatch::try_new(schema.clone(), columns);
        let result = batch.and_then(|b| writer.write(&b).map_err(Into::into));
        result.map_err(|e| self.err(e))
    }

    pub(super) fn finish(mut self) -> Result<()> {
        if self.writer.is_none() {
            // No rows at all: still write a file with the schema (carried columns as strings).
            let types = vec![DataType::Utf8; self.carry.len()];
            self.writer(&types)?;
        }
        let (_, writer) = self.writer.take().expect("created above");
        let out = writer.into_inner().map_err(|e| self.err(e))?;
        out.commit(&self.path)
    }
}

/// The rows before each row group, and the file's rows, from the footer; checked before
/// anything is sized from them: a damaged or hostile file must not make a reader allocate for
/// rows that are not there, nor overflow a sum.
fn row_group_starts(
    metadata: &parquet::file::metadata::ParquetMetaData,
    name: &str,
) -> Result<(Vec<usize>, u64)> {
    let damaged = |message: String| Error::InputFile {
        source_name: name.to_string(),
        message: format!("{message}; the file's metadata is damaged"),
    };
    let mut starts = Vec::new();
    let mut rows_before = 0usize;
    for (i, g) in metadata.row_groups().iter().enumerate() {
        starts.push(rows_before);
        rows_before = usize::try_from(g.num_rows())
            .ok()
            .and_then(|n| rows_before.checked_add(n))
            .ok_or_else(|| damaged(format!("row group {i} claims {} rows", g.num_rows())))?;
    }
    let total_rows = metadata.file_metadata().num_rows();
    if u64::try_from(total_rows).ok() != Some(rows_before as u64) {
        return Err(damaged(format!(
            "the footer counts {total_rows} rows but the row groups hold {rows_before}"
        )));
    }
    Ok((starts, total_rows as u64))
}

pub(super) fn read_number_columns(path: &Path, names: &[String]) -> Result<Vec<Vec<f32>>> {
    let source_name = path.display().to_string();
    let file_err = |message: String| Error::InputFile {
        source_name: source_name.clone(),
        message,
    };
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ParquetRecordBatchReaderBuilder::try_new(file)
    }))
    .map_err(|panic| super::decoder_panic(&source_name, &*panic))?
    .map_err(|e| file_err(format!("not a readable Parquet file: {e}")))?;
    row_group_starts(builder.metadata(), &source_name)?;
    let schema = builder.schema().clone();
    let columns: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
    let indices = names
        .iter()
        .map(|n| find_column(&source_name, &columns, n, "asked for"))
        .collect::<Result<Vec<_>>>()?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| file_err(format!("cannot read: {e}")))?;
    let mut out = vec![Vec::new(); names.len()];
    let mut rows = 0;
    for batch in reader {
        let batch = batch.map_err(|e| file_err(format!("after row {rows}: {e}")))?;
        for (values, name) in out.iter_mut().zip(names) {
            let column = batch.column_by_name(name).expect("projected");
            let cast = arrow_cast::cast(column.as_ref(), &DataType::Float32)
                .map_err(|e| file_err(format!("column '{name}': not numbers: {e}")))?;
            let floats = cast.as_primitive::<Float32Type>();
            if let Some(i) = (0..floats.len()).find(|&i| floats.is_null(i)) {
                return Err(Error::Input {
                    source_name: source_name.clone(),
                    row: rows + i + 1,
                    column: name.clone(),
                    message: "missing value (null)".into(),
                });
            }
            values.extend_from_slice(floats.values());
        }
        rows += batch.num_rows();
    }
    Ok(out)
}
