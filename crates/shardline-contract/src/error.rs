//! The contract crate's error type.

/// A record or file that crosses a stage boundary is not what the reader needs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A manifest file could not be parsed.
    #[error("manifest: {uri} is not a valid manifest: {reason}")]
    BadManifest {
        /// The manifest's URI.
        uri: String,
        /// What is wrong.
        reason: String,
    },
    /// A manifest's keys are out of byte-wise order where a streamed share needs them in order
    /// (a reader may then read the manifest into memory and sort it).
    #[error(
        "manifest: {uri}: its keys are not sorted byte-wise ({key:?} comes after {after:?}), which a streamed share needs; sort the manifest"
    )]
    Unsorted {
        /// The manifest's URI.
        uri: String,
        /// The key out of order.
        key: String,
        /// The key before it.
        after: String,
    },
    /// A record (lineage, index, recipe, owner) cannot be read.
    #[error("{uri}: {reason}")]
    BadRecord {
        /// Where the record is.
        uri: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// An output location cannot be used by this stage.
    #[error("{stage}: `out` {uri} {reason}")]
    Refused {
        /// The stage that was asked to write there.
        stage: &'static str,
        /// The location.
        uri: String,
        /// Why, and what to do.
        reason: String,
    },
    /// A model archive could not be packed or unpacked.
    #[error("model archive: {0}")]
    Archive(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] shardline_store::Error),
}
