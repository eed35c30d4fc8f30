//! Training data read from files as it is used, so that it may be larger than memory: one or
//! more CSV / Parquet files, read in chunks, shuffled within a bounded window of rows.
//!
//! Each epoch is one pass over the files (in name order, or in an order shuffled by
//! seed + epoch). The pass is cut into windows of `window` rows; each window's rows are
//! shuffled (the window's own stream of the epoch's seed) and the epoch's samples are the
//! windows one after another, cut into batches. Memory holds one window and one chunk. Step s
//! of an epoch always takes the same samples, so a resumed run reopens the files at window
//! ⌊s·B / W⌋ and goes on bit for bit. With one file and a window at least as large as the file,
//! the order is the in-memory trainer's (the window is shuffled with the epoch's seed exactly
//! as the whole file is there).

use std::path::PathBuf;

use arrow_array::{Array, Float64Array};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use pepnet_core::batch::Batch;
use pepnet_core::error::{Error, Result};
use pepnet_core::spec::ModelSpec;
use pepnet_io::{InputBatch, InputReader};

use crate::checkpoint::{fnv1a, FNV_START};
use crate::data::{Batches, LabelledData, TrainingData};

/// Rows read from a file at a time.
const CHUNK_ROWS: usize = 65536;

/// Labelled files streamed in windows (see the module's notes).
#[derive(Debug, Clone)]
pub struct StreamedData {
    files: Vec<PathBuf>,
    /// Per file, its rows.
    rows: Vec<u64>,
    spec: ModelSpec,
    label_columns: Vec<String>,
    window: usize,
}

impl StreamedData {
    /// Opens `files` and counts their rows (one pass, checking every feature value and label,
    /// so that bad data fails before training starts, naming file, row and column).
    pub fn open(
        files: Vec<PathBuf>,
        spec: &ModelSpec,
        label_columns: &[String],
        window: usize,
    ) -> Result<Self> {
        if files.is_empty() {
            return Err(Error::Batch("no training files".into()));
        }
        if window == 0 {
            return Err(Error::Batch(
                "the shuffle window must be at least 1 row".into(),
            ));
        }
        let mut data = Self {
            files,
            rows: Vec::new(),
            spec: spec.clone(),
            label_columns: label_columns.to_vec(),
            window,
        };
        for i in 0..data.files.len() {
            let mut rows = 0u64;
            for chunk in data.reader(i)? {
                rows += data.labelled(i, chunk?)?.len() as u64;
            }
            if rows == 0 {
                return Err(Error::Batch(format!(
                    "{}: no rows to train on",
                    data.files[i].display()
                )));
            }
            data.rows.push(rows);
        }
        Ok(data)
    }

    /// The files, in name order, and their rows.
    pub fn files(&self) -> impl Iterator<Item = (&PathBuf, u64)> {
        self.files.iter().zip(self.rows.iter().copied())
    }

    fn reader(&self, file: usize) -> Result<InputReader> {
        InputReader::open(
            &self.files[file],
            &self.spec,
            &self.label_columns,
            CHUNK_ROWS,
            None,
        )
    }

    /// A chunk of file `file` with its labels (the carried label columns, each 0 or 1).
    fn labelled(&self, file: usize, chunk: InputBatch) -> Result<LabelledData> {
        let t = self.label_columns.len();
        let n = chunk.batch.len();
        let mut labels = vec![0.0f32; n * t];
        for (k, (array, name)) in chunk.carried.iter().zip(&self.label_columns).enumerate() {
            let values = arrow_cast::cast(array, &arrow_schema::DataType::Float64)
                .map_err(|e| self.label_error(file, chunk.rows[0], name, &e.to_string()))?;
            let values = values
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("cast to Float64 gives Float64Array");
            for i in 0..n {
                let y = if values.is_null(i) {
                    f64::NAN
                } else {
                    values.value(i)
                };
                if y != 0.0 && y != 1.0 {
                    return Err(self.label_error(
                        file,
                        chunk.rows[i],
                        name,
                        &format!("a label is 0 or 1, found {y}"),
                    ));
                }
                labels[i * t + k] = y as f32;
            }
        }
        Ok(LabelledData {
            batch: chunk.batch,
            labels,
            tasks: t,
        })
    }

    fn label_error(&self, file: usize, row: usize, column: &str, message: &str) -> Error {
        Error::Batch(format!(
            "{}: row {row}, column '{column}': {message}",
            self.files[file].display()
        ))
    }

    /// The epoch's order of the files.
    fn file_order(&self, epoch: u64, seed: u64, shuffle: bool) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.files.len()).collect();
        if shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(epoch));
            // A stream of its own: window 0 uses stream 0 of the same seed.
            rng.set_stream(u64::MAX);
            order.shuffle(&mut rng);
        }
        order
    }
}

/// Reads an epoch's rows in order, across files.
struct RowCursor<'a> {
    data: &'a StreamedData,
    order: Vec<usize>,
    /// Position in `order` of the file being read.
    next_file: usize,
    reader: Option<(usize, InputReader)>,
    pending: Option<LabelledData>,
}

impl<'a> RowCursor<'a> {
    fn new(data: &'a StreamedData, order: Vec<usize>) -> Self {
        Self {
            data,
            order,
            next_file: 0,
            reader: None,
            pending: None,
        }
    }

