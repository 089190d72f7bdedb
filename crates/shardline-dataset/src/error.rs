//! The one public error type of the dataset crate.

/// What went wrong while planning or reading training data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shards cannot give every rank a batch.
    #[error(
        "dataset: {ranks} rank(s) with batch {batch} need at least {needed} samples per rank, but rank {rank} gets only {samples}; lower the batch size or the number of workers, or process more data"
    )]
    TooFewSamples {
        /// The world size.
        ranks: usize,
        /// The per-rank batch size.
        batch: usize,
        /// Samples needed per rank.
        needed: usize,
        /// The short rank.
        rank: usize,
        /// What it gets.
        samples: u64,
    },
    /// A shard or sample is malformed.
    #[error("dataset: {shard}: {reason}")]
    BadShard {
        /// The shard's URL.
        shard: String,
        /// What is wrong.
        reason: String,
    },
    /// The sample does not match the recipe.
    #[error(
        "dataset: {shard}: sample {sample} has shape {found:?}, the recipe says {expected:?}; were these shards made with another recipe?"
    )]
    WrongShape {
        /// The shard.
        shard: String,
        /// The sample's basename.
        sample: String,
        /// Its shape.
        found: Vec<usize>,
        /// The recipe's shape.
        expected: Vec<usize>,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] shardline_store::Error),
}
