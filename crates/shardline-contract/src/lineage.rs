//! The lineage records stages hand each other (`lineage.json`), typed and versioned: written and
//! read through the same types, so a reader never picks fields out of untyped JSON. A record says
//! which step wrote it (`step`) and its schema version (`schema`); a record of another step, or of
//! a newer schema than this build reads, is refused with a message that says so. Records written
//! before the field existed read as schema 0, whose fields are a subset of schema 1's.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shardline_lineage::{Digest, FileRecord};

use crate::Error;
use crate::recipe::Recipe;

/// The newest schema this build writes and reads.
pub const SCHEMA: u32 = 1;

/// A stage's lineage record.
pub trait Record: Serialize + DeserializeOwned {
    /// The `step` field of this kind of record.
    const STEP: &'static str;
}

/// Reads a record of kind `T` from `bytes`; `uri` names it in errors.
pub fn parse<T: Record>(uri: &str, bytes: &[u8]) -> Result<T, Error> {
    let bad = |reason: String| Error::BadRecord {
        uri: uri.to_string(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("is not JSON ({e})")))?;
    let step = value.get("step").and_then(|s| s.as_str()).unwrap_or("");
    if step != T::STEP {
        return Err(bad(format!(
            "is the lineage record of {}, not of `shardline {}`; give the output of `shardline {}`",
            if step.is_empty() {
                "no Shardline step".to_string()
            } else {
                format!("`shardline {step}`")
            },
            T::STEP,
            T::STEP
        )));
    }
    let schema = value.get("schema").and_then(|s| s.as_u64()).unwrap_or(0);
    if schema > u64::from(SCHEMA) {
        return Err(bad(format!(
            "was written by a newer Shardline (lineage schema {schema}; this one reads up to {SCHEMA}); upgrade shardline to read it"
        )));
    }
    serde_json::from_value(value)
        .map_err(|e| bad(format!("is not a valid {} record ({e})", T::STEP)))
}

/// Encodes a record as pretty JSON with a final newline. Serialising these types cannot lose
/// data; an error (a map with non-string keys, say) is returned, never an empty file.
pub fn encode<T: Serialize>(record: &T) -> Result<Vec<u8>, Error> {
    let mut bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::BadRecord {
        uri: "lineage record".into(),
        reason: format!("cannot be encoded ({e})"),
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// `lineage.json` of a processing job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessLineage {
    /// The schema version ([`SCHEMA`]).
    #[serde(default)]
    pub schema: u32,
    /// The program that wrote it.
    pub producer: String,
    /// `process`.
    pub step: String,
    /// The job digest.
    pub job: String,
    /// Each input: channel, URI and digest.
    pub inputs: Vec<BTreeMap<String, String>>,
    /// The distribution rule.
    pub distribution: String,
    /// Instances.
    pub instances: usize,
    /// Per instance and channel: objects assigned and the digest of their URIs in order.
    pub assignment: BTreeMap<String, BTreeMap<String, (u64, String)>>,
    /// The recipe.
    pub recipe: Recipe,
    /// The channels the recipe's augmentations were applied to (empty without augmentations).
    #[serde(default)]
    pub augment_channels: Vec<String>,
    /// The augmentations' seed: with the recipe and the inputs, it reproduces every tensor.
    #[serde(default)]
    pub seed: u64,
    /// Label names by id.
    pub labels: Vec<String>,
    /// The index, recipe and report files, with digests.
    pub outputs: BTreeMap<String, FileRecord>,
}

impl Record for ProcessLineage {
    const STEP: &'static str = "process";
}

/// `lineage.json` of a model directory written by `shardline train`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelLineage {
    /// The schema version ([`SCHEMA`]).
    #[serde(default)]
    pub schema: u32,
    /// The program that wrote it.
    pub producer: String,
    /// `train`.
    pub step: String,
    /// The training job's digest: data, model, settings and workers.
    #[serde(default)]
    pub job: String,
    /// The processed data it was trained on.
    pub data: String,
    /// The digest of that data's lineage record.
    pub data_lineage: Digest,
    /// Data-parallel workers (or MPI ranks).
    pub workers: usize,
    /// The training settings.
    pub settings: serde_json::Value,
    /// The model config.
    pub model: serde_json::Value,
    /// Accuracy on the test channel, when there is one.
    pub test_accuracy: Option<f64>,
    /// Each file of the model directory, with its digest.
    #[serde(default)]
    pub outputs: BTreeMap<String, FileRecord>,
}

impl Record for ModelLineage {
    const STEP: &'static str = "train";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process_record(extra: serde_json::Value) -> Vec<u8> {
        let mut value = serde_json::json!({
            "producer": "shardline", "step": "process", "job": "sha256:00", "inputs": [],
            "distribution": "x", "instances": 1, "assignment": {},
            "recipe": Recipe::new(8, 8, crate::recipe::Mode::Gray), "labels": ["a"], "outputs": {}
        });
        for (k, v) in extra.as_object().expect("object") {
            value[k] = v.clone();
        }
        serde_json::to_vec(&value).expect("json")
    }

    #[test]
    fn records_round_trip_and_older_schemas_read() {
        let old = parse::<ProcessLineage>("l", &process_record(serde_json::json!({})))
            .expect("schema 0 reads");
        assert_eq!(old.schema, 0);
        let mut new = old.clone();
        new.schema = SCHEMA;
        let back: ProcessLineage = parse("l", &encode(&new).expect("encode")).expect("parse");
        assert_eq!(back.schema, SCHEMA);
        assert_eq!(back.labels, vec!["a"]);
    }

    #[test]
    fn newer_schemas_and_other_steps_are_refused_by_name() {
        let err = parse::<ProcessLineage>(
            "x/lineage.json",
            &process_record(serde_json::json!({"schema": 99})),
        )
        .expect_err("newer")
        .to_string();
        assert!(
            err.contains("newer Shardline") && err.contains("x/lineage.json"),
            "{err}"
        );
        let err = parse::<ModelLineage>("x/lineage.json", &process_record(serde_json::json!({})))
            .expect_err("other step")
            .to_string();
        assert!(
            err.contains("`shardline process`, not of `shardline train`"),
            "{err}"
        );
    }
}
