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
    /// Which epoch's weights the model holds, and why (early stopping keeps the best one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<KeptEpoch>,
    /// Each file of the model directory, with its digest.
    #[serde(default)]
    pub outputs: BTreeMap<String, FileRecord>,
}

/// The epoch a model's weights come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptEpoch {
    /// The 1-based epoch.
    pub epoch: usize,
    /// Epochs run.
    pub epochs_run: usize,
    /// Why this epoch: best validation accuracy, or the last epoch (and why).
    pub reason: String,
}

impl Record for ModelLineage {
    const STEP: &'static str = "train";
}

/// `lineage.json` of a processing job that ran the user's script.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessScriptLineage {
    /// The schema version ([`SCHEMA`]).
    #[serde(default)]
    pub schema: u32,
    /// The program that wrote it.
    pub producer: String,
    /// `process`.
    pub step: String,
    /// The job digest.
    pub job: String,
    /// The script's command.
    pub script: String,
    /// The distribution rule.
    pub distribution: String,
    /// Each input: channel, URI and digest.
    pub inputs: Vec<BTreeMap<String, String>>,
    /// Per host, per channel: objects assigned and the digest of their URIs.
    pub assignment: BTreeMap<String, BTreeMap<String, (u64, Digest)>>,
    /// Every file the script wrote, by output name, with its digest.
    pub outputs: BTreeMap<String, FileRecord>,
    /// The report's digest.
    pub report: FileRecord,
}

impl Record for ProcessScriptLineage {
    const STEP: &'static str = "process";
}

/// One channel a script-mode training job read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelFiles {
    /// Where the channel came from.
    pub uri: String,
    /// Each file, by key, with its digest.
    pub files: BTreeMap<String, FileRecord>,
}

/// `lineage.json` of a script-mode training job (`shardline train --script`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScriptTrainingLineage {
    /// The schema version ([`SCHEMA`]).
    #[serde(default)]
    pub schema: u32,
    /// The program that wrote it.
    pub producer: String,
    /// `train-script`.
    pub step: String,
    /// The job digest: script, processes, hyperparameters, channels, data.
    #[serde(default)]
    pub job: String,
    /// The script as given.
    pub script: String,
    /// The command line that ran (with the hyperparameters as arguments).
    pub command: String,
    /// Processes on the host.
    pub processes_per_host: usize,
    /// The hosts.
    pub hosts: Vec<String>,
    /// The hyperparameters, numbers and booleans typed.
    pub hyperparameters: serde_json::Map<String, serde_json::Value>,
    /// The digest of the processed data's lineage record, when the channels came from one.
    pub data_lineage: Option<Digest>,
    /// Each channel, with its files.
    pub channels: BTreeMap<String, ChannelFiles>,
    /// `model.tar.gz`.
    pub model: FileRecord,
    /// `output.tar.gz`, when the program wrote output data.
    pub output: Option<FileRecord>,
}

impl Record for ScriptTrainingLineage {
    const STEP: &'static str = "train-script";
}

/// One batch-transform instance's record (`.shardline/transform/algo-<i>.json`, and a line of
/// the summary).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformInstance {
    /// `algo-<i>`.
    pub host: String,
    /// The job's identity (model, manifest, k, instances).
    pub identity: serde_json::Value,
    /// Objects in its share.
    pub objects: usize,
    /// Objects predicted.
    pub predicted: u64,
    /// Objects that could not be read.
    pub failed: u64,
    /// Seconds it ran.
    pub seconds: f64,
    /// Its predictions' key below the output.
    pub output: String,
    /// Its predictions' digest.
    pub file: FileRecord,
}

/// `summary.json` of a batch transform.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransformSummary {
    /// The schema version ([`SCHEMA`]).
    #[serde(default)]
    pub schema: u32,
    /// The program that wrote it.
    pub producer: String,
    /// `transform`.
    pub step: String,
    /// The job digest.
    pub job: String,
    /// The model's URL.
    pub model: String,
    /// The manifest's URL.
    pub manifest: String,
    /// The job's identity (model and manifest digests, k, instances).
    pub identity: serde_json::Value,
    /// Objects the manifest lists.
    pub objects: usize,
    /// Objects predicted.
    pub predicted: u64,
    /// Objects that could not be read.
    pub failed: u64,
    /// Each instance.
    pub instances: Vec<TransformInstance>,
    /// Seconds the job ran.
    pub seconds: f64,
}

impl Record for TransformSummary {
    const STEP: &'static str = "transform";
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

    #[test]
    fn every_stage_record_round_trips_and_refuses_another_steps() {
        let summary = TransformSummary {
            schema: SCHEMA,
            producer: "shardline".into(),
            step: "transform".into(),
            job: "sha256:00".into(),
            model: "model".into(),
            manifest: "m/test.manifest".into(),
            identity: serde_json::json!({"k": 5}),
            objects: 2,
            predicted: 1,
            failed: 1,
            instances: vec![TransformInstance {
                host: "algo-1".into(),
                identity: serde_json::json!({"k": 5}),
                objects: 2,
                predicted: 1,
                failed: 1,
                seconds: 0.5,
                output: "predictions/algo-1.jsonl".into(),
                file: FileRecord::of(b"x"),
            }],
            seconds: 0.5,
        };
        let bytes = encode(&summary).expect("encode");
        let back: TransformSummary = parse("summary.json", &bytes).expect("parse");
        assert_eq!(back.instances, summary.instances);
        let err = parse::<ScriptTrainingLineage>("summary.json", &bytes)
            .expect_err("a transform summary is not a training record")
            .to_string();
        assert!(err.contains("not of `shardline train-script`"), "{err}");
        let err = parse::<ProcessScriptLineage>("summary.json", &bytes)
            .expect_err("nor a process record")
            .to_string();
        assert!(err.contains("`shardline transform`"), "{err}");
    }
}
