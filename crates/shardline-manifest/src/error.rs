//! The one public error type of the manifest crate.

/// What went wrong in the manifest step. Every message names the input at fault and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `--split` value is invalid.
    #[error("manifest: bad --split: {0}")]
    BadSplit(String),
    /// The source holds no objects.
    #[error(
        "manifest: the source {source_uri} holds no objects; lay the data out as <source>/<class_label>/<object>"
    )]
    EmptySource {
        /// The source URI.
        source_uri: String,
    },
    /// The source does not exist.
    #[error("manifest: the source {source_uri} does not exist; check the path or bucket")]
    MissingSource {
        /// The source URI.
        source_uri: String,
    },
    /// Objects sit directly under the source, without a class prefix.
    #[error(
        "manifest: {count} object(s) sit directly under {source_uri} with no class prefix (e.g. {examples}); move each into <source>/<class_label>/ or delete it"
    )]
    Unlabelled {
        /// The source URI.
        source_uri: String,
        /// How many such objects.
        count: usize,
        /// A few of their keys.
        examples: String,
    },
    /// The source has a single class prefix: nothing to classify.
    #[error(
        "manifest: the source {source_uri} has one class, {class:?}; a classifier needs at least 2: lay the data out as <source>/<class_label>/<object> with a folder per class"
    )]
    OneClass {
        /// The source URI.
        source_uri: String,
        /// The only class.
        class: String,
    },
    /// Keys that later stages would spell differently (control characters, backslashes).
    #[error(
        "manifest: {count} object(s) under {source_uri} have names with a control character (tab, newline) or a backslash, which manifests and object stores spell differently (e.g. {examples}); rename them"
    )]
    BadKeys {
        /// The source URI.
        source_uri: String,
        /// How many.
        count: usize,
        /// A few of them, quoted.
        examples: String,
    },
    /// A class has too few objects for the split and minimum.
    #[error(
        "manifest: class {class:?} has {objects} object(s), which split as {counts} — fewer than `min_per_class` {min} in some channel; lower `min_per_class`, change `split` or add data"
    )]
    TooFewObjects {
        /// The class label.
        class: String,
        /// Its object count.
        objects: usize,
        /// The counts per channel it would get.
        counts: String,
        /// The minimum asked for.
        min: usize,
    },
    /// The output already holds a different dataset.
    #[error(
        "manifest: the output {out_uri} already holds a dataset {what}; choose another `out`, or `force` to replace it"
    )]
    OutputTaken {
        /// The output URI.
        out_uri: String,
        /// How it differs.
        what: String,
    },
    /// An existing output's files do not match its lineage record.
    #[error(
        "manifest: {file} in {out_uri} does not match its lineage record (it was changed or damaged); `force` rebuilds the output from scratch"
    )]
    OutputTampered {
        /// The output URI.
        out_uri: String,
        /// The file that differs.
        file: String,
    },
    /// A manifest file or record could not be read.
    #[error(transparent)]
    Contract(#[from] shardline_contract::Error),
    /// The table could not be encoded.
    #[error("manifest: writing {file} failed: {reason}")]
    Encode {
        /// The output file.
        file: String,
        /// Why.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] shardline_store::Error),
}
