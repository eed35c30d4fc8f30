//! `pepnet._native`: the engine behind the Python package `pepnet` (python/pepnet). Record
//! batches cross the boundary through the Arrow C data interface (no copy of their buffers);
//! the GIL is released while a batch is checked, scored and assembled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_pyarrow::PyArrowType;
use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use pepnet_core::cache::{CacheCapacity, StoreSource};
use pepnet_core::{Engine, EngineOptions, Error, GpuContext, Model, ModelSpec, Precision};
use pepnet_io::ArrowInput;

create_exception!(
    _native,
    InputError,
    PyValueError,
    "Input that does not fit the model: a missing column, a wrong type, a value out of range. \
     `column` and `row` (1-based, over every batch the scorer was given) say where, when known."
);
create_exception!(
    _native,
    PepnetError,
    PyRuntimeError,
    "Any other failure of the engine: the model, the GPU, the store."
);

/// A pepnet error as a Python exception: input errors as `InputError` with `column` and `row`.
fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let message = e.to_string();
    match e {
        Error::Input { row, column, .. } => {
            let err = InputError::new_err(message);
            let value = err.value(py);
            let _ = value.setattr("row", row);
            let _ = value.setattr("column", column);
            err
        }
        Error::InputFile { .. } | Error::Batch(_) => {
            let err = InputError::new_err(message);
            let value = err.value(py);
            let _ = value.setattr("row", py.None());
            let _ = value.setattr("column", py.None());
            err
        }
        _ => PepnetError::new_err(message),
    }
}

/// A model on the GPU, scoring Arrow record batches.
#[pyclass(module = "pepnet._native", frozen)]
struct Scorer {
    engine: Arc<Engine>,
    spec: ModelSpec,
    batch_size: usize,
    adapter: String,
    rows: AtomicU64,
    batches: AtomicU64,
}

