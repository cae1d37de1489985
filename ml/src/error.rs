//! Error types of the ML layer.

/// A dataset could not be read or used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("{file}: {message}")]
    Io {
        /// The file.
        file: String,
        /// What went wrong.
        message: String,
    },
    /// A line is malformed.
    #[error("{file}:{line}: {problem}")]
    Parse {
        /// The file.
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// The file has no rows.
    #[error("{file}: no data rows")]
    Empty {
        /// The file.
        file: String,
    },
    /// The data does not fit the request.
    #[error("{0}")]
    Invalid(String),
}

/// Training failed, or could not start.
#[derive(Debug, thiserror::Error)]
pub enum MlError {
    /// Bad data.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A bad configuration value.
    #[error("{0}")]
    Config(String),
    /// The requested device is not available in this build or on this host.
    #[error("device `{device}` is not available: {reason}")]
    Device {
        /// The device asked for.
        device: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A tensor or parameter has the wrong shape.
    #[error("shape mismatch in {what}: expected {expected:?}, got {actual:?}")]
    Shape {
        /// What was being checked.
        what: String,
        /// The shape that fits.
        expected: Vec<usize>,
        /// The shape received.
        actual: Vec<usize>,
    },
    /// Reading or writing a checkpoint failed.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The file or directory.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// An actor of the training job could not be reached or failed.
    #[error("{0}")]
    Actor(String),
}
