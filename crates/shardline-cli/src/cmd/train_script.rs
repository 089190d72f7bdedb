//! `shardline train --script "CMD"`: the user's own training program (TensorFlow, PyTorch,
//! Horovod...) run unchanged under the SageMaker training toolkit's environment:
//!
//! - each channel downloaded to `<root>/input/data/<channel>/` and named by `SM_CHANNEL_<NAME>`;
//! - `<root>/input/config/{hyperparameters,resourceconfig,inputdataconfig}.json`;
//! - `SM_MODEL_DIR=<root>/model`, `SM_OUTPUT_DATA_DIR=<root>/output/data`, `SM_HPS` and
//!   `SM_HP_<NAME>`, `SM_HOSTS`, `SM_CURRENT_HOST`, `SM_NUM_CPUS`, `SM_NUM_GPUS`, `SM_CHANNELS`,
//!   `SM_USER_ARGS`, `SM_TRAINING_ENV`; the hyperparameters also as `--name value` arguments;
//! - with `--processes-per-host N > 1`, N processes through `mpirun`, as SageMaker's MPI
//!   distribution starts Horovod jobs;
//! - when the program exits 0, the model directory packed as `<out>/model.tar.gz` (and
//!   `output/data` as `output.tar.gz`), with the program's log and a `lineage.json` naming every
//!   input file by digest, published atomically, lineage last. On failure nothing but the log is
//!   written, and the error quotes `<root>/output/failure`.
//!
//! With `--root /opt/ml` the paths are exactly SageMaker's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use shardline_lineage::{Digest, FileRecord, PRODUCER};
use shardline_store::Store;
use shardline_store::commit::{self, Commit};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::progress::Ui;

/// The single host of a local script-mode job, as SageMaker names the first instance.
const HOST: &str = "algo-1";

/// Flags of `shardline train` for a user's own training program.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ScriptArgs {
    /// Run this training program (a shell command, e.g. "python3 train.py") under the SageMaker
    /// training toolkit's environment instead of Shardline's own trainer.
    #[arg(long, value_name = "CMD")]
    pub script: Option<String>,
    /// Processes of --script on this host; more than 1 launches them through mpirun (Horovod).
    #[arg(long, default_value_t = 1, requires = "script")]
    pub processes_per_host: usize,
    /// A hyperparameter for --script (repeatable): SM_HPS, SM_HP_<KEY> and `--key value`.
    #[arg(long = "hyperparameter", value_name = "KEY=VALUE", requires = "script")]
    pub hyperparameters: Vec<String>,
    /// A channel for --script (repeatable): NAME=URL, any store prefix. Default: the train,
    /// validation and test channels of --data.
    #[arg(long = "channel", value_name = "NAME=URL", requires = "script")]
    pub channels: Vec<String>,
    /// The local root of the SageMaker layout (input/, model/, output/); default a temporary
    /// directory. /opt/ml gives SageMaker's own paths. Its input/, model/ and output/ are
    /// replaced.
    #[arg(long, value_name = "DIR", requires = "script")]
    pub root: Option<PathBuf>,
}

/// A hyperparameter value as SageMaker passes it: JSON numbers and booleans stay typed in
/// `SM_HPS`, everything else is a string.
fn hyperparameter_value(text: &str) -> serde_json::Value {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => v,
        _ => serde_json::Value::String(text.to_string()),
    }
}

fn parse_pairs(flag: &str, pairs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("train: {flag} {pair:?} must look like NAME=VALUE");
        };
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            bail!(
                "train: {flag} {pair:?}: the name must be letters, digits, '_' or '-' (it becomes part of an environment variable)"
            );
        }
        if out.insert(key.to_string(), value.to_string()).is_some() {
            bail!("train: {flag} {key} is given twice; give each once");
        }
    }
    Ok(out)
}

/// `SM_HP_LEARNING_RATE` for `learning-rate`.
fn env_name(prefix: &str, name: &str) -> String {
    format!("{prefix}{}", name.to_ascii_uppercase().replace('-', "_"))
}

