//! Arrow record batches as model input: the column checks and the conversion that Parquet files
//! go through, for batches from anywhere (a Parquet row group, or Python: pyarrow, pandas, Ray
//! Data, Spark's `mapInArrow`), with the same errors naming the source, row and column.

use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int64Type, UInt64Type};
use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{DataType, Field, Schema};

use crate::{find_column, BadRow, RejectSink, RowAssembler};
use pepnet_core::batch::{Batch, CheckedBatch};
use pepnet_core::error::{Error, Result};
use pepnet_core::spec::{FeatureKind, ModelSpec};

/// A converted record batch: its samples, their 1-based rows, and the carried columns of the
/// rows kept.
pub(crate) type Converted = (Batch, Vec<usize>, Vec<ArrayRef>);

/// Checks that `schema` has every feature of `spec` once, of a type it can be read as; returns
/// their column indices in spec order.
pub(crate) fn check_schema(source: &str, schema: &Schema, spec: &ModelSpec) -> Result<Vec<usize>> {
    let names: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
    let mut wanted = Vec::new();
    for f in &spec.features {
        let i = find_column(source, &names, &f.name, "a feature of the model")?;
        let t = schema.field(i).data_type();
        let ok = match f.kind {
            FeatureKind::Sparse => t.is_integer(),
            FeatureKind::Dense => t.is_integer() || t.is_floating(),
            FeatureKind::MultiHot => match t {
                DataType::List(e) | DataType::LargeList(e) | DataType::FixedSizeList(e, _) => {
                    e.data_type().is_integer()
                }
                _ => false,
            },
        };
        if !ok {
            let expected = match f.kind {
                FeatureKind::Sparse => "integer ids",
                FeatureKind::Dense => "numbers",
                FeatureKind::MultiHot => "lists of integer ids",
            };
            return Err(Error::InputFile {
                source_name: source.to_string(),
                message: format!(
                    "column '{}': expected {expected} for a {:?} feature, found type {t}",
                    f.name, f.kind
                ),
            });
        }
        wanted.push(i);
    }
    Ok(wanted)
}

