//! `shardline launch kubernetes STAGE ... -- ARGS`: flags → the container crate's launch files
//! ([`shardline_container::kubernetes`]) → YAML on stdout or in a file.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use shardline_container::kubernetes::{self, Workload};

use crate::progress::Ui;

/// The schedulers `launch` writes files for.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Kubernetes: an Indexed Job and a headless Service (process, transform), a Kubeflow MPIJob
    /// (train).
    Kubernetes(KubernetesArgs),
}

/// The stages a launch file runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// `shardline process`: one pod per instance (rank = JOB_COMPLETION_INDEX).
    Process,
    /// `shardline train`: one MPI rank per worker pod, started by the MPIJob's launcher.
    Train,
    /// `shardline transform`: one pod per instance; instance 0 writes the summary.
    Transform,
}

/// Flags of `launch kubernetes`.
#[derive(Debug, clap::Args)]
pub struct KubernetesArgs {
    /// The stage the pods run.
    #[arg(value_enum)]
    pub stage: Stage,
    /// The Job's name (lowercase letters, digits and '-').
    #[arg(long)]
    pub name: String,
    /// The container image with the `shardline` binary (for train also Open MPI and sshd).
    #[arg(long, value_name = "IMAGE")]
    pub image: String,
    /// Processing or transform instances: pods of the Indexed Job [default: 2].
    #[arg(long)]
    pub instances: Option<usize>,
    /// More tries of a failed instance, on its own share (backoffLimitPerIndex).
    #[arg(long, default_value_t = 2)]
    pub retries: u32,
    /// Training worker pods [default: 2].
    #[arg(long)]
    pub workers: Option<usize>,
    /// MPI ranks per worker pod [default: 1].
    #[arg(long)]
    pub slots_per_worker: Option<usize>,
    /// The namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// An environment variable of the containers, KEY=VALUE (repeat): AWS_ENDPOINT_URL=...
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// A Secret whose keys become the containers' environment (AWS credentials).
    #[arg(long, value_name = "SECRET")]
    pub env_secret: Option<String>,
    /// CPU request per pod (2, 500m).
    #[arg(long)]
    pub cpu: Option<String>,
    /// Memory request and limit per pod (4Gi).
    #[arg(long)]
    pub memory: Option<String>,
    /// The service account of the pods.
    #[arg(long)]
    pub service_account: Option<String>,
    /// Allow local paths in the stage's arguments (the pods mount a shared volume there).
    #[arg(long)]
    pub allow_local_paths: bool,
    /// Write the YAML here (atomically) instead of to stdout.
    #[arg(long = "out", id = "launch_file", value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The stage's own flags, after `--`: `-- --train s3://... --out s3://...`.
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

/// The value of `--flag VALUE` or `--flag=VALUE` in `args`.
fn flag_values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
    let mut found = Vec::new();
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        if a == flag {
            if let Some(v) = it.peek() {
                found.push(v.as_str());
            }
        } else if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            found.push(v);
        }
    }
    found
}

/// Whether a location is one a pod can reach without a shared volume: an S3 URI.
fn remote(value: &str) -> bool {
    value.starts_with("s3://")
}

