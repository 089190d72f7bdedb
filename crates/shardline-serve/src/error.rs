//! The one public error type of the serve crate, and the error a request is answered with.

/// What went wrong while loading a model, starting the server or running a batch transform.
/// Every message names the input at fault and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model at a URL cannot be used.
    #[error("serve: model {url}: {reason}")]
    BadModel {
        /// The model URL the user gave.
        url: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The settings are invalid.
    #[error("serve: {0}")]
    BadConfig(String),
    /// The model could not be built on its thread.
    #[error("serve: the model failed to load: {0}")]
    Load(String),
    /// A batch-transform setting is invalid (named in backticks; the CLI says which flag).
    #[error("transform: {0}")]
    Transform(String),
    /// A batch-transform input cannot be used.
    #[error("transform: input {input}: {reason}")]
    BadInput {
        /// The manifest URL or object.
        input: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// More objects failed than the error budget allows (or none was predicted).
    #[error(
        "transform: {failed} of {objects} objects failed, over the error budget of {budget}%; each failed line in {predictions} says why: fix those objects (or raise `error_budget`) and rerun"
    )]
    OverBudget {
        /// Objects that failed.
        failed: u64,
        /// Objects this process was to predict.
        objects: usize,
        /// The budget, in percent.
        budget: f64,
        /// Where the predictions (with the failed lines) are.
        predictions: String,
    },
    /// The model registry refused or failed.
    #[error("registry: {0}")]
    Registry(String),
    /// Local I/O failed (the listening socket, a file).
    #[error("serve: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A store could not be read or written.
    #[error(transparent)]
    Store(#[from] shardline_store::Error),
    /// A manifest or record could not be read.
    #[error(transparent)]
    Contract(#[from] shardline_contract::Error),
    /// The weights did not fit the model.
    #[error(transparent)]
    Train(#[from] shardline_train::Error),
}

/// Why one request was refused or failed: an HTTP status and a message that names the input at
/// fault and what to do. Both protocols answer it as `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct InferenceError {
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong, for the client.
    pub message: String,
}

impl InferenceError {
    /// A request the client must fix (400).
    pub fn bad_request(message: impl Into<String>) -> InferenceError {
        InferenceError {
            status: 400,
            message: message.into(),
        }
    }

    /// A content type this handler does not read (415).
    pub fn unsupported_media_type(message: impl Into<String>) -> InferenceError {
        InferenceError {
            status: 415,
            message: message.into(),
        }
    }

    /// An `Accept` header this handler cannot satisfy (406).
    pub fn not_acceptable(message: impl Into<String>) -> InferenceError {
        InferenceError {
            status: 406,
            message: message.into(),
        }
    }

    /// A failure on the server's side (500).
    pub fn internal(message: impl Into<String>) -> InferenceError {
        InferenceError {
            status: 500,
            message: message.into(),
        }
    }
}
