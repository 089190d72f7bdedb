//! The one public error type of the training crate.

/// What went wrong in training.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A collective failed (a rank disagreed, died or stalled).
    #[error("train: {0}")]
    Collective(#[from] shardline_comm::Error),
    /// The data could not be read or planned.
    #[error(transparent)]
    Dataset(#[from] shardline_dataset::Error),
    /// The data ran out or is inconsistent.
    #[error("train: {0}")]
    Data(String),
    /// The loss became NaN or infinite.
    #[error(
        "train: the loss became {loss} (diverging); lower `lr`. The checkpoint of the last finished epoch, if any, stays in `out` (continue with `resume`)"
    )]
    Diverged {
        /// The loss value.
        loss: f32,
    },
    /// Saved weights do not fit the model.
    #[error("train: the weights do not fit the model: {0}")]
    Weights(String),
    /// A setting is invalid (named by its library name; the CLI says which flag).
    #[error("train: {0}")]
    Setting(String),
    /// The model config is invalid.
    #[error("train: model config: {0}")]
    Config(String),
}
