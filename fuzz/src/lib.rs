//! Shared pieces of the fuzz targets: the fixed spec they parse against and a per-process
//! scratch directory for the readers that take a path.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use pepnet_core::ModelSpec;

/// A small spec like `examples/specs/tiny.json`, with the column names of
/// `examples/kuairand/input.csv` and two hashed features (one sparse, one multi-hot).
pub const SPEC_JSON: &str = include_str!("../spec.json");

/// [`SPEC_JSON`], parsed once.
pub fn spec() -> &'static ModelSpec {
    static SPEC: OnceLock<ModelSpec> = OnceLock::new();
    SPEC.get_or_init(|| ModelSpec::from_json(SPEC_JSON, "spec.json").expect("the fuzz spec is valid"))
}

/// A directory of this process's own under `std::env::temp_dir()` (libFuzzer's fork mode and
/// parallel jobs run several processes at once).
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pepnet-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        dir
    })
}

/// Writes `data` to `name` in the scratch directory and returns its path.
pub fn scratch_file(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch_dir().join(name);
    std::fs::write(&path, data).expect("write the scratch file");
    path
}

/// A cheap, stable hash of the input (FNV-1a), so that a target can vary its reader options
/// without taking bytes off the file it parses.
pub fn hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// How a target reads an input file: options picked from the input's hash.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions {
    pub batch_size: usize,
    /// Rows that do not fit go to a rejects file instead of failing the read.
    pub rejects: bool,
    /// Carry the `tab` column through to the batches.
    pub carry: bool,
    /// Also read on two threads and compare with the one-thread read.
    pub parallel: bool,
}

impl ReadOptions {
    pub fn from_hash(h: u64) -> Self {
        Self {
            batch_size: [1, 2, 3, 5, 64][(h % 5) as usize],
            rejects: h >> 8 & 1 == 1,
            carry: h >> 9 & 1 == 1,
            parallel: h >> 10 & 1 == 1,
        }
    }
}

/// Everything a read produced: the batches end to end, the error that ended it, the rows
/// rejected and the rejects file's bytes.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub batch: pepnet_core::Batch,
    pub rows: usize,
    pub error: Option<String>,
    pub rejected: usize,
    pub rejects_file: Option<Vec<u8>>,
}

/// Reads the whole file at `path` with `threads` threads, checking what every batch promises:
/// values valid for the spec and carried columns as long as the batch.
pub fn read_input(path: &Path, o: ReadOptions, threads: usize) -> Outcome {
    let spec = spec();
    let carry: Vec<String> = if o.carry { vec!["tab".into()] } else { Vec::new() };
    let rejects_path = scratch_dir().join(format!("rejects-{threads}.csv"));
    let _ = std::fs::remove_file(&rejects_path);
    let rejects = o
        .rejects
        .then(|| pepnet_io::Rejects::create(&rejects_path).expect("create the rejects file"));
    let mut out = Outcome {
        batch: pepnet_core::Batch::new(Vec::new()),
        rows: 0,
        error: None,
        rejected: 0,
        rejects_file: None,
    };
    let mut reader =
        match pepnet_io::InputReader::open_parallel(path, spec, &carry, o.batch_size, rejects, threads) {
            Ok(r) => r,
            Err(e) => {
                out.error = Some(e.to_string());
                return out;
            }
        };
    for item in reader.by_ref() {
        match item {
            Ok(b) => {
                let n = b.batch.len();
                assert!(n > 0, "an empty batch");
                assert!(n <= o.batch_size, "a batch of {n} rows, more than {}", o.batch_size);
                b.batch
                    .validate(spec, "batch", 1)
                    .expect("a reader's batch passes Batch::validate");
                assert_eq!(b.carried.len(), carry.len());
                for c in &b.carried {
                    assert_eq!(c.len(), n, "a carried column's length");
                }
                out.rows += n;
                out.batch.append(&b.batch);
            }
            Err(e) => {
                out.error = Some(e.to_string());
                break;
            }
        }
    }
    out.rejected = reader.rejected();
    if out.error.is_none() {
        match reader.finish() {
            Ok(n) => {
                assert_eq!(n, out.rejected);
                if o.rejects {
                    out.rejects_file =
                        Some(std::fs::read(&rejects_path).expect("finish wrote the rejects file"));
                }
            }
            Err(e) => out.error = Some(e.to_string()),
        }
    }
    out
}

