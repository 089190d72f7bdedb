//! The `shardline` command: from a data lake of labelled objects to a trained and served model.
//!
//! This binary is the only place that prints to the terminal: it parses flags into validated
//! settings (reporting bad input before any work starts), draws progress, and calls the library
//! crates.

mod cmd;
mod progress;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Mutex;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Shardline takes a data lake of labelled objects to a trained and served model,
/// data-parallel at every stage, with lineage from the raw objects to the endpoint.
///
/// Stores are named by URL: a local path or file:///path (the default), s3://bucket/prefix
/// (endpoint, region and credentials from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
/// AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP), or memory://name for tests.
#[derive(Debug, Parser)]
#[command(
    name = "shardline",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub(crate) struct Cli {
    /// Print nothing but errors (no progress bars, no summary).
    #[arg(short, long, global = true)]
    quiet: bool,
    /// More log output on stderr (-v: info, -vv: debug). SHARDLINE_LOG takes tracing filters.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole flow on a generated dataset, locally, and say where the outputs are.
    Quickstart(cmd::quickstart::Args),
    /// Generate a synthetic labelled dataset laid out as <out>/<class_label>/<id>.<ext>.
    #[command(subcommand)]
    Datagen(cmd::datagen::Command),
    /// List a store whose first-level prefixes are class labels and write channel manifests,
    /// the dataset table and a lineage record.
    Manifest(cmd::manifest::Args),
    /// Distribute each channel's objects to N processing instances; each writes its own
    /// WebDataset shards (or runs your script under the SageMaker Processing contract).
    Process(Box<cmd::process::Args>),
    /// Train an image classifier on processed shards, data-parallel (Horovod's model): N workers,
    /// weights broadcast from rank 0, gradients averaged by fused allreduce.
    Train(Box<cmd::train::Args>),
    /// Evaluate a trained model on a channel of processed data: accuracy, per-class precision
    /// and recall, confusion matrix.
    Evaluate(cmd::evaluate::Args),
    /// Serve a trained model over HTTP: SageMaker hosting (/ping, /invocations) and KServe v2
    /// (/v2/...), with dynamic batching and Prometheus metrics at /metrics.
    Serve(Box<cmd::serve::Args>),
    /// Batch transform: predictions for every object of a manifest, sharded across instances,
    /// as JSON Lines keyed by object, with a summary; resumable.
    Transform(Box<cmd::transform::Args>),
    /// The model registry: register a trained model as the next version of a name, list, show.
    #[command(subcommand)]
    Model(cmd::model::Command),
    /// Pipelines: one TOML definition runs the whole flow, cached by content, resumable, with
    /// per-instance logs and lineage (run, resume, plan, validate, list, show).
    #[command(subcommand)]
    Pipeline(cmd::pipeline::Command),
    /// Write the launch files of a stage for a cluster scheduler (Kubernetes: an Indexed Job for
    /// processing, a Kubeflow MPIJob for training).
    #[command(subcommand)]
    Launch(cmd::launch::Command),
    /// A pipeline step's log, per instance and attempt; --follow while it runs.
    Logs(cmd::pipeline::LogsArgs),
    /// Where an artifact came from (up to the raw listing) and what used it (down to models and
    /// transforms), from the pipeline executions' records.
    Lineage(cmd::pipeline::LineageArgs),
    /// The dashboard: executions, DAGs, per-instance logs, training curves, models and lineage
    /// in the browser, read-only, on 127.0.0.1 (or --export DIR as static pages).
    Ui(cmd::ui::Args),
    /// One instance of a `shardline process` job, its job as JSON on stdin (started by the local
    /// launcher, not by hand).
    #[command(hide = true)]
    Instance,
}

/// Everything logged by this process, kept so that an instance can upload its own log.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// The log lines written so far by this process.
pub fn log_buffer() -> Vec<u8> {
    LOG.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The writer of the process's own log, [`LOG`].
struct LogBuffer;

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether a launcher started this process as one instance of a job.
fn started_as_instance() -> bool {
    [
        "SHARDLINE_RANK",
        "OMPI_COMM_WORLD_RANK",
        "SLURM_PROCID",
        "JOB_COMPLETION_INDEX",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some())
}

fn init_tracing(verbose: u8, quiet: bool) {
    use tracing_subscriber::prelude::*;
    // An instance started by a launcher logs its progress at info level: that is its log file.
    let instance = started_as_instance();
    let default = match verbose {
        0 if !instance => "warn",
        0 | 1 => "info",
        _ => "debug",
    };
    let filter =
        || EnvFilter::try_from_env("SHARDLINE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // The process's log (an instance uploads it as `logs/algo-<i>.log`) keeps every line; the
    // terminal gets the same lines, or only errors with --quiet.
    let log = tracing_subscriber::fmt::layer()
        .with_writer(|| LogBuffer)
        .with_ansi(false)
        .with_target(false)
        .with_filter(filter());
    let terminal = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_filter(if quiet {
            EnvFilter::new("error")
        } else {
            filter()
        });
    tracing_subscriber::registry()
        .with(log)
        .with(terminal)
        .init();
}

/// The libraries name a setting by its config field, in backticks (`` `error_budget` ``); the
/// person at the terminal set it with a flag. Each setting of the command that ran, as
/// (`` `id` ``, its flag), for [`progress::Ui`] to rewrite every line it prints (`--error-budget`),
/// so that only this layer knows flag names.
fn flags(command: &clap::Command) -> Vec<(String, String)> {
    command
        .get_arguments()
        .filter_map(|arg| {
            let flag = match (arg.get_long(), arg.get_short()) {
                (Some(long), _) => format!("--{long}"),
                (None, Some(short)) => format!("-{short}"),
                (None, None) => return None,
            };
            Some((format!("`{}`", arg.get_id()), flag))
        })
        .collect()
}

/// The clap command of the subcommand that ran (`model register`, say).
fn ran<'a>(mut command: &'a clap::Command, mut matches: &clap::ArgMatches) -> &'a clap::Command {
    while let Some((name, sub)) = matches.subcommand() {
        match command.find_subcommand(name) {
            Some(found) => {
                command = found;
                matches = sub;
            }
            None => break,
        }
    }
    command
}

