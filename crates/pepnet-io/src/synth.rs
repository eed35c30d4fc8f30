//! Synthetic input files for a spec: random rows ([`pepnet_core::synth`]) written as CSV or
//! Parquet, so that any model can be scored without real data (`pepnet gen-input`).

use std::path::Path;

use arrow_array::{ArrayRef, Float32Array, Int64Array, ListArray, RecordBatch};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use std::sync::Arc;

use crate::{Format, ROW_GROUP_ROWS};
use pepnet_core::atomic_file;
use pepnet_core::batch::{Batch, Column};
use pepnet_core::error::{Error, Result};
use pepnet_core::spec::{FeatureKind, ModelSpec};
use pepnet_core::synth::random_batch;

/// Rows generated and written at a time by [`write_file`].
pub const CHUNK: usize = 65536;

/// Writes `rows` random input rows for `spec` to `path`, CSV or Parquet by extension, a chunk at
/// a time (memory does not grow with `rows`), atomically. Chunk i comes from seed `seed + i`.
pub fn write_file(spec: &ModelSpec, rows: usize, seed: u64, path: &Path) -> Result<()> {
    let chunks = (0..rows.div_ceil(CHUNK).max(1) as u64).map(|i| {
        let n = (rows - (i as usize * CHUNK).min(rows)).min(CHUNK);
        (random_batch(spec, n, seed.wrapping_add(i)), Vec::new())
    });
    write_rows(spec, &[], chunks, path)
}

/// Writes chunks of rows: each chunk's features, then its `extra` float columns (one vector per
/// name in `extra`), CSV or Parquet by extension, atomically.
pub fn write_rows(
    spec: &ModelSpec,
    extra: &[String],
    chunks: impl Iterator<Item = (Batch, Vec<Vec<f32>>)>,
    path: &Path,
) -> Result<()> {
    let tmp = atomic_file::Output::create(path)?;
    let err = |e: String| Error::io(path, std::io::Error::other(e));
    let tmp = match Format::of(path) {
        Format::Csv => {
            let mut writer = csv::Writer::from_writer(tmp);
            writer
                .write_record(
                    spec.features
                        .iter()
                        .map(|f| f.name.as_str())
                        .chain(extra.iter().map(String::as_str)),
                )
                .map_err(|e| err(e.to_string()))?;
            let mut fields = Vec::with_capacity(spec.features.len() + extra.len());
            for (batch, extra_values) in chunks {
                for i in 0..batch.len() {
                    fields.clear();
                    for column in &batch.columns {
                        fields.push(match column {
                            Column::Dense(v) => v[i].to_string(),
                            _ => column
                                .ids(i)
                                .iter()
                                .map(u64::to_string)
                                .collect::<Vec<_>>()
                                .join("|"),
                        });
                    }
                    fields.extend(extra_values.iter().map(|v| v[i].to_string()));
                    writer
                        .write_record(&fields)
                        .map_err(|e| err(e.to_string()))?;
                }
            }
            writer.into_inner().map_err(|e| err(e.to_string()))?
        }
        Format::Parquet => {
            let fields: Vec<Field> = spec
                .features
                .iter()
                .map(|f| {
                    let t = match f.kind {
                        FeatureKind::Sparse => DataType::Int64,
                        FeatureKind::MultiHot => {
                            DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true)))
                        }
                        FeatureKind::Dense => DataType::Float32,
                    };
                    Field::new(&f.name, t, false)
                })
                .chain(
                    extra
                        .iter()
                        .map(|n| Field::new(n, DataType::Float32, false)),
                )
                .collect();
            let schema = Arc::new(Schema::new(fields));
            // Row groups of 64 Ki rows, so that several threads can read a large file.
            let props = parquet::file::properties::WriterProperties::builder()
                .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
                .build();
            let mut writer = ArrowWriter::try_new(tmp, schema.clone(), Some(props))
                .map_err(|e| err(e.to_string()))?;
            for (batch, extra_values) in chunks {
                let arrays: Vec<ArrayRef> = batch
                    .columns
                    .iter()
                    .map(to_arrow)
                    .chain(
                        extra_values
                            .into_iter()
                            .map(|v| Arc::new(Float32Array::from(v)) as ArrayRef),
                    )
                    .collect();
                let record =
                    RecordBatch::try_new(schema.clone(), arrays).map_err(|e| err(e.to_string()))?;
                writer.write(&record).map_err(|e| err(e.to_string()))?;
            }
            writer.into_inner().map_err(|e| err(e.to_string()))?
        }
    };
    tmp.commit(path)?;
    Ok(())
}

/// One column as an Arrow array: ids as Int64, lists as List<Int64>, dense values as Float32.
fn to_arrow(column: &Column) -> ArrayRef {
    match column {
        Column::Sparse(v) => Arc::new(Int64Array::from_iter_values(v.iter().map(|&x| x as i64))),
        Column::Dense(v) => Arc::new(Float32Array::from(v.clone())),
        Column::MultiHot { offsets, ids } => {
            let values = Int64Array::from_iter_values(ids.iter().map(|&x| x as i64));
            let offsets =
                OffsetBuffer::new(offsets.iter().map(|&o| o as i32).collect::<Vec<_>>().into());
            let field = Arc::new(Field::new_list_field(DataType::Int64, true));
            Arc::new(ListArray::new(field, offsets, Arc::new(values), None))
        }
    }
}