/// Quotes a word for `sh`.
fn quote(word: &str) -> String {
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

/// Empties (or creates) a directory.
fn fresh_dir(path: &Path) -> Result<()> {
    if path.exists() {
        std::fs::remove_dir_all(path)
            .with_context(|| format!("train: emptying {}", path.display()))?;
    }
    std::fs::create_dir_all(path).with_context(|| format!("train: creating {}", path.display()))
}

/// Packs a directory as a `.tar.gz` (deterministic: sorted names, zero times).
fn pack(dir: &Path) -> Result<Option<Vec<u8>>> {
    let files = shardline_process::script::files_below(dir)?;
    if files.is_empty() {
        return Ok(None);
    }
    let mut contents = Vec::new();
    for path in &files {
        // Names relative to `dir`, `/`-separated, as tar wants them.
        let name = path
            .strip_prefix(dir)
            .unwrap_or(path)
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        let bytes =
            std::fs::read(path).with_context(|| format!("train: reading {}", path.display()))?;
        contents.push((name, bytes));
    }
    Ok(Some(shardline_contract::model::pack(&contents)?))
}

/// Downloads every object of a channel below `dir`; returns each file's record by key.
async fn materialise(store: &Store, dir: &Path) -> Result<BTreeMap<String, FileRecord>> {
    let mut objects = store.list_all("").await?;
    objects.retain(|o| !o.key.starts_with(".shardline/"));
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    let records = futures::stream::iter(objects)
        .map(|object| async move {
            let key = object.key;
            if key.split('/').any(|part| part == ".." || part.is_empty()) {
                bail!(
                    "train: the object {:?} of {} would escape the channel directory",
                    key,
                    store.uri()
                );
            }
            let bytes = store.get(&key).await?;
            let path = dir.join(&key);
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            tokio::fs::write(&path, &bytes)
                .await
                .with_context(|| format!("train: writing {}", path.display()))?;
            Ok((key, FileRecord::of(&bytes)))
        })
        .buffer_unordered(16)
        .try_collect::<BTreeMap<_, _>>()
        .await?;
    Ok(records)
}

/// Copies a child's output to the terminal (unless quiet) and into the log.
async fn relay(
    stream: impl AsyncRead + Unpin,
    log: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    to_stderr: bool,
    quiet: bool,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if !quiet {
            if to_stderr {
                eprintln!("{line}");
            } else {
                crate::progress::out(&line);
            }
        }
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        log.extend_from_slice(line.as_bytes());
        log.push(b'\n');
    }
}

