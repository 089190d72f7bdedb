//! The manifest step's lineage record, `lineage.json`, and the label file, `labels.json`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shardline_lineage::{Digest, FileRecord};

/// The rule by which objects are dealt to channels, recorded so that a reader can recompute it.
pub const ASSIGNMENT_RULE: &str = "per class: u = xxh3_64_with_seed(key, seed) / 2^64 picks the channel interval in split order (train, validation, test); objects of an earlier run at this output keep their channel; counts corrected to floor or ceil of n*fraction (and at least min_per_class) by moving the free objects nearest the target interval";

/// The settings that make a dataset what it is. Two runs with the same settings over the same
/// listing write byte-identical outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The seed of the channel hash.
    pub seed: u64,
    /// Channel fractions, in canonical order.
    pub split: BTreeMap<String, f64>,
    /// The minimum objects per class per channel.
    pub min_per_class: usize,
    /// Whether augmented manifests were written.
    pub augmented: bool,
}

/// What was listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListingRecord {
    /// Objects in the dataset.
    pub objects: u64,
    /// Classes found.
    pub classes: u64,
    /// Total bytes.
    pub bytes: u64,
    /// SHA-256 over the sorted `key NUL size NUL etag LF` lines.
    pub digest: Digest,
}

/// `lineage.json`: where the dataset came from, how it was split, and what was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestLineage {
    /// The schema version (`shardline_contract::lineage::SCHEMA`; records written before it
    /// existed read as 0).
    #[serde(default)]
    pub schema: u32,
    /// The program that wrote it.
    pub producer: String,
    /// The step: `manifest`.
    pub step: String,
    /// The source URI, ending in `/`.
    pub source: String,
    /// The settings.
    pub settings: Settings,
    /// The assignment rule.
    pub assignment_rule: String,
    /// What was listed.
    pub listing: ListingRecord,
    /// Objects per class per channel.
    pub counts: BTreeMap<String, BTreeMap<String, u64>>,
    /// Objects per channel.
    pub totals: BTreeMap<String, u64>,
    /// Each output file of the step, by name.
    pub outputs: BTreeMap<String, FileRecord>,
    /// The digest of the `lineage.json` this output replaced, when it was an update.
    pub previous: Option<Digest>,
}

impl shardline_contract::lineage::Record for ManifestLineage {
    const STEP: &'static str = "manifest";
}

/// `labels.json`: label names by id, and ids by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Labels {
    /// Label names; the id of a label is its position.
    pub classes: Vec<String>,
    /// Label ids by name.
    pub ids: BTreeMap<String, u32>,
}

impl Labels {
    /// Encodes sorted, distinct label names.
    pub fn new(classes: Vec<String>) -> Labels {
        let ids = classes
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), i as u32))
            .collect();
        Labels { classes, ids }
    }
}

/// Serialises a record as pretty JSON with a final newline.
pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}