/// Converts `record`'s feature columns into samples checked against the model (its first row
/// is data row `first_row`): a value that does not fit is rejected or fails, as `rows` says.
/// `None` when no row was kept.
pub(crate) fn convert(
    rows: &mut RowAssembler,
    carry: &[String],
    record: &RecordBatch,
    first_row: usize,
) -> Result<Option<Converted>> {
    let name = rows.source().to_string();
    let n = record.num_rows();
    let spec = rows.spec().clone();
    // Each feature column, cast once to the type the row loop reads.
    let mut originals = Vec::new();
    let mut cast = Vec::new();
    for f in &spec.features {
        let original = record.column_by_name(&f.name).expect("projected").clone();
        // Ids are read as u64 from unsigned columns (a hashed id may use all 64 bits) and
        // as i64 from any other.
        let id_type = |t: &DataType| match t {
            DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
                DataType::UInt64
            }
            _ => DataType::Int64,
        };
        let target = match (f.kind, original.data_type()) {
            (FeatureKind::Sparse, t) => id_type(t),
            (FeatureKind::Dense, _) => DataType::Float32,
            (
                FeatureKind::MultiHot,
                DataType::List(child)
                | DataType::LargeList(child)
                | DataType::FixedSizeList(child, _),
            ) => DataType::LargeList(Arc::new(Field::new_list_field(
                id_type(child.data_type()),
                true,
            ))),
            (FeatureKind::MultiHot, _) => {
                DataType::LargeList(Arc::new(Field::new_list_field(DataType::Int64, true)))
            }
        };
        let converted =
            arrow_cast::cast(original.as_ref(), &target).map_err(|e| Error::InputFile {
                source_name: name.clone(),
                message: format!("column '{}': cannot read as {target}: {e}", f.name),
            })?;
        originals.push(original);
        cast.push(converted);
    }
    let options = FormatOptions::default();
    let mut keep = Vec::with_capacity(n);
    let mut ids = Vec::new();
    for i in 0..n {
        let mut bad = None;
        for (f, feature) in spec.features.iter().enumerate() {
            let (original, array) = (&originals[f], &cast[f]);
            let pushed = if original.is_null(i) {
                Err("missing value (null)".to_string())
            } else if array.is_null(i) {
                Err("value does not fit the column's numeric type".to_string())
            } else {
                match feature.kind {
                    FeatureKind::Dense => {
                        rows.push_dense(f, array.as_primitive::<Float32Type>().value(i))
                    }
                    FeatureKind::Sparse => id_at(array.as_ref(), i, feature.hashed)
                        .and_then(|id| rows.push_ids(f, &[id])),
                    FeatureKind::MultiHot => {
                        let values = array.as_list::<i64>().value(i);
                        let original_values = list_values(original.as_ref(), i);
                        ids.clear();
                        let parsed: std::result::Result<(), String> = (0..values.len())
                            .try_for_each(|j| {
                                if values.is_null(j) {
                                    return Err(match &original_values {
                                        Some(o) if !o.is_null(j) => format!(
                                            "the id at position {j} of the list is not a \
                                                 whole number that fits 64 bits"
                                        ),
                                        _ => format!("null id at position {j} of the list"),
                                    });
                                }
                                ids.push(id_at(values.as_ref(), j, feature.hashed)?);
                                Ok(())
                            });
                        parsed.and_then(|()| rows.push_ids(f, &ids))
                    }
                }
            };
            if let Err(message) = pushed {
                bad = Some((f, message));
                break;
            }
        }
        match bad {
            None => {
                rows.end_row(first_row + i);
                keep.push(true);
            }
            Some((f, message)) => {
                let value = ArrayFormatter::try_new(originals[f].as_ref(), &options)
                    .map(|fmt| fmt.value(i).to_string())
                    .unwrap_or_default();
                match rows.bad_row(first_row + i, &spec.features[f].name, &value, message) {
                    BadRow::Skip => keep.push(false),
                    BadRow::Fail(e) => return Err(e),
                }
            }
        }
    }
    if rows.len() == 0 {
        return Ok(None);
    }
    let all_kept = keep.iter().all(|&k| k);
    let mask = BooleanArray::from(keep);
    let carried = carry
        .iter()
        .map(|c| {
            let column = record.column_by_name(c).expect("projected").clone();
            if all_kept {
                Ok(column)
            } else {
                arrow_select::filter::filter(column.as_ref(), &mask)
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::InputFile {
            source_name: name,
            message: format!("selecting carried columns: {e}"),
        })?;
    let (batch, row_numbers) = rows.take();
    Ok(Some((batch, row_numbers, carried)))
}

/// A Parquet INT64 id: a vocabulary id must not be negative; a hashed feature's id is the
/// 64 bits as they are (hashes are commonly stored signed).
/// Value `i` of an id array cast to UInt64 or Int64. A hashed feature takes a signed id's 64
/// bits as they are (ids are hashes); a vocabulary id must not be negative.
fn id_at(array: &dyn Array, i: usize, hashed: bool) -> std::result::Result<u64, String> {
    if array.data_type() == &DataType::UInt64 {
        return Ok(array.as_primitive::<UInt64Type>().value(i));
    }
    let id = array.as_primitive::<Int64Type>().value(i);
    if hashed {
        return Ok(id as u64);
    }
    u64::try_from(id).map_err(|_| format!("id {id} is negative"))
}

/// The values of list `i` of a list column as the file holds them (before any cast).
fn list_values(array: &dyn Array, i: usize) -> Option<ArrayRef> {
    match array.data_type() {
        DataType::List(_) => Some(array.as_list::<i32>().value(i)),
        DataType::LargeList(_) => Some(array.as_list::<i64>().value(i)),
        DataType::FixedSizeList(..) => Some(array.as_fixed_size_list().value(i)),
        _ => None,
    }
}

/// Record batches from outside a file, checked and converted one by one: the Python package's
/// input. Errors name `source`, the row (counted over every batch converted, from 1) and the
/// column.
pub struct ArrowInput {
    rows: RowAssembler,
    carry: Vec<String>,
    rows_read: usize,
}

impl ArrowInput {
    /// Input of `schema` for a model of `spec`; `carry`: the columns copied to the output
    /// (`None`: every column that is not a feature, so row keys survive a distributed job).
    pub fn new(
        spec: &ModelSpec,
        source: &str,
        schema: &Schema,
        carry: Option<Vec<String>>,
    ) -> Result<Self> {
        check_schema(source, schema, spec)?;
        let names: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
        let carry = match carry {
            Some(carry) => {
                for c in &carry {
                    find_column(source, &names, c, "asked to be carried")?;
                }
                carry
            }
            None => names
                .iter()
                .filter(|n| !spec.features.iter().any(|f| f.name == ***n))
                .map(|n| n.to_string())
                .collect(),
        };
        crate::check_output_header(Path::new(source), &carry, &spec.tasks)?;
        Ok(Self {
            rows: RowAssembler::new(spec, Path::new(source), RejectSink::Fail),
            carry,
            rows_read: 0,
        })
    }

    /// The columns copied to the output, in order.
    pub fn carry(&self) -> &[String] {
        &self.carry
    }

    /// Rows converted so far (counting the rows skipped).
    pub fn rows_read(&self) -> usize {
        self.rows_read
    }

    /// Counts `n` rows as read before the next batch: its rows are numbered from `n + 1` in
    /// errors (a part of a larger input).
    pub fn skip_rows(&mut self, n: usize) {
        self.rows_read += n;
    }

    /// The output's schema: the carried columns as `input` has them, then a float column per
    /// task.
    pub fn output_schema(&self, input: &Schema) -> Result<Schema> {
        let mut fields = Vec::new();
        for c in &self.carry {
            let field = input.field_with_name(c).map_err(|_| Error::InputFile {
                source_name: self.rows.source().to_string(),
                message: format!("missing column '{c}' (asked to be carried)"),
            })?;
            fields.push(Field::new(c, field.data_type().clone(), true));
        }
        for t in &self.rows.spec().tasks {
            fields.push(Field::new(t, DataType::Float32, false));
        }
        Ok(Schema::new(fields))
    }

    /// Checks and converts `record` (with the model's features, and the carried columns); the
    /// samples, ready to score, and the carried columns.
    pub fn convert(&mut self, record: &RecordBatch) -> Result<(CheckedBatch, Vec<ArrayRef>)> {
        check_schema(self.rows.source(), &record.schema(), self.rows.spec())?;
        for c in &self.carry {
            if record.column_by_name(c).is_none() {
                return Err(Error::InputFile {
                    source_name: self.rows.source().to_string(),
                    message: format!("missing column '{c}' (asked to be carried)"),
                });
            }
        }
        let first_row = self.rows_read + 1;
        self.rows_read += record.num_rows();
        let spec_id = self.rows.spec_id();
        match convert(&mut self.rows, &self.carry, record, first_row)? {
            Some((batch, _, carried)) => Ok((CheckedBatch::from_reader(batch, spec_id), carried)),
            None => Ok((
                CheckedBatch::from_reader(self.rows.take().0, spec_id),
                self.carry
                    .iter()
                    .map(|c| record.column_by_name(c).expect("checked").slice(0, 0))
                    .collect(),
            )),
        }
    }

    /// The carried columns and `scores` (`rows × tasks`) as one record batch of
    /// [`ArrowInput::output_schema`] of `input`.
    pub fn output(
        &self,
        input: &Schema,
        carried: Vec<ArrayRef>,
        scores: &[f32],
    ) -> Result<RecordBatch> {
        let schema = Arc::new(self.output_schema(input)?);
        let t_count = self.rows.spec().tasks.len();
        let mut columns = carried;
        for t in 0..t_count {
            let p: arrow_array::Float32Array =
                scores.iter().skip(t).step_by(t_count).copied().collect();
            columns.push(Arc::new(p));
        }
        RecordBatch::try_new(schema, columns).map_err(|e| Error::InputFile {
            source_name: self.rows.source().to_string(),
            message: format!("assembling the output: {e}"),
        })
    }
}
