//! Typed errors. Every variant names the place (file, row, column, tensor or key) and what was
//! expected, so that a user can fix the input without reading our code.

use std::path::PathBuf;

/// Everything that can go wrong in pepnet.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The model spec (`model.json`) is malformed or inconsistent.
    #[error("{file}: {message}")]
    Spec {
        /// The spec file (or the place the spec came from).
        file: String,
        /// What is wrong, and what was expected.
        message: String,
    },

    /// A weights tensor is missing, extra, or of the wrong shape or dtype.
    #[error("{file}: tensor '{tensor}': {message}")]
    Tensor {
        /// The weights file.
        file: String,
        /// The tensor's name.
        tensor: String,
        /// What is wrong, and what was expected.
        message: String,
    },

    /// A weights file that is not a readable safetensors file.
    #[error("{file}: {message}")]
    Weights {
        /// The weights file.
        file: String,
        /// Why it could not be read.
        message: String,
    },

    /// An input value that does not fit its feature.
    #[error("{source_name}: row {row}, column '{column}': {message}")]
    Input {
        /// The input's name (its file path, or what stands for one).
        source_name: String,
        /// 1-based data row (the header is not counted).
        row: usize,
        /// The feature's column.
        column: String,
        /// What is wrong with the value, and what was expected.
        message: String,
    },

    /// A problem with the input file as a whole (missing column, unreadable header...).
    #[error("{source_name}: {message}")]
    InputFile {
        /// The input's name (its file path, or what stands for one).
        source_name: String,
        /// What is wrong, and what was expected.
        message: String,
    },

    /// A batch handed to the library API that does not match the model.
    #[error("batch: {0}")]
    Batch(String),

    /// Samples of a batch that could not be scored, each with its place and why (a
    /// probability that came out NaN or infinite, a sample needing more cached rows than the
    /// cache has). The file scorer maps them to input rows (and rejects them under
    /// `--rejects`).
    #[error("{}", describe_samples(.0))]
    Samples(Vec<SampleError>),

    /// The batcher's queue is full: the request was refused, not queued; retry later.
    #[error("overloaded: {0}")]
    Overloaded(String),

    /// A request's deadline passed before it was scored; it was not scored.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),

    /// The embedding cache or store cannot do what was asked (a batch needing more distinct
    /// rows than the cache holds, a row of the wrong width, an unknown feature).
    #[error("embedding cache: {0}")]
    Cache(String),

    /// The embedding store did not answer: a node down, slow or refusing (named, with the
    /// feature whose rows it holds).
    #[error("embedding store: {0}")]
    Store(String),

    /// The host cannot hold what a model or run needs (estimated before allocating).
    #[error("memory: {0}")]
    Memory(String),

    /// No usable GPU adapter, or the device refused what the model needs.
    #[error("gpu: {0}")]
    Gpu(String),

    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The path being read, written or created.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// One sample a batch could not score.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleError {
    /// 0-based position in the batch.
    pub sample: usize,
    /// The output or input column concerned ("" if none).
    pub column: String,
    /// What went wrong.
    pub message: String,
}

fn describe_samples(samples: &[SampleError]) -> String {
    let Some(first) = samples.first() else {
        return "batch: no sample could be scored".into();
    };
    let column = if first.column.is_empty() {
        String::new()
    } else {
        format!(", column '{}'", first.column)
    };
    let more = match samples.len() - 1 {
        0 => String::new(),
        1 => " (and 1 more sample)".into(),
        n => format!(" (and {n} more samples)"),
    };
    format!(
        "batch: sample {}{column}: {}{more}",
        first.sample + 1,
        first.message
    )
}

impl Error {
    /// A GPU error with what was being done put in front; other errors unchanged (they name
    /// their place already).
    pub fn while_doing(self, what: impl std::fmt::Display) -> Self {
        match self {
            Error::Gpu(message) => Error::Gpu(format!("{what}: {message}")),
            other => other,
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// A result whose error defaults to pepnet's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
