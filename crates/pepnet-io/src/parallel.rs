//! Reading one file on several threads. Each thread opens its own reader of the file and takes
//! every `threads`-th unit of it (CSV: chunks of `batch_size` records, whose records it splits
//! but does not parse when they are another thread's; Parquet: row groups), parses and checks
//! its units' values, and hands batches and rejected rows to the consumer through a small
//! channel. The consumer takes unit 0 from thread 0, unit 1 from thread 1, and so on, so batches,
//! rejected rows and the first error come out in file order, as from one reader.
//!
//! Memory: each thread may run one unit ahead of the consumer (its channel holds a whole unit, so
//! that it can read while the consumer drains the other threads' units), besides the unit it is
//! reading: a few batches for CSV, two row groups for Parquet.

use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use super::{decoder_panic, InputBatch, InputReader, Part, Rejects, UnitItem};
use pepnet_core::error::{Error, Result};
use pepnet_core::spec::ModelSpec;

/// Units a thread may read ahead of the consumer, besides the one it is reading.
const AHEAD: usize = 1;

/// The most items one reader thread may have waiting (batches of a huge row group beyond it
/// wait for the consumer).
const MAX_AHEAD_ITEMS: usize = 256;

/// What a part thread sends.
enum Message {
    Item(UnitItem),
    Failed(Error),
    /// The thread's part of the file is read to its end.
    Done,
}

/// Batches of one file read by several threads, in file order.
pub struct ParallelReader {
    receivers: Vec<Receiver<Message>>,
    threads: Vec<JoinHandle<()>>,
    /// The unit being delivered; its thread is `unit % receivers.len()`.
    unit: usize,
    rejects: Option<Rejects>,
    done: bool,
    /// The file, for errors.
    name: String,
}

impl ParallelReader {
    pub(super) fn open(
        path: &Path,
        spec: &ModelSpec,
        carry: &[String],
        batch_size: usize,
        rejects: Option<Rejects>,
        threads: usize,
    ) -> Result<Self> {
        let collect = rejects.is_some();
        // Open every part here, so that a missing column or an unreadable file fails at once.
        let parts = (0..threads)
            .map(|index| {
                let part = Part {
                    index,
                    count: threads,
                };
                InputReader::open_part(path, spec, carry, batch_size, collect, part)
            })
            .collect::<Result<Vec<_>>>()?;
        let name = path.display().to_string();
        let mut receivers = Vec::new();
        let mut handles = Vec::new();
        for (index, mut part) in parts.into_iter().enumerate() {
            // Room to read ahead a whole unit, within reason: a channel's slots are allocated
            // up front, and a reader blocked on a full channel only waits for its turn.
            let (tx, rx) = sync_channel((AHEAD * part.max_items_per_unit()).min(MAX_AHEAD_ITEMS));
            receivers.push(rx);
            let name = name.clone();
            let handle = std::thread::Builder::new()
                .name(format!("pepnet-reader-{index}"))
                .spawn(move || loop {
                    let mut emit = |item| tx.send(Message::Item(item)).is_ok();
                    // A panic inside a decoding library (a damaged file can cause one) is an
                    // error of this file, not a thread that silently ends the read early.
                    let unit = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        part.next_unit(&mut emit)
                    }))
                    .unwrap_or_else(|panic| Err(decoder_panic(&name, &*panic)));
                    match unit {
                        Ok(true) => continue,
                        Ok(false) => {
                            let _ = tx.send(Message::Done);
                            break;
                        }
                        Err(e) => {
                            let _ = tx.send(Message::Failed(e));
                            break;
                        }
                    }
                })
                .map_err(|e| Error::io(path, e))?;
            handles.push(handle);
        }
        Ok(Self {
            receivers,
            threads: handles,
            unit: 0,
            rejects,
            done: false,
            name,
        })
    }

    /// Rows written to the rejects file so far.
    pub fn rejected(&self) -> usize {
        self.rejects.as_ref().map_or(0, Rejects::count)
    }

    /// Ends the read: moves the rejects file into place. Call only when the whole run succeeded.
    pub fn finish(self) -> Result<usize> {
        self.into_rejects().map_or(Ok(0), Rejects::finish)
    }

    pub(crate) fn into_rejects(mut self) -> Option<Rejects> {
        self.rejects.take()
    }

    fn next_batch(&mut self) -> Option<Result<InputBatch>> {
        while !self.done {
            let thread = self.unit % self.receivers.len();
            match self.receivers[thread].recv() {
                Ok(Message::Item(UnitItem::Batch(b))) => return Some(Ok(b)),
                Ok(Message::Item(UnitItem::Rejected(rows))) => {
                    let rejects = self
                        .rejects
                        .as_mut()
                        .expect("rows are collected for a file");
                    for r in rows {
                        if let Err(e) = rejects.add(r.row, &r.column, &r.value, &r.reason) {
                            self.done = true;
                            return Some(Err(e));
                        }
                    }
                }
                Ok(Message::Item(UnitItem::End)) => self.unit += 1,
                Ok(Message::Failed(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                // The thread whose turn it is has no unit left: neither has any other.
                Ok(Message::Done) => self.done = true,
                // Gone without saying so: it failed, and the file was not read to its end.
                Err(_) => {
                    self.done = true;
                    return Some(Err(Error::InputFile {
                        source_name: self.name.clone(),
                        message: "a reader thread stopped before the end of the file".into(),
                    }));
                }
            }
        }
        None
    }
}

impl Iterator for ParallelReader {
    type Item = Result<InputBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch()
    }
}

impl Drop for ParallelReader {
    fn drop(&mut self) {
        // Dropping the receivers makes every thread's next send fail, so each stops after the
        // unit it is reading.
        self.receivers.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
