//! The one public error type of the process crate.

/// What went wrong in a processing job. Every message names the input at fault and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input was given badly or cannot be used.
    #[error("process: input {input}: {reason}")]
    BadInput {
        /// The `--input` value or manifest URI.
        input: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The settings are invalid.
    #[error("process: {0}")]
    BadConfig(String),
    /// One setting is invalid (the CLI names its flag).
    #[error("process: `{setting}`: {reason}")]
    Setting {
        /// The setting, as `ProcessConfig` names it.
        setting: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The launcher's identity is inconsistent.
    #[error("process: instance identity: {0}")]
    Identity(String),
    /// An instance failed.
    #[error(
        "process: instance {host} failed after {attempts} attempt(s): {reason}; its log is {log}"
    )]
    InstanceFailed {
        /// The instance's host name.
        host: String,
        /// Attempts made.
        attempts: usize,
        /// The last failure.
        reason: String,
        /// Where its log is.
        log: String,
    },
    /// Too many objects could not be processed.
    #[error(
        "process: {failed} of {total} objects could not be processed ({rate:.3}%), above the error budget of {budget:.3}%; see the quarantine lists in {report}"
    )]
    OverBudget {
        /// Objects quarantined.
        failed: u64,
        /// Objects assigned.
        total: u64,
        /// Percentage failed.
        rate: f64,
        /// The budget, in percent.
        budget: f64,
        /// The report's URI.
        report: String,
    },
    /// Waiting for other instances timed out.
    #[error(
        "process: waited {seconds}s for instance(s) {missing} to finish; check their logs under {logs}"
    )]
    Timeout {
        /// How long rank 0 waited.
        seconds: u64,
        /// Instances that did not finish.
        missing: String,
        /// Where the logs are.
        logs: String,
    },
    /// A user script failed.
    #[error("process: the script failed on {host}: {reason}")]
    Script {
        /// The instance.
        host: String,
        /// Exit status and message.
        reason: String,
    },
    /// Local I/O failed.
    #[error("process: {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A manifest or record could not be read.
    #[error(transparent)]
    Contract(#[from] shardline_contract::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] shardline_store::Error),
    /// The container layout could not be written or read.
    #[error(transparent)]
    Container(#[from] shardline_container::Error),
}

impl Error {
    /// An I/O error at a local path.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}