    /// The next chunk of rows, or `None` at the end of the epoch's files.
    fn chunk(&mut self) -> Result<Option<LabelledData>> {
        if let Some(p) = self.pending.take() {
            return Ok(Some(p));
        }
        loop {
            if let Some((file, reader)) = &mut self.reader {
                match reader.next() {
                    Some(chunk) => {
                        let file = *file;
                        return self.data.labelled(file, chunk?).map(Some);
                    }
                    None => self.reader = None,
                }
            }
            let Some(&file) = self.order.get(self.next_file) else {
                return Ok(None);
            };
            self.next_file += 1;
            self.reader = Some((file, self.data.reader(file)?));
        }
    }

    /// Skips `rows` rows: whole files by their counts, then chunks.
    fn skip(&mut self, mut rows: u64) -> Result<()> {
        while let Some(&file) = self.order.get(self.next_file) {
            if self.reader.is_some() || self.data.rows[file] > rows {
                break;
            }
            rows -= self.data.rows[file];
            self.next_file += 1;
        }
        while rows > 0 {
            let Some(chunk) = self.chunk()? else {
                break;
            };
            let n = chunk.len() as u64;
            if n > rows {
                let rest: Vec<usize> = (rows as usize..n as usize).collect();
                self.pending = Some(chunk.take_labelled(&rest));
                rows = 0;
            } else {
                rows -= n;
            }
        }
        Ok(())
    }

    /// The next `n` rows (fewer at the end of the epoch).
    fn read(&mut self, n: usize) -> Result<Option<LabelledData>> {
        let mut out: Option<LabelledData> = None;
        while out.as_ref().map_or(0, LabelledData::len) < n {
            let Some(chunk) = self.chunk()? else {
                break;
            };
            let have = out.as_ref().map_or(0, LabelledData::len);
            let want = n - have;
            let chunk = if chunk.len() > want {
                let (head, tail) = chunk.split_at(want);
                self.pending = Some(tail);
                head
            } else {
                chunk
            };
            match &mut out {
                Some(o) => o.append(&chunk),
                None => out = Some(chunk),
            }
        }
        Ok(out)
    }
}

/// An epoch's batches: windows read, shuffled and cut.
struct WindowBatches<'a> {
    cursor: RowCursor<'a>,
    epoch: u64,
    seed: u64,
    shuffle: bool,
    batch_size: usize,
    /// The window being taken, shuffled, and how many of its samples are taken.
    window: Option<(LabelledData, Vec<usize>, usize)>,
    next_window: u64,
}

impl WindowBatches<'_> {
    fn load_window(&mut self) -> Result<bool> {
        let Some(rows) = self.cursor.read(self.cursor.data.window)? else {
            return Ok(false);
        };
        let mut order: Vec<usize> = (0..rows.len()).collect();
        if self.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed.wrapping_add(self.epoch));
            rng.set_stream(self.next_window);
            order.shuffle(&mut rng);
        }
        self.next_window += 1;
        self.window = Some((rows, order, 0));
        Ok(true)
    }

    fn next_batch(&mut self) -> Result<Option<(Batch, Vec<f32>)>> {
        let mut out: Option<LabelledData> = None;
        while out.as_ref().map_or(0, LabelledData::len) < self.batch_size {
            let exhausted = self
                .window
                .as_ref()
                .is_none_or(|(_, order, taken)| *taken == order.len());
            if exhausted && !self.load_window()? {
                break;
            }
            let (rows, order, taken) = self.window.as_mut().expect("a window is loaded");
            let want = self.batch_size - out.as_ref().map_or(0, LabelledData::len);
            let end = (*taken + want).min(order.len());
            let part = rows.take_labelled(&order[*taken..end]);
            *taken = end;
            match &mut out {
                Some(o) => o.append(&part),
                None => out = Some(part),
            }
        }
        Ok(out.map(|o| (o.batch, o.labels)))
    }
}

impl TrainingData for StreamedData {
    fn len(&self) -> usize {
        self.rows.iter().sum::<u64>() as usize
    }

    fn tasks(&self) -> usize {
        self.label_columns.len()
    }

    fn fingerprint(&self) -> String {
        // Names and row counts: the contents are too large to hash on every resume.
        let mut h = FNV_START;
        for (f, rows) in self.files() {
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
            h = fnv1a(
                h,
                name.unwrap_or_default().bytes().chain(rows.to_le_bytes()),
            );
        }
        format!("files:{h:016x}")
    }

    fn check(&self, spec: &ModelSpec) -> Result<()> {
        if self.tasks() != spec.n_tasks() {
            return Err(Error::Batch(format!(
                "training data: labels of {} tasks; the model has {}",
                self.tasks(),
                spec.n_tasks()
            )));
        }
        Ok(())
    }

    fn batches<'a>(
        &'a self,
        epoch: u64,
        first_step: usize,
        batch_size: usize,
        seed: u64,
        shuffle: bool,
    ) -> Result<Batches<'a>> {
        let order = self.file_order(epoch, seed, shuffle);
        let start = first_step as u64 * batch_size as u64;
        let window = self.window as u64;
        let mut batches = WindowBatches {
            cursor: RowCursor::new(self, order),
            epoch,
            seed,
            shuffle,
            batch_size,
            window: None,
            next_window: start / window,
        };
        // Resume: reopen at the window holding the first sample, and take up to it.
        batches.cursor.skip(start / window * window)?;
        let within = (start % window) as usize;
        if within > 0 && batches.load_window()? {
            if let Some((_, _, taken)) = batches.window.as_mut() {
                *taken = within;
            }
        }
        Ok(Box::new(std::iter::from_fn(move || {
            batches.next_batch().transpose()
        })))
    }
}