/// The body of the CSV and Parquet targets: writes `data` to `input.<ext>`, reads it whole
/// (and, for some inputs, on two threads, which must give the same result), then reads it as a
/// scores file (`read_number_columns`).
pub fn fuzz_input_file(data: &[u8], ext: &str) {
    tolerate_caught_decoder_panics();
    let o = ReadOptions::from_hash(hash(data));
    // Seven inputs in eight are read from memory only (`InputReader::from_bytes`, no file, one
    // thread: many times faster); the eighth also through a file, with the checks below.
    read_memory(data, ext, o);
    if hash(data) >> 16 & 7 != 0 {
        return;
    }
    let path = scratch_file(&format!("input.{ext}"), data);
    let one = read_input(&path, o, 1);
    if o.parallel {
        let two = read_input(&path, o, 2);
        // Batch boundaries may differ, and so may the rows delivered before an error (a run
        // that fails keeps no output); whether the read fails, and a whole read's rows and
        // rejects, may not. CSV errors must match word for word; a corrupt Parquet file's need
        // not, as a part reader decodes each row group on its own and the Parquet decoder then
        // trips over the damage at another place (fuzz/findings/parquet_input/divergence-*).
        if ext == "csv" {
            assert_eq!(one.error, two.error, "one and two threads fail differently ({o:?})");
        } else {
            assert_eq!(
                one.error.is_some(),
                two.error.is_some(),
                "one thread and two: only one fails ({o:?}): {:?} / {:?}",
                one.error,
                two.error
            );
        }
        if one.error.is_none() {
            assert_eq!(one, two, "one and two threads read differently ({o:?})");
        }
    }
    let _ = pepnet_io::read_number_columns(&path, &["click".to_string(), "like".to_string()]);
}

/// Where the last decoder panic of the current input was raised.
static LAST_DECODER_PANIC: std::sync::Mutex<Option<(String, std::backtrace::Backtrace)>> =
    std::sync::Mutex::new(None);

/// libFuzzer's panic hook aborts on every panic, even one caught further up. The readers catch
/// a panic raised inside the Parquet or Arrow decoders (a damaged file can trigger one) and turn
/// it into an error naming the file, so such a panic is not a crash of this crate: the hook lets
/// it unwind to that catch, remembering where it was raised. Any other panic aborts at once. A
/// decoder panic that no reader catches reaches libFuzzer's entry point, which cannot unwind: that
/// second panic aborts too, after the remembered decoder panic is printed.
///
/// Called before each input; the first call installs the hook.
pub fn tolerate_caught_decoder_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    *LAST_DECODER_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = None;
    ONCE.call_once(|| {
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_decoder = info.location().is_some_and(|l| {
                let file = l.file();
                ["/parquet-", "/arrow-"].iter().any(|c| file.contains(c))
            });
            let mut last = LAST_DECODER_PANIC.lock().unwrap_or_else(|e| e.into_inner());
            if in_decoder {
                let what = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let at = info.location().map(|l| l.to_string()).unwrap_or_default();
                let trace = std::backtrace::Backtrace::force_capture();
                *last = Some((format!("{at}: {what}"), trace));
                return;
            }
            if let Some((decoder, trace)) = last.take() {
                eprintln!(
                    "the last decoder panic before this one, which nothing caught: {decoder}\n{trace}"
                );
            }
            drop(last);
            fuzzer_hook(info);
        }));
    });
}

/// Reads `data` from memory as a `.ext` file, checking every batch as [`read_input`] does.
fn read_memory(data: &[u8], ext: &str, o: ReadOptions) {
    let spec = spec();
    let format = if ext == "csv" {
        pepnet_io::Format::Csv
    } else {
        pepnet_io::Format::Parquet
    };
    let carry: Vec<String> = if o.carry { vec!["tab".into()] } else { Vec::new() };
    let Ok(reader) = pepnet_io::InputReader::from_bytes(
        "input",
        data.to_vec(),
        format,
        spec,
        &carry,
        o.batch_size,
        None,
    ) else {
        return;
    };
    for item in reader {
        let Ok(b) = item else { break };
        let n = b.batch.len();
        assert!(n > 0 && n <= o.batch_size, "a batch of {n} rows (batch size {})", o.batch_size);
        b.batch
            .validate(spec, "batch", 1)
            .expect("a reader's batch passes Batch::validate");
        assert!(b.carried.iter().all(|c| c.len() == n), "a carried column's length");
    }
}