#[pymethods]
impl Scorer {
    #[new]
    #[pyo3(signature = (model_dir, precision = "f32", adapter = None, batch_size = 4096,
                        cache_rows = None, store = None, store_namespace = "default",
                        degraded = false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model_dir: std::path::PathBuf,
        precision: &str,
        adapter: Option<String>,
        batch_size: usize,
        cache_rows: Option<u64>,
        store: Option<String>,
        store_namespace: &str,
        degraded: bool,
    ) -> PyResult<Self> {
        let precision: Precision = precision
            .parse()
            .map_err(|e: String| PyValueError::new_err(format!("precision: {e}")))?;
        if batch_size == 0 {
            return Err(PyValueError::new_err("batch_size: expected at least 1"));
        }
        let store = store
            .map(|url| {
                let mut o = pepnet_store_redis::RedisOptions::from_url(&url, "store")?;
                o.namespace = store_namespace.to_string();
                o.degraded = degraded;
                Ok::<_, Error>(o)
            })
            .transpose()
            .map_err(|e| to_py(py, e))?;
        let built = py.detach(|| -> pepnet_core::Result<(Engine, ModelSpec, String)> {
            let model = Model::load(&model_dir)?;
            let ctx = GpuContext::new(adapter.as_deref())?;
            let mut options = EngineOptions {
                max_batch: batch_size,
                precision,
                // A row's scores do not depend on the batch it falls in: the same as the CLI's.
                batch_invariant: true,
                ..Default::default()
            };
            if let Some(rows) = cache_rows {
                options.cache.capacity = CacheCapacity::Rows(rows);
            }
            if let Some(store) = store {
                options.cache.store = StoreSource::Open(Arc::new(store));
            }
            let adapter = ctx.info.name.clone();
            let engine = Engine::new(ctx, &model, &options)?;
            Ok((engine, model.spec, adapter))
        });
        let (engine, spec, adapter) = built.map_err(|e| to_py(py, e))?;
        Ok(Self {
            engine: Arc::new(engine),
            spec,
            adapter,
            batch_size,
            rows: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        })
    }

    /// Scores `batch` (a `pyarrow.RecordBatch` with a column per feature): the columns in
    /// `carry` (default: every column that is not a feature), then one float32 probability
    /// column per task. `source` names the input in errors; `first_row` is its first row's
    /// number there.
    #[pyo3(signature = (batch, carry = None, source = "batch", first_row = 1))]
    fn score_batch(
        &self,
        py: Python<'_>,
        batch: PyArrowType<RecordBatch>,
        carry: Option<Vec<String>>,
        source: &str,
        first_row: usize,
    ) -> PyResult<PyArrowType<RecordBatch>> {
        let record = batch.0;
        let engine = self.engine.clone();
        let (spec, batch_size) = (&self.spec, self.batch_size);
        let scored = py.detach(|| -> pepnet_core::Result<RecordBatch> {
            let schema = record.schema();
            let mut input = ArrowInput::new(spec, source, &schema, carry)?;
            input.skip_rows(first_row.saturating_sub(1));
            let mut carried_parts = Vec::new();
            let mut scores = Vec::with_capacity(record.num_rows() * spec.tasks.len());
            let mut at = 0;
            while at < record.num_rows() || at == 0 {
                let len = batch_size.min(record.num_rows() - at);
                let part = record.slice(at, len);
                let (checked, carried) = input.convert(&part)?;
                if !checked.batch().is_empty() {
                    scores.extend(engine.score_checked(&checked)?);
                }
                carried_parts.push(carried);
                at += len;
                if len == 0 {
                    break;
                }
            }
            let carried = concat_columns(carried_parts, input.carry().len())?;
            input.output(&schema, carried, &scores)
        });
        let out = scored.map_err(|e| to_py(py, e))?;
        self.rows
            .fetch_add(out.num_rows() as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        Ok(PyArrowType(out))
    }

    /// The model's task names: the output's probability columns, in order.
    #[getter]
    fn tasks(&self) -> Vec<String> {
        self.spec.tasks.clone()
    }

    /// The model's feature names: the input columns it reads.
    #[getter]
    fn features(&self) -> Vec<String> {
        self.spec.features.iter().map(|f| f.name.clone()).collect()
    }

    /// The counters so far, as JSON: rows and batches scored, and the embedding cache's
    /// statistics (hits, misses, unknown and unavailable ids per hashed feature) when the
    /// model has hashed features.
    fn stats_json(&self) -> String {
        let cache = self.engine.cache_stats();
        serde_json::json!({
            "rows": self.rows.load(Ordering::Relaxed),
            "batches": self.batches.load(Ordering::Relaxed),
            "cache": cache,
        })
        .to_string()
    }

    /// The GPU adapter the engine runs on.
    #[getter]
    fn adapter(&self) -> String {
        self.adapter.clone()
    }
}

/// Each carried column's parts, concatenated.
fn concat_columns(
    parts: Vec<Vec<arrow_array::ArrayRef>>,
    columns: usize,
) -> pepnet_core::Result<Vec<arrow_array::ArrayRef>> {
    (0..columns)
        .map(|c| {
            let arrays: Vec<&dyn arrow_array::Array> =
                parts.iter().map(|p| p[c].as_ref()).collect();
            if arrays.len() == 1 {
                return Ok(parts[0][c].clone());
            }
            arrow_select_concat(&arrays)
        })
        .collect()
}

fn arrow_select_concat(
    arrays: &[&dyn arrow_array::Array],
) -> pepnet_core::Result<arrow_array::ArrayRef> {
    arrow_select::concat::concat(arrays).map_err(|e| Error::InputFile {
        source_name: "batch".into(),
        message: format!("joining the carried columns: {e}"),
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Scorer>()?;
    m.add("InputError", m.py().get_type::<InputError>())?;
    m.add("PepnetError", m.py().get_type::<PepnetError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
