//! The SageMaker container contract, implemented once for every user program Shardline runs:
//! a processing script (`shardline process --script`, SageMaker Processing's layout under
//! `/opt/ml/processing`) and a training program (`shardline train --script`, the training
//! toolkit's layout under `/opt/ml/input`, `/opt/ml/model`, `/opt/ml/output`).
//!
//! [`files`] materialises inputs, writes the config files and collects the outputs; [`program`]
//! runs the user's command (its output relayed and logged, its failure file read, the program
//! dying with its parent); [`training`] is the training stage's script mode as one call;
//! [`hosts`] is Shardline itself as a training container on several SageMaker instances (the
//! first starts `mpirun` over them, the others wait for it); [`kubernetes`] writes the launch
//! files that run Shardline's stages on Kubernetes.

pub mod files;
pub mod hosts;
pub mod kubernetes;
pub mod program;
pub mod training;

/// What went wrong running a user's program. Every message names the input at fault and what
/// to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid (the CLI names its flag).
    #[error("{stage}: `{setting}`: {reason}")]
    Setting {
        /// The stage (`train`, `process`).
        stage: &'static str,
        /// The setting's name.
        setting: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
    /// An input cannot be used.
    #[error("{stage}: {input}: {reason}")]
    BadInput {
        /// The stage.
        stage: &'static str,
        /// The input.
        input: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The user's program failed.
    #[error("{stage}: the script failed ({status}){message}; its log is {log}")]
    Failed {
        /// The stage.
        stage: &'static str,
        /// How it ended.
        status: String,
        /// `: <its failure file>`, or empty.
        message: String,
        /// Where its log is.
        log: String,
    },
    /// The program could not be started.
    #[error("{stage}: cannot start {program}: {source}; {hint}")]
    Start {
        /// The stage.
        stage: &'static str,
        /// The program.
        program: String,
        /// The OS error.
        source: std::io::Error,
        /// What to do.
        hint: String,
    },
    /// Local I/O failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A record could not be written or read.
    #[error(transparent)]
    Contract(#[from] shardline_contract::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] shardline_store::Error),
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
