//! The training stage's script mode: the user's own training program (TensorFlow, PyTorch,
//! Horovod...) run unchanged under the SageMaker training toolkit's environment:
//!
//! - each channel downloaded to `<root>/input/data/<channel>/` and named by `SM_CHANNEL_<NAME>`;
//! - `<root>/input/config/{hyperparameters,resourceconfig,inputdataconfig}.json`;
//! - `SM_MODEL_DIR=<root>/model`, `SM_OUTPUT_DATA_DIR=<root>/output/data`, `SM_HPS` and
//!   `SM_HP_<NAME>`, `SM_HOSTS`, `SM_CURRENT_HOST`, `SM_NUM_CPUS`, `SM_NUM_GPUS`, `SM_CHANNELS`,
//!   `SM_USER_ARGS`, `SM_TRAINING_ENV`; the hyperparameters also as `--name value` arguments;
//! - with more than one process per host, N processes through `mpirun`, as SageMaker's MPI
//!   distribution starts Horovod jobs;
//! - when the program exits 0, the model directory packed as `<out>/model.tar.gz` (and
//!   `output/data` as `output.tar.gz`), with the program's log, the owner record and a
//!   `lineage.json` naming every input file by digest, published atomically, lineage last. On
//!   failure nothing but the log is written, and the error quotes `<root>/output/failure`.
//!
//! With `root` `/opt/ml` the paths are exactly SageMaker's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde_json::json;
use shardline_contract::lineage::{ChannelFiles, SCHEMA, ScriptTrainingLineage};
use shardline_contract::owner::{self, Stage};
use shardline_lineage::{Digest, FileRecord, PRODUCER};
use shardline_store::Store;
use shardline_store::commit::{self, Commit};

use crate::Error;
use crate::files::{fresh_dir, materialise, pack, write_json};
use crate::program::{self, Output};

/// The single host of a local script-mode job, as SageMaker names the first instance.
pub const HOST: &str = "algo-1";

/// A script-mode training job.
#[derive(Debug, Clone, Default)]
pub struct TrainingConfig {
    /// The command that starts the user's program (e.g. `python3 train.py`).
    pub script: String,
    /// Processes of the program on this host; more than 1 starts them through mpirun.
    pub processes_per_host: usize,
    /// Hyperparameters: `SM_HPS`, `SM_HP_<NAME>` and `--name value` arguments.
    pub hyperparameters: BTreeMap<String, String>,
    /// Channels by name: any store prefix. Empty: the train, validation and test channels of
    /// `data`.
    pub channels: BTreeMap<String, String>,
    /// A `shardline process` output whose channels are the inputs (when `channels` is empty).
    pub data: Option<String>,
    /// Where `model.tar.gz`, `output.tar.gz`, the log and the lineage go.
    pub out: String,
    /// The local root of the layout (input/, model/, output/, replaced); default a temporary
    /// folder.
    pub root: Option<PathBuf>,
    /// Replace another finished job's model in `out`.
    pub force: bool,
}

/// What a script-mode run reports while it works.
pub trait Progress: Send + Sync {
    /// A line worth telling the user.
    fn message(&self, _line: &str) {}
    /// A line the program wrote.
    fn output(&self, _line: Output<'_>) {}
}

/// What [`run`] returns.
#[derive(Debug, Clone)]
pub struct TrainingReport {
    /// The packed model's URI.
    pub model: String,
    /// The command line that ran.
    pub command: String,
}

fn setting(setting: &'static str, reason: String) -> Error {
    Error::Setting {
        stage: "train",
        setting,
        reason,
    }
}

/// A hyperparameter value as SageMaker passes it: JSON numbers and booleans stay typed in
/// `SM_HPS`, everything else is a string.
pub fn hyperparameter_value(text: &str) -> serde_json::Value {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => v,
        _ => serde_json::Value::String(text.to_string()),
    }
}

/// `SM_HP_LEARNING_RATE` for `learning-rate`.
pub fn env_name(prefix: &str, name: &str) -> String {
    format!("{prefix}{}", name.to_ascii_uppercase().replace('-', "_"))
}

/// Quotes a word for `sh`.
pub fn quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