fn main() -> ExitCode {
    shardline_train::kernels::keep_freed_memory();
    let definition = Cli::command();
    let matches = definition.clone().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let command = ran(&definition, &matches);
    init_tracing(cli.verbose, cli.quiet);
    let ui = progress::Ui::new(cli.quiet, flags(command));
    // An instance is one core's worth of work: one runtime thread, so that N instances on N cores
    // do not contend (measured: 1.55x from 1 to 2 instances with a multi-threaded runtime each).
    let mut builder = if started_as_instance() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Quickstart(args) => cmd::quickstart::run(args, &ui).await,
            Command::Datagen(command) => cmd::datagen::run(command, &ui).await,
            Command::Manifest(args) => cmd::manifest::run(args, &ui).await,
            Command::Process(args) => cmd::process::run(*args, &ui).await,
            Command::Train(args) => cmd::train::run(*args, &ui).await.map(|_| ()),
            Command::Evaluate(args) => cmd::evaluate::run(args, &ui).await,
            Command::Serve(args) => cmd::serve::run(*args, &ui).await,
            Command::Transform(args) => cmd::transform::run(*args, &ui).await,
            Command::Model(command) => cmd::model::run(command, &ui).await,
            Command::Pipeline(command) => cmd::pipeline::run(command, &ui).await,
            Command::Launch(command) => cmd::launch::run(command, &ui).await,
            Command::Logs(args) => cmd::pipeline::logs(args).await,
            Command::Lineage(args) => cmd::pipeline::lineage(args, &ui).await,
            Command::Ui(args) => cmd::ui::run(args, &ui).await,
            Command::Instance => cmd::process::instance().await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            ui.clear();
            eprintln!("error: {}", ui.name_flags(&error.to_string()));
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {}", ui.name_flags(&cause.to_string()));
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every container command of the exported SageMaker definition (the pipeline crate checks
    /// that the export equals this golden file) is a command this binary accepts, with the
    /// parameters at their defaults.
    #[test]
    fn the_exported_sagemaker_steps_are_commands_this_binary_accepts() {
        let text = include_str!("../../shardline-pipeline/tests/data/quickstart.sagemaker.json");
        let definition: serde_json::Value = serde_json::from_str(text).expect("json");
        let defaults: std::collections::BTreeMap<String, String> = definition["Parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .map(|p| {
                let value = match &p["DefaultValue"] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (p["Name"].as_str().expect("name").to_string(), value)
            })
            .collect();
        // A value as the container receives it: parameters and joins resolved.
        fn resolve(
            v: &serde_json::Value,
            defaults: &std::collections::BTreeMap<String, String>,
        ) -> String {
            match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Object(o) if o.contains_key("Get") => {
                    let name = o["Get"]
                        .as_str()
                        .unwrap_or("")
                        .trim_start_matches("Parameters.");
                    defaults
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| panic!("no parameter {name}"))
                }
                serde_json::Value::Object(o) if o.contains_key("Std:Join") => {
                    let join = &o["Std:Join"];
                    join["Values"]
                        .as_array()
                        .expect("values")
                        .iter()
                        .map(|x| resolve(x, defaults))
                        .collect::<Vec<_>>()
                        .join(join["On"].as_str().unwrap_or(""))
                }
                other => panic!("an argument SageMaker cannot pass: {other}"),
            }
        }
        let mut checked = 0;
        let mut steps: Vec<serde_json::Value> =
            definition["Steps"].as_array().expect("steps").clone();
        while let Some(step) = steps.pop() {
            let arguments = &step["Arguments"];
            for branch in ["IfSteps", "ElseSteps"] {
                if let Some(nested) = arguments[branch].as_array() {
                    steps.extend(nested.iter().cloned());
                }
            }
            let spec = if arguments["AppSpecification"].is_object() {
                &arguments["AppSpecification"]
            } else {
                &arguments["AlgorithmSpecification"]
            };
            let Some(entry) = spec["ContainerEntrypoint"].as_array() else {
                continue;
            };
            let mut argv: Vec<String> = entry.iter().map(|v| resolve(v, &defaults)).collect();
            argv.extend(
                spec["ContainerArguments"]
                    .as_array()
                    .map(|a| a.iter().map(|v| resolve(v, &defaults)).collect::<Vec<_>>())
                    .unwrap_or_default(),
            );
            assert_eq!(argv[0], "shardline", "{argv:?}");
            if let Err(e) = Cli::try_parse_from(&argv) {
                panic!(
                    "step {}: `{}` is refused:\n{e}",
                    step["Name"],
                    argv.join(" ")
                );
            }
            checked += 1;
        }
        assert!(checked >= 4, "only {checked} container steps");
    }
}