fn check_args(args: &KubernetesArgs, env: &[(String, String)]) -> Result<()> {
    let stage = match args.stage {
        Stage::Process => "process",
        Stage::Train => "train",
        Stage::Transform => "transform",
    };
    // The pods run `shardline STAGE FLAGS`: flags it refuses would fail every pod.
    let argv: Vec<String> = ["shardline".to_string(), stage.to_string()]
        .into_iter()
        .chain(args.args.iter().cloned())
        .collect();
    if let Err(e) = <crate::Cli as clap::Parser>::try_parse_from(&argv) {
        bail!(
            "launch: the flags after `--` are not ones `shardline {stage}` takes, so every pod would fail:\n{}",
            e.to_string().trim_end()
        );
    }
    if flag_values(&args.args, "--out").is_empty() {
        bail!(
            "launch: the stage's flags after `--` name no --out; e.g. `-- --out s3://bucket/{stage}-out ...`"
        );
    }
    // What the launch file itself sets.
    match args.stage {
        Stage::Train => {
            if !flag_values(&args.args, "--workers").is_empty() {
                bail!(
                    "launch: --workers after `--` trains in-process inside one pod; the MPIJob's ranks are its worker pods: give --workers before `--`"
                );
            }
            if args.instances.is_some() {
                bail!(
                    "launch: --instances is for process and transform; a training MPIJob takes --workers (and --slots-per-worker)"
                );
            }
        }
        Stage::Process | Stage::Transform => {
            if !flag_values(&args.args, "--instances").is_empty() {
                bail!(
                    "launch: --instances after `--` would disagree with the Job's pods; give --instances before `--` (it sets the pods and the world size)"
                );
            }
            if args.workers.is_some() || args.slots_per_worker.is_some() {
                bail!(
                    "launch: --workers and --slots-per-worker are for train; {stage} takes --instances"
                );
            }
        }
    }
    for (name, _) in env {
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            bail!(
                "launch: --env {name:?} is not an environment variable name (letters, digits and _, not starting with a digit)"
            );
        }
        if matches!(
            name.as_str(),
            "SHARDLINE_WORLD_SIZE" | "JOB_COMPLETION_INDEX" | "SHARDLINE_RANK"
        ) || name.starts_with("OMPI_")
        {
            bail!(
                "launch: --env {name} is set by the launch file (the world size, the rank, MPI's settings); leave it out"
            );
        }
    }
    if args.allow_local_paths {
        return Ok(());
    }
    // Locations the pods read or write, by flag: (flag, value is CHANNEL=URL).
    let paths: &[(&str, bool)] = match args.stage {
        Stage::Process => &[("--out", false), ("--input", true)],
        Stage::Train => &[
            ("--out", false),
            ("--data", false),
            ("--channel", true),
            ("--model-config", false),
        ],
        Stage::Transform => &[
            ("--out", false),
            ("--manifest", false),
            ("--registry", false),
            ("--model", false),
        ],
    };
    for (flag, named) in paths {
        for value in flag_values(&args.args, flag) {
            let location = if *named {
                value.split_once('=').map_or(value, |(_, url)| url)
            } else {
                value
            };
            // A transform's model may be a registered NAME:VERSION (no slash).
            if *flag == "--model" && !location.contains('/') {
                continue;
            }
            if !remote(location) {
                bail!(
                    "launch: {flag} {value} is not an s3:// location, and pods share no file system (file:// and memory:// are each pod's own); use s3:// locations, or mount a shared volume and pass --allow-local-paths"
                );
            }
        }
    }
    Ok(())
}

/// Runs `launch`.
pub async fn run(command: Command, ui: &Ui) -> Result<()> {
    let Command::Kubernetes(args) = command;
    let env: Vec<(String, String)> = args
        .env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("launch: --env {kv:?} is not KEY=VALUE"))
        })
        .collect::<Result<Vec<_>>>()?;
    check_args(&args, &env)?;
    let (instances, workers, slots) = (
        args.instances.unwrap_or(2),
        args.workers.unwrap_or(2),
        args.slots_per_worker.unwrap_or(1),
    );
    let stage = match args.stage {
        Stage::Process => "process",
        Stage::Train => "train",
        Stage::Transform => "transform",
    };
    let workload = Workload {
        name: args.name.clone(),
        namespace: args.namespace.clone(),
        image: args.image.clone(),
        args: std::iter::once(stage.to_string())
            .chain(args.args.iter().cloned())
            .collect(),
        env,
        env_secret: args.env_secret.clone(),
        cpu: args.cpu.clone(),
        memory: args.memory.clone(),
        service_account: args.service_account.clone(),
    };
    let (docs, what) = match args.stage {
        Stage::Process | Stage::Transform => (
            kubernetes::indexed_job(&workload, instances, args.retries)?,
            format!(
                "an Indexed Job of {} pods and its headless Service",
                instances
            ),
        ),
        Stage::Train => (
            vec![kubernetes::mpijob(&workload, workers, slots)?],
            format!(
                "an MPIJob of {} worker pods ({} ranks)",
                workers,
                workers * slots
            ),
        ),
    };
    let text = kubernetes::to_yaml(&docs);
    match &args.out {
        Some(path) => {
            super::pipeline::write_atomically(path, &text)?;
            ui.say(format!(
                "launch: {what} written to {}; `kubectl apply -f {}`",
                path.display(),
                path.display()
            ));
        }
        None => super::pipeline::print_text(&text)?,
    }
    Ok(())
}