impl TrainingConfig {
    /// Checks the settings before any work; the error names the setting.
    pub fn validate(&self) -> Result<(), Error> {
        if self.script.trim().is_empty() {
            return Err(setting(
                "script",
                "is empty; give the command that starts your training program".into(),
            ));
        }
        if self.processes_per_host == 0 {
            return Err(setting("processes_per_host", "must be at least 1".into()));
        }
        for (what, names) in [
            ("hyperparameters", &self.hyperparameters),
            ("channels", &self.channels),
        ] {
            for name in names.keys() {
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(setting(
                        what,
                        format!(
                            "{name:?}: the name must be letters, digits, '_' or '-' (it becomes part of an environment variable)"
                        ),
                    ));
                }
            }
        }
        if self.channels.is_empty() && self.data.is_none() {
            return Err(setting(
                "data",
                "the script needs its inputs: a `shardline process` output, or named channels"
                    .into(),
            ));
        }
        if !self.channels.is_empty() && self.data.is_some() {
            return Err(setting(
                "data",
                "give the data or the channels, not both: with channels, every input is named"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The job's identity: everything that changes its outputs.
    fn digest(&self, channels: &BTreeMap<String, String>, data_lineage: Option<&Digest>) -> Digest {
        Digest::of(
            json!({
                "script": self.script,
                "processes_per_host": self.processes_per_host,
                "hyperparameters": self.hyperparameters,
                "channels": channels,
                "data_lineage": data_lineage,
            })
            .to_string()
            .as_bytes(),
        )
    }
}

/// The channels of a `shardline process` output, and the digest of its lineage record.
async fn channels_of(data_url: &str) -> Result<(BTreeMap<String, String>, Option<Digest>), Error> {
    let store = Store::open(data_url)?;
    commit::recover(&store).await?;
    let mut channels = BTreeMap::new();
    for name in ["train", "validation", "test"] {
        if store.exists(&format!("{name}/index.json")).await? {
            channels.insert(name.to_string(), store.uri_of(name));
        }
    }
    if channels.is_empty() {
        return Err(Error::BadInput {
            stage: "train",
            input: store.uri(),
            reason: "has no train, validation or test channel; give the output of `shardline process`, or name the channels".into(),
        });
    }
    let lineage = store.get_opt("lineage.json").await?.map(|b| Digest::of(&b));
    Ok((channels, lineage))
}

/// Runs the user's training program; see the module documentation.
pub async fn run(
    config: &TrainingConfig,
    progress: &dyn Progress,
) -> Result<TrainingReport, Error> {
    config.validate()?;
    let script = config.script.trim();
    let (channel_urls, data_lineage) = match &config.data {
        Some(data) if config.channels.is_empty() => channels_of(data).await?,
        _ => (config.channels.clone(), None),
    };
    let out = Store::open(&config.out)?;
    let job = config.digest(&channel_urls, data_lineage.as_ref());
    for url in channel_urls.values().chain(config.data.iter()) {
        let input = shardline_store::Location::parse(url)?;
        if input.overlaps(out.location()) {
            return Err(setting(
                "out",
                format!(
                    "{} overlaps the input {url}; give an `out` beside the data",
                    out.uri()
                ),
            ));
        }
    }
    owner::claim(&out, Stage::Train, job.as_str(), config.force).await?;
    commit::recover(&out).await?;

    // The SageMaker layout under the root.
    let temporary;
    let root = match &config.root {
        // Absolute: the script runs in another directory, and SageMaker's paths are absolute.
        Some(root) => std::path::absolute(root).map_err(|e| Error::io(root, e))?,
        None => {
            temporary = tempfile::Builder::new()
                .prefix("shardline-train-")
                .tempdir()
                .map_err(|e| Error::io("a temporary folder", e))?;
            temporary.path().to_path_buf()
        }
    };
    let (input, model_dir, output) = (root.join("input"), root.join("model"), root.join("output"));
    let config_dir = input.join("config");
    for dir in [&input.join("data"), &config_dir, &model_dir, &output] {
        fresh_dir(dir)?;
    }
    let output_data = output.join("data");
    fresh_dir(&output_data)?;

    let mut channels = BTreeMap::new();
    for (name, url) in &channel_urls {
        let store = Store::open(url)?;
        let dir = input.join("data").join(name);
        fresh_dir(&dir)?;
        let files = materialise(&store, &dir).await?;
        if files.is_empty() {
            return Err(Error::BadInput {
                stage: "train",
                input: format!("channel {name} ({})", store.uri()),
                reason: "is empty; nothing to train on there".into(),
            });
        }
        let bytes: u64 = files.values().map(|f| f.bytes).sum();
        progress.message(&format!(
            "channel {name}: {} files, {bytes} bytes from {}",
            files.len(),
            store.uri()
        ));
        channels.insert(name.clone(), (store.uri(), dir, files));
    }

    // Config files and environment, with SageMaker's names.
    let hyperparameters = &config.hyperparameters;
    let hps: serde_json::Map<String, serde_json::Value> = hyperparameters
        .iter()
        .map(|(k, v)| (k.clone(), hyperparameter_value(v)))
        .collect();
    let hosts = json!([HOST]);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SageMaker writes every hyperparameter as a string in this file.
    write_json(
        &config_dir.join("hyperparameters.json"),
        &json!(hyperparameters),
    )?;
    write_json(
        &config_dir.join("resourceconfig.json"),
        &json!({"current_host": HOST, "hosts": hosts, "network_interface_name": "lo"}),
    )?;
    let input_data_config: serde_json::Map<String, serde_json::Value> = channels
        .keys()
        .map(|name| {
            (
                name.clone(),
                json!({"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}),
            )
        })
        .collect();
    write_json(
        &config_dir.join("inputdataconfig.json"),
        &serde_json::Value::Object(input_data_config.clone()),
    )?;
    let user_args: Vec<String> = hyperparameters
        .iter()
        .flat_map(|(k, v)| [format!("--{k}"), v.clone()])
        .collect();
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let names: Vec<&String> = channels.keys().collect();
    let mut env: Vec<(String, String)> = vec![
        ("SM_MODEL_DIR".into(), path(&model_dir)),
        ("SM_OUTPUT_DATA_DIR".into(), path(&output_data)),
        ("SM_OUTPUT_DIR".into(), path(&output)),
        ("SM_INPUT_DIR".into(), path(&input)),
        ("SM_INPUT_CONFIG_DIR".into(), path(&config_dir)),
        ("SM_CHANNELS".into(), json!(names).to_string()),
        (
            "SM_HPS".into(),
            serde_json::Value::Object(hps.clone()).to_string(),
        ),
        ("SM_HOSTS".into(), hosts.to_string()),
        ("SM_CURRENT_HOST".into(), HOST.into()),
        ("SM_NUM_CPUS".into(), cpus.to_string()),
        ("SM_NUM_GPUS".into(), "0".into()),
        ("SM_USER_ARGS".into(), json!(user_args).to_string()),
        (
            "SM_INPUT_DATA_CONFIG".into(),
            serde_json::Value::Object(input_data_config).to_string(),
        ),
        (
            "SM_RESOURCE_CONFIG".into(),
            json!({"current_host": HOST, "hosts": hosts}).to_string(),
        ),
        ("SM_NETWORK_INTERFACE_NAME".into(), "lo".into()),
    ];
    for (name, (_, dir, _)) in &channels {
        env.push((env_name("SM_CHANNEL_", name), path(dir)));
    }
    for (name, value) in hyperparameters {
        env.push((env_name("SM_HP_", name), value.clone()));
    }
    let training_env: serde_json::Map<String, serde_json::Value> = env
        .iter()
        .map(|(k, v)| {
            let key = k.trim_start_matches("SM_").to_ascii_lowercase();
            let value = serde_json::from_str(v).unwrap_or_else(|_| json!(v));
            (key, value)
        })
        .collect();
    env.push((
        "SM_TRAINING_ENV".into(),
        serde_json::Value::Object(training_env).to_string(),
    ));

    // The command line: the program, then the hyperparameters as arguments.
    let mut line = script.to_string();
    for word in &user_args {
        line.push(' ');
        line.push_str(&quote(word));
    }
    let processes = config.processes_per_host;
    let (mut command, hint) = if processes > 1 {
        // As SageMaker's MPI distribution launches Horovod: one mpirun on the first host.
        let mut command = tokio::process::Command::new("mpirun");
        command.args([
            "--allow-run-as-root",
            "--oversubscribe",
            "--tag-output",
            "-bind-to",
            "none",
            "-map-by",
            "slot",
            "-np",
            &processes.to_string(),
        ]);
        for (name, _) in &env {
            command.args(["-x", name]);
        }
        command.args(["sh", "-c", &line]);
        (
            command,
            "install Open MPI (openmpi-bin) or run 1 process per host",
        )
    } else {
        let mut command = tokio::process::Command::new("sh");
        command.args(["-c", &line]);
        (command, "a POSIX shell is needed to run the script")
    };
    command
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&root);
    progress.message(&format!(
        "running `{line}` ({processes} process{} on {HOST}) in {}",
        if processes == 1 { "" } else { "es" },
        root.display()
    ));
    let ended = program::run(command, "train", hint, &|l| progress.output(l)).await?;
    let log_key = format!("logs/{HOST}.log");

    if !ended.status.success() {
        // The log alone, so that the failure can be read; no model that looks complete.
        out.put(&log_key, Bytes::from(ended.log)).await?;
        let failure = crate::files::failure_message(&output.join("failure"));
        return Err(Error::Failed {
            stage: "train",
            status: ended.status.to_string(),
            message: if failure.is_empty() {
                String::new()
            } else {
                format!(": {failure}")
            },
            log: out.uri_of(&log_key),
        });
    }

    let model = pack(&model_dir)?.ok_or_else(|| Error::BadInput {
        stage: "train",
        input: "the script".into(),
        reason: format!(
            "exited 0 but wrote nothing to SM_MODEL_DIR ({}); save the model there",
            model_dir.display()
        ),
    })?;
    let outputs = pack(&output_data)?;
    let lineage = ScriptTrainingLineage {
        schema: SCHEMA,
        producer: PRODUCER.into(),
        step: "train-script".into(),
        job: job.to_string(),
        script: script.to_string(),
        command: line.clone(),
        processes_per_host: processes,
        hosts: vec![HOST.to_string()],
        hyperparameters: hps,
        data_lineage,
        channels: channels
            .into_iter()
            .map(|(name, (uri, _, files))| (name, ChannelFiles { uri, files }))
            .collect(),
        model: FileRecord::of(&model),
        output: outputs.as_deref().map(FileRecord::of),
    };
    let mut tx = Commit::begin(&out);
    tx.stage(&log_key, Bytes::from(ended.log)).await?;
    tx.stage("model.tar.gz", Bytes::from(model)).await?;
    if let Some(outputs) = outputs {
        tx.stage("output.tar.gz", Bytes::from(outputs)).await?;
    }
    owner::stage_finished(&mut tx, Stage::Train, job.as_str(), &lineage).await?;
    tx.publish().await?;
    Ok(TrainingReport {
        model: out.uri_of("model.tar.gz"),
        command: line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyperparameters_keep_numbers_and_booleans_typed() {
        assert_eq!(hyperparameter_value("0.01"), json!(0.01));
        assert_eq!(hyperparameter_value("true"), json!(true));
        assert_eq!(hyperparameter_value("adam"), json!("adam"));
        assert_eq!(hyperparameter_value("[1]"), json!("[1]"));
    }

    #[test]
    fn names_become_environment_variables() {
        assert_eq!(env_name("SM_HP_", "learning-rate"), "SM_HP_LEARNING_RATE");
        assert_eq!(env_name("SM_CHANNEL_", "train"), "SM_CHANNEL_TRAIN");
    }

    #[test]
    fn bad_settings_are_named() {
        let config = TrainingConfig {
            script: "true".into(),
            processes_per_host: 1,
            channels: [("a b".to_string(), "x".to_string())].into(),
            out: "out".into(),
            ..TrainingConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("channels") && err.contains("letters, digits"),
            "{err}"
        );
        let none = TrainingConfig {
            channels: BTreeMap::new(),
            ..config
        };
        assert!(
            none.validate()
                .unwrap_err()
                .to_string()
                .contains("needs its inputs")
        );
    }

    #[test]
    fn words_are_quoted_for_the_shell() {
        assert_eq!(quote("0.01"), "0.01");
        assert_eq!(quote("two words"), "'two words'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }
}