/// Runs the user's training program; see the module documentation.
pub async fn run(data: Option<&str>, out_url: &str, args: &ScriptArgs, ui: &Ui) -> Result<()> {
    let script = args.script.as_deref().unwrap_or_default().trim();
    if script.is_empty() {
        bail!("train: --script is empty; give the command that starts your training program");
    }
    if args.processes_per_host == 0 {
        bail!("train: --processes-per-host must be at least 1");
    }
    let hyperparameters = parse_pairs("--hyperparameter", &args.hyperparameters)?;
    let mut channel_urls = parse_pairs("--channel", &args.channels)?;
    let mut data_lineage = None;
    if channel_urls.is_empty() {
        let Some(data_url) = data else {
            bail!(
                "train: --script needs its inputs: --data (a `shardline process` output) or --channel NAME=URL"
            );
        };
        let store = Store::open(data_url).with_context(|| format!("train: --data {data_url}"))?;
        commit::recover(&store).await?;
        for name in ["train", "validation", "test"] {
            if store.exists(&format!("{name}/index.json")).await? {
                channel_urls.insert(name.to_string(), store.uri_of(name));
            }
        }
        if channel_urls.is_empty() {
            bail!(
                "train: {} has no train, validation or test channel; give --data the output of `shardline process`, or name channels with --channel NAME=URL",
                store.uri()
            );
        }
        if let Ok(bytes) = store.get("lineage.json").await {
            data_lineage = Some(Digest::of(&bytes));
        }
    } else if data.is_some() {
        bail!("train: give --data or --channel, not both: with --channel, every input is named");
    }
    let out = Store::open(out_url).with_context(|| format!("train: --out {out_url}"))?;
    commit::recover(&out).await?;

    // The SageMaker layout under the root.
    let temporary;
    let root = match &args.root {
        Some(root) => root.clone(),
        None => {
            temporary = tempfile::Builder::new()
                .prefix("shardline-train-")
                .tempdir()?;
            temporary.path().to_path_buf()
        }
    };
    let (input, model_dir, output) = (root.join("input"), root.join("model"), root.join("output"));
    let config_dir = input.join("config");
    for dir in [&input.join("data"), &config_dir, &model_dir, &output] {
        fresh_dir(dir)?;
    }
    let output_data = output.join("data");
    std::fs::create_dir_all(&output_data)?;

    let mut channels = BTreeMap::new();
    for (name, url) in &channel_urls {
        let store = Store::open(url).with_context(|| format!("train: channel {name}={url}"))?;
        let dir = input.join("data").join(name);
        std::fs::create_dir_all(&dir)?;
        let files = materialise(&store, &dir)
            .await
            .with_context(|| format!("train: downloading channel {name} from {}", store.uri()))?;
        if files.is_empty() {
            bail!(
                "train: channel {name} ({}) is empty; nothing to train on there",
                store.uri()
            );
        }
        let bytes: u64 = files.values().map(|f| f.bytes).sum();
        ui.say(format!(
            "train: channel {name}: {} files, {bytes} bytes from {}",
            files.len(),
            store.uri()
        ));
        channels.insert(name.clone(), (store.uri(), dir, files));
    }

    // Config files and environment, with SageMaker's names.
    let hps: serde_json::Map<String, serde_json::Value> = hyperparameters
        .iter()
        .map(|(k, v)| (k.clone(), hyperparameter_value(v)))
        .collect();
    let hosts = json!([HOST]);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let write = |name: &str, value: &serde_json::Value| -> Result<()> {
        let path = config_dir.join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(value)?)
            .with_context(|| format!("train: writing {}", path.display()))
    };
    // SageMaker writes every hyperparameter as a string in this file.
    write("hyperparameters.json", &json!(hyperparameters.clone()))?;
    write(
        "resourceconfig.json",
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
    write(
        "inputdataconfig.json",
        &serde_json::Value::Object(input_data_config.clone()),
    )?;
    let user_args: Vec<String> = hyperparameters
        .iter()
        .flat_map(|(k, v)| [format!("--{k}"), v.clone()])
        .collect();
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let mut env: Vec<(String, String)> = vec![
        ("SM_MODEL_DIR".into(), path(&model_dir)),
        ("SM_OUTPUT_DATA_DIR".into(), path(&output_data)),
        ("SM_OUTPUT_DIR".into(), path(&output)),
        ("SM_INPUT_DIR".into(), path(&input)),
        ("SM_INPUT_CONFIG_DIR".into(), path(&config_dir)),
        (
            "SM_CHANNELS".into(),
            serde_json::to_string(&channels.keys().collect::<Vec<_>>())?,
        ),
        ("SM_HPS".into(), serde_json::to_string(&hps)?),
        ("SM_HOSTS".into(), hosts.to_string()),
        ("SM_CURRENT_HOST".into(), HOST.into()),
        ("SM_NUM_CPUS".into(), cpus.to_string()),
        ("SM_NUM_GPUS".into(), "0".into()),
        ("SM_USER_ARGS".into(), serde_json::to_string(&user_args)?),
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
    for (name, value) in &hyperparameters {
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
    let mut command = if args.processes_per_host > 1 {
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
            &args.processes_per_host.to_string(),
        ]);
        for (name, _) in &env {
            command.args(["-x", name]);
        }
        command.args(["sh", "-c", &line]);
        command
    } else {
        let mut command = tokio::process::Command::new("sh");
        command.args(["-c", &line]);
        command
    };
    command
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    ui.say(format!(
        "train: running `{line}` ({} process{} on {HOST}) in {}",
        args.processes_per_host,
        if args.processes_per_host == 1 {
            ""
        } else {
            "es"
        },
        root.display()
    ));
    let mut child = command.spawn().with_context(|| {
        if args.processes_per_host > 1 {
            "train: cannot start mpirun for --processes-per-host; install Open MPI (openmpi-bin) or use --processes-per-host 1".to_string()
        } else {
            "train: cannot start sh for --script".to_string()
        }
    })?;
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let quiet = ui.is_quiet();
    let stdout = tokio::spawn(relay(
        child.stdout.take().context("stdout")?,
        log.clone(),
        false,
        quiet,
    ));
    let stderr = tokio::spawn(relay(
        child.stderr.take().context("stderr")?,
        log.clone(),
        true,
        quiet,
    ));
    let status = child.wait().await?;
    let _ = stdout.await;
    let _ = stderr.await;
    let log = std::mem::take(&mut *log.lock().unwrap_or_else(|e| e.into_inner()));
    let log_key = format!("logs/{HOST}.log");

    if !status.success() {
        // The log alone, so that the failure can be read; no model that looks complete.
        out.put(&log_key, Bytes::from(log)).await?;
        let failure = std::fs::read(output.join("failure"))
            .map(|b| {
                String::from_utf8_lossy(&b[..b.len().min(1024)])
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        bail!(
            "train: --script failed ({status}){}; its log is {}",
            if failure.is_empty() {
                String::new()
            } else {
                format!(": {failure}")
            },
            out.uri_of(&log_key)
        );
    }

    let model = pack(&model_dir)?.with_context(|| {
        format!(
            "train: --script exited 0 but wrote nothing to SM_MODEL_DIR ({}); save the model there",
            model_dir.display()
        )
    })?;
    let outputs = pack(&output_data)?;
    let lineage = json!({
        "producer": PRODUCER,
        "step": "train-script",
        "script": script,
        "command": line,
        "processes_per_host": args.processes_per_host,
        "hosts": [HOST],
        "hyperparameters": hps,
        "data_lineage": data_lineage,
        "channels": channels.iter().map(|(name, (uri, _, files))| {
            (name.clone(), json!({"uri": uri, "files": files}))
        }).collect::<serde_json::Map<_, _>>(),
        "model": FileRecord::of(&model),
        "output": outputs.as_deref().map(FileRecord::of),
    });
    let mut tx = Commit::begin(&out);
    tx.stage(&log_key, Bytes::from(log)).await?;
    tx.stage("model.tar.gz", Bytes::from(model)).await?;
    if let Some(outputs) = outputs {
        tx.stage("output.tar.gz", Bytes::from(outputs)).await?;
    }
    tx.stage(
        "lineage.json",
        Bytes::from(serde_json::to_vec_pretty(&lineage)?),
    )
    .await?;
    tx.publish().await?;
    ui.say(format!(
        "train: --script done; model in {}",
        out.uri_of("model.tar.gz")
    ));
    Ok(())
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
    fn bad_pairs_are_named() {
        let err = parse_pairs("--hyperparameter", &["lr".into()]).unwrap_err();
        assert!(err.to_string().contains("\"lr\" must look like NAME=VALUE"));
        let err = parse_pairs("--channel", &["a b=x".into()]).unwrap_err();
        assert!(err.to_string().contains("letters, digits"));
        let err = parse_pairs("--hyperparameter", &["a=1".into(), "a=2".into()]).unwrap_err();
        assert!(err.to_string().contains("given twice"));
    }

    #[test]
    fn words_are_quoted_for_the_shell() {
        assert_eq!(quote("0.01"), "0.01");
        assert_eq!(quote("two words"), "'two words'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }
}
