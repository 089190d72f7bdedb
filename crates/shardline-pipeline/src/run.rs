//! Running one step: its resolved settings into the stage's library config, the library call,
//! and its report as JSON. The executor calls these; nothing here shells out (a `command` step
//! runs the user's program through the container contracts, as `--script` does).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::json;
use shardline_container::program::Output;
use shardline_process::launch::Launcher;
use shardline_process::{ProcessConfig, Role};
use shardline_store::Store;

use crate::spec::Kind;
use crate::value::Value;

/// How a step failed, which decides whether its retry policy tries again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A setting is wrong: trying again cannot help.
    Invalid,
    /// The user's program exited non-zero (retried only when the policy says `program`).
    Program,
    /// Anything else: a crashed instance, a store or file system that failed.
    Infrastructure,
}

/// A failed step run.
#[derive(Debug, Clone)]
pub struct StepError {
    /// Its class.
    pub class: Class,
    /// What happened.
    pub message: String,
}

impl StepError {
    fn invalid(message: impl Into<String>) -> StepError {
        StepError {
            class: Class::Invalid,
            message: message.into(),
        }
    }
    fn infra(e: impl std::fmt::Display) -> StepError {
        StepError {
            class: Class::Infrastructure,
            message: e.to_string(),
        }
    }
}

/// What a successful step run produced.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Done {
    /// Its JSON report.
    pub report: serde_json::Value,
    /// Outputs by name (URIs), beyond those known from the settings.
    pub outputs: BTreeMap<String, String>,
    /// Instances' logs to keep: (instance, file).
    pub instance_logs: Vec<(String, PathBuf)>,
    /// Instances it ran.
    pub instances: usize,
    /// Numeric metrics worth listing.
    pub metrics: Vec<(String, f64)>,
}

/// A step's log: every line is written through (so it can be followed) and handed to `echo`.
pub struct StepLog<'a> {
    file: Mutex<std::fs::File>,
    echo: Box<dyn Fn(&str) + Send + Sync + 'a>,
}

impl<'a> StepLog<'a> {
    /// A log written to `path` (created with its folder).
    pub fn create(
        path: &Path,
        echo: Box<dyn Fn(&str) + Send + Sync + 'a>,
    ) -> std::io::Result<StepLog<'a>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(StepLog {
            file: Mutex::new(file),
            echo,
        })
    }

    /// Writes one line.
    pub fn line(&self, text: &str) {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(file, "{text}");
        let _ = file.flush();
        drop(file);
        (self.echo)(text);
    }
}

impl shardline_manifest::Progress for StepLog<'_> {
    fn classes_found(&self, classes: usize) {
        self.line(&format!("manifest: {classes} class prefixes found"));
    }
    fn writing(&self) {
        self.line("manifest: listing done; writing the manifests, table and lineage");
    }
}

impl shardline_process::Progress for StepLog<'_> {
    fn message(&self, line: &str) {
        self.line(&format!("process: {line}"));
    }
    fn retried(&self, rank: usize, attempt: usize, reason: &str) {
        self.line(&format!(
            "process: {} attempt {attempt} failed ({reason}); started again on its share",
            shardline_process::identity::host(rank)
        ));
    }
}

impl shardline_train::Progress for StepLog<'_> {
    fn message(&self, line: &str) {
        self.line(line);
    }
    fn epoch(&self, m: &shardline_train::EpochMetrics) {
        self.line(&format!(
            "train: epoch {:>3}: loss {:.4}, accuracy {:.3}, validation {:.3}, {:.0} samples/s",
            m.epoch, m.train_loss, m.train_accuracy, m.validation_accuracy, m.samples_per_second
        ));
    }
}

impl shardline_serve::transform::Progress for StepLog<'_> {
    fn message(&self, line: &str) {
        self.line(&format!("transform: {line}"));
    }
}

impl shardline_container::training::Progress for StepLog<'_> {
    fn message(&self, line: &str) {
        self.line(line);
    }
    fn output(&self, line: Output<'_>) {
        match line {
            Output::Stdout(l) => self.line(l),
            Output::Stderr(l) => self.line(l),
        }
    }
}

/// A step's resolved settings, each already of its declared type.
#[derive(Debug, Clone, Default)]
pub struct Resolved(pub BTreeMap<String, Value>);

impl Resolved {
    fn str(&self, name: &str) -> Option<String> {
        match self.0.get(name) {
            Some(Value::Str(s)) => Some(s.clone()),
            _ => None,
        }
    }
    fn need_str(&self, name: &str) -> Result<String, StepError> {
        self.str(name)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| StepError::invalid(format!("`{name}` is required")))
    }
    fn uint(&self, name: &str) -> Result<Option<u64>, StepError> {
        match self.0.get(name) {
            Some(Value::Int(i)) => u64::try_from(*i)
                .map(Some)
                .map_err(|_| StepError::invalid(format!("`{name}` must be 0 or more, not {i}"))),
            _ => Ok(None),
        }
    }
    fn usize_or(&self, name: &str, default: usize) -> Result<usize, StepError> {
        Ok(self.uint(name)?.map_or(default, |v| v as usize))
    }
    fn u64_or(&self, name: &str, default: u64) -> Result<u64, StepError> {
        Ok(self.uint(name)?.unwrap_or(default))
    }
    fn float_or(&self, name: &str, default: f64) -> f64 {
        match self.0.get(name) {
            Some(v) => v.as_f64().unwrap_or(default),
            None => default,
        }
    }
    fn bool_or(&self, name: &str, default: bool) -> bool {
        match self.0.get(name) {
            Some(Value::Bool(b)) => *b,
            _ => default,
        }
    }
    fn strings(&self, name: &str) -> Option<Vec<String>> {
        match self.0.get(name) {
            Some(Value::List(items)) => Some(items.iter().map(Value::to_string).collect()),
            _ => None,
        }
    }
    fn table(&self, name: &str) -> BTreeMap<String, String> {
        match self.0.get(name) {
            Some(Value::Table(t)) => t.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
            _ => BTreeMap::new(),
        }
    }
    /// The value of an enum-like setting, parsed through its serde name.
    fn named<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        choices: &str,
    ) -> Result<Option<T>, StepError> {
        match self.str(name) {
            None => Ok(None),
            Some(text) => serde_json::from_value(json!(text)).map(Some).map_err(|_| {
                StepError::invalid(format!("`{name}` {text:?} is not one of {choices}"))
            }),
        }
    }
}

/// What a step needs from its executor.
pub struct Context<'a> {
    /// Starts processing instances.
    pub launcher: &'a dyn Launcher,
    /// The model registry a `register` step uses when it names none.
    pub registry: &'a str,
    /// The step's log.
    pub log: &'a StepLog<'a>,
    /// A folder of this attempt's own (instances' logs are kept here).
    pub attempt_dir: &'a Path,
    /// Starts a training step's ranks as processes of their own (Slurm tasks) instead of
    /// in-process workers; `None` trains in this process.
    pub ranks: Option<&'a RankLauncher>,
}

/// How a training or transform step's ranks are started as processes: `program args... --ntasks
/// N` followed by `rank_args... --kind KIND --settings FILE --done FILE --logs DIR`, which runs
/// [`train_rank`] or [`transform_rank`] in each (for Slurm: `srun --mpi=pmix ... shardline
/// pipeline rank`).
#[derive(Debug, Clone)]
pub struct RankLauncher {
    /// The launcher (`srun`).
    pub program: PathBuf,
    /// Its arguments before the task count.
    pub args: Vec<String>,
    /// The program every rank runs and its arguments (`shardline pipeline rank`).
    pub rank_args: Vec<String>,
}

/// The output locations a step writes, by output name, from its settings.
pub fn output_uris(kind: Kind, s: &Resolved, outputs: &[String]) -> BTreeMap<String, String> {
    let out = s.str("out").unwrap_or_default();
    let base = out.trim_end_matches('/');
    let mut map = BTreeMap::new();
    for name in outputs {
        let uri = match (kind, name.as_str()) {
            (_, "out") => out.clone(),
            (Kind::Train, "model") => out.clone(),
            (Kind::Manifest, channel) => format!("{base}/{channel}.manifest"),
            (Kind::Process, channel) => format!("{base}/{channel}"),
            _ => continue,
        };
        map.insert(name.clone(), uri);
    }
    map
}

fn classify_process(e: shardline_process::Error) -> StepError {
    use shardline_process::Error as E;
    let class = match &e {
        E::BadInput { .. } | E::BadConfig(_) | E::Setting { .. } => Class::Invalid,
        E::Script { .. } => Class::Program,
        E::InstanceFailed { reason, .. } if reason.contains("the script failed") => Class::Program,
        _ => Class::Infrastructure,
    };
    StepError {
        class,
        message: e.to_string(),
    }
}

fn classify_train(e: shardline_train::Error) -> StepError {
    use shardline_train::Error as E;
    let class = match &e {
        E::Setting(_) | E::Config(_) | E::Data(_) => Class::Invalid,
        _ => Class::Infrastructure,
    };
    StepError {
        class,
        message: e.to_string(),
    }
}

/// Copies the instances' logs under `logs/` of a local output into the attempt's folder.
/// Where a processing job's instances write their logs while they run (`<out>/logs/algo-<i>.log`,
/// local outputs only): (instance, file).
pub fn live_instance_logs(out: &str, instances: usize) -> Vec<(String, PathBuf)> {
    let Some(dir) = Store::open(out)
        .ok()
        .and_then(|s| s.location().local_path())
        .map(|p| p.join("logs"))
    else {
        return Vec::new();
    };
    (0..instances)
        .map(|rank| {
            (
                shardline_process::identity::host(rank),
                shardline_process::launch::log_path(&dir, rank),
            )
        })
        .collect()
}

fn keep_instance_logs(out: &str, attempt_dir: &Path, instances: usize) -> Vec<(String, PathBuf)> {
    live_instance_logs(out, instances)
        .into_iter()
        .filter_map(|(host, from)| {
            let to = attempt_dir.join(format!("{host}.log"));
            std::fs::copy(&from, &to).is_ok().then_some((host, to))
        })
        .collect()
}

/// Runs one step.
pub async fn run(kind: Kind, s: &Resolved, cx: &Context<'_>) -> Result<Done, StepError> {
    match kind {
        Kind::Datagen => datagen(s, cx).await,
        Kind::Manifest => manifest(s, cx).await,
        Kind::Process => process(s, cx, None).await,
        Kind::Train => train(s, cx).await,
        Kind::Evaluate => evaluate(s, cx).await,
        Kind::Register => register(s, cx).await,
        Kind::Transform => transform(s, cx).await,
        Kind::Command => command(s, cx).await,
        Kind::Condition | Kind::Fail => Err(StepError::invalid(
            "conditions and fail steps are decided by the executor",
        )),
    }
}

async fn datagen(s: &Resolved, cx: &Context<'_>) -> Result<Done, StepError> {
    let d = shardline_datagen::ShapesConfig::default();
    let format = match s.str("format").as_deref() {
        None => d.format,
        Some("jpeg" | "jpg") => shardline_datagen::Format::Jpeg,
        Some("png") => shardline_datagen::Format::Png,
        Some(other) => {
            return Err(StepError::invalid(format!(
                "`format` {other:?} is not jpeg or png"
            )));
        }
    };
    let config = shardline_datagen::ShapesConfig {
        classes: s.usize_or("classes", d.classes)?,
        per_class: s.usize_or("per_class", d.per_class)?,
        size: s.u64_or("size", u64::from(d.size))? as u32,
        height: s.uint("height")?.map(|h| h as u32),
        format,
        seed: s.u64_or("seed", d.seed)?,
    };
    let out = s.need_str("out")?;
    let store = Store::open(&out).map_err(|e| StepError::invalid(e.to_string()))?;
    // As the CLI does: an out holding other data is refused, unless the step owns it (the
    // executor sets `force` when an earlier run of this step wrote it).
    if !s.bool_or("force", false) {
        shardline_datagen::check_out(&store, &config)
            .await
            .map_err(|e| match e {
                shardline_datagen::Error::BadConfig(_)
                | shardline_datagen::Error::OutputTaken { .. } => StepError::invalid(e.to_string()),
                other => StepError::infra(other),
            })?;
    }
    cx.log.line(&format!(
        "datagen: {} classes × {} images into {out}",
        config.classes, config.per_class
    ));
    let images = shardline_datagen::generate(&store, &config, &|| {})
        .await
        .map_err(|e| match e {
            shardline_datagen::Error::BadConfig(m) => StepError::invalid(m),
            other => StepError::infra(other),
        })?;
    cx.log.line(&format!("datagen: {images} images written"));
    Ok(Done {
        report: json!({"images": images, "classes": config.classes, "out": store.uri()}),
        ..Done::default()
    })
}

async fn manifest(s: &Resolved, cx: &Context<'_>) -> Result<Done, StepError> {
    let d = shardline_manifest::Config::default();
    let split = match s.str("split") {
        Some(text) => text
            .parse()
            .map_err(|e| StepError::invalid(format!("`split`: {e}")))?,
        None => d.split.clone(),
    };
    let config = shardline_manifest::Config {
        split,
        seed: s.u64_or("seed", d.seed)?,
        min_per_class: s.usize_or("min_per_class", d.min_per_class)?,
        force: s.bool_or("force", d.force),
        augmented: s.bool_or("augmented", d.augmented),
        concurrency: s.usize_or("concurrency", d.concurrency)?.max(1),
        part_keys: match s.usize_or("part_keys", d.part_keys)? {
            0 => return Err(StepError::invalid("`part_keys` must be at least 1")),
            n => n,
        },
    };
    let open = |name: &str| -> Result<Store, StepError> {
        let url = s.need_str(name)?;
        Store::open(&url).map_err(|e| StepError::invalid(format!("`{name}`: {e}")))
    };
    let started = std::time::Instant::now();
    let report = shardline_manifest::run(&open("source")?, &open("out")?, &config, cx.log)
        .await
        .map_err(|e| {
            use shardline_manifest::Error as E;
            match e {
                E::Store(_) => StepError::infra(e),
                other => StepError::invalid(other.to_string()),
            }
        })?;
    for line in report.summary(started.elapsed().as_secs_f64()) {
        cx.log.line(&line);
    }
    let l = &report.lineage;
    Ok(Done {
        report: json!({
            "outcome": format!("{:?}", report.outcome),
            "objects": l.totals.values().sum::<u64>(),
            "classes": l.counts.values().next().map_or(0, |c| c.len()),
            "channels": l.totals,
            "out": report.out,
        }),
        ..Done::default()
    })
}

fn process_config(s: &Resolved) -> Result<ProcessConfig, StepError> {
    let d = ProcessConfig::default();
    let ds = &d.settings;
    let mut recipe = shardline_preprocess::Recipe::new(
        s.u64_or("width", u64::from(ds.recipe.width))? as u32,
        s.u64_or("height", u64::from(ds.recipe.height))? as u32,
        s.named("mode", "gray, rgb")?.unwrap_or(ds.recipe.mode),
    );
    recipe.filter = s
        .named("filter", "nearest, bilinear, lanczos3")?
        .unwrap_or(ds.recipe.filter);
    if let Some(augment) = s.strings("augment") {
        recipe.augment = augment
            .iter()
            .map(|a| {
                serde_json::from_value(json!(a)).map_err(|_| {
                    StepError::invalid(format!("`augment` {a:?} is not one of flip, crop"))
                })
            })
            .collect::<Result<_, _>>()?;
    }
    recipe.max_pixels = s.u64_or("max_pixels", ds.recipe.max_pixels)?;
    recipe.jpeg_scaling = s.bool_or("jpeg_scaling", ds.recipe.jpeg_scaling);
    let distribution = match s.str("distribution") {
        Some(text) => text
            .parse()
            .map_err(|e: String| StepError::invalid(format!("`distribution`: {e}")))?,
        None => ds.distribution,
    };
    let augment_channels = if recipe.augment.is_empty() {
        Vec::new()
    } else {
        s.strings("augment_channels")
            .unwrap_or_else(|| vec!["train".to_string()])
    };
    Ok(ProcessConfig {
        inputs: s.table("inputs").into_iter().collect(),
        out: s.need_str("out")?,
        settings: shardline_process::job::Settings {
            instances: s.usize_or("instances", ds.instances)?,
            distribution,
            recipe,
            seed: s.u64_or("seed", ds.seed)?,
            augment_channels,
            shard_bytes: s.usize_or("shard_bytes", ds.shard_bytes)?,
            script: None,
            error_budget: s.float_or("error_budget", ds.error_budget),
        },
        max_attempts: s.usize_or("max_attempts", d.max_attempts)?,
        max_parallel: s.usize_or("max_parallel", d.max_parallel)?,
        force: s.bool_or("force", d.force),
        root: None,
        wait_timeout_s: d.wait_timeout_s,
    })
}

async fn process(
    s: &Resolved,
    cx: &Context<'_>,
    script: Option<String>,
) -> Result<Done, StepError> {
    let mut config = process_config(s)?;
    if let Some(script) = script {
        config.settings.script = Some(script);
        // The pipeline's retry policy decides whether a failed program runs again.
        config.max_attempts = 1;
        config.root = Some(cx.attempt_dir.join("root"));
    }
    let instances = config.settings.instances;
    let result = shardline_process::run(&config, Role::Launch(cx.launcher), cx.log).await;
    let instance_logs = keep_instance_logs(&config.out, cx.attempt_dir, instances);
    let report = result.map_err(classify_process)?;
    for line in report.summary() {
        cx.log.line(&line);
    }
    let (outcome, objects, samples, quarantined) = match &report.outcome {
        shardline_process::Outcome::Processed(r) => {
            ("processed", r.assigned, r.written, r.quarantined)
        }
        shardline_process::Outcome::Script { .. } => ("script", 0, 0, 0),
        shardline_process::Outcome::Unchanged => ("unchanged", 0, 0, 0),
        shardline_process::Outcome::Follower { .. } => ("follower", 0, 0, 0),
    };
    Ok(Done {
        report: json!({
            "outcome": outcome,
            "objects": objects,
            "samples": samples,
            "quarantined": quarantined,
            "instances": instances,
            "job": report.job,
            "out": report.out,
        }),
        instance_logs,
        instances,
        metrics: vec![("quarantined".into(), quarantined as f64)],
        ..Done::default()
    })
}

fn train_config(
    s: &Resolved,
    ranks: shardline_train::Ranks,
) -> Result<shardline_train::TrainConfig, StepError> {
    let d = shardline_train::TrainConfig::default();
    let model = match s.str("model").as_deref() {
        None => d.model.clone(),
        Some("bncnn") => shardline_train::ModelChoice::Bncnn,
        Some("cnn") => shardline_train::ModelChoice::Cnn,
        Some("mlp") => shardline_train::ModelChoice::Mlp,
        Some("reference") => shardline_train::ModelChoice::Reference,
        Some("resnet18") => shardline_train::ModelChoice::Resnet18,
        Some(other) => {
            return Err(StepError::invalid(format!(
                "`model` {other:?} is not one of bncnn, cnn, mlp, reference, resnet18"
            )));
        }
    };
    Ok(shardline_train::TrainConfig {
        data: s.need_str("data")?,
        out: s.need_str("out")?,
        ranks,
        schedule: shardline_train::Schedule {
            epochs: s.usize_or("epochs", d.schedule.epochs)?,
            batch: s.usize_or("batch", d.schedule.batch)?,
            lr: s.float_or("lr", d.schedule.lr),
            lr_scaling: s
                .named("lr_scaling", "linear, sqrt, none")?
                .unwrap_or(d.schedule.lr_scaling),
            seed: s.u64_or("seed", d.schedule.seed)?,
            bucket_bytes: s.usize_or("bucket_bytes", d.schedule.bucket_bytes)?,
            warmup_epochs: s.usize_or("warmup_epochs", d.schedule.warmup_epochs)?,
            decay: s
                .named("decay", "cosine, constant")?
                .unwrap_or(d.schedule.decay),
            shift: match s.str("shift").as_deref() {
                Some("auto") => None,
                Some("off") => Some(0),
                _ => match s.uint("shift")? {
                    Some(n) => Some(n as usize),
                    None => d.schedule.shift,
                },
            },
            patience: match s.str("patience").as_deref() {
                Some("off") => None,
                _ => match s.uint("patience")? {
                    Some(n) => Some(n as usize),
                    None => d.schedule.patience,
                },
            },
        },
        model,
        force: s.bool_or("force", d.force),
        device: s.str("device").unwrap_or(d.device.clone()),
        ..d
    })
}

/// The data-parallel workers a training step asks for.
pub fn train_workers(s: &Resolved) -> Result<usize, StepError> {
    let default_workers = match shardline_train::TrainConfig::default().ranks {
        shardline_train::Ranks::InProcess { workers } => workers,
        shardline_train::Ranks::Mpi { .. } => 1,
    };
    s.usize_or("workers", default_workers)
}

fn train_done(report: shardline_train::TrainReport, workers: usize, log: &StepLog<'_>) -> Done {
    let last = report.metrics.last();
    let mut metrics = Vec::new();
    if let Some(a) = report.test_accuracy {
        metrics.push(("test_accuracy".to_string(), a));
        log.line(&format!("train: test accuracy {:.2}%", 100.0 * a));
    }
    if let Some(m) = last {
        metrics.push(("validation_accuracy".to_string(), m.validation_accuracy));
        metrics.push(("train_loss".to_string(), m.train_loss));
    }
    Done {
        report: json!({
            "outcome": format!("{:?}", report.outcome),
            "test_accuracy": report.test_accuracy,
            "validation_accuracy": last.map(|m| m.validation_accuracy),
            "train_accuracy": last.map(|m| m.train_accuracy),
            "train_loss": last.map(|m| m.train_loss),
            "epochs": report.metrics.len(),
            "job": report.job,
            "out": report.out,
        }),
        instances: workers,
        metrics,
        ..Done::default()
    }
}

async fn train(s: &Resolved, cx: &Context<'_>) -> Result<Done, StepError> {
    let workers = train_workers(s)?;
    let config = train_config(s, shardline_train::Ranks::InProcess { workers })?;
    if let Some(ranks) = cx.ranks.filter(|_| workers > 1) {
        cx.log.line(&format!(
            "train: {workers} data-parallel ranks as processes of their own, {} epochs, batch {}, lr {}",
            config.schedule.epochs, config.schedule.batch, config.schedule.lr
        ));
        return as_ranks(Kind::Train, s, cx, ranks, workers).await;
    }
    cx.log.line(&format!(
        "train: {workers} data-parallel worker(s), {} epochs, batch {}, lr {}",
        config.schedule.epochs, config.schedule.batch, config.schedule.lr
    ));
    let report = shardline_train::run(&config, cx.log)
        .await
        .map_err(classify_train)?;
    Ok(train_done(report, workers, cx.log))
}

/// Starts the ranks of a `kind` step (train, transform) with `ranks`, waits for them, and reads
/// what rank 0 wrote.
async fn as_ranks(
    kind: Kind,
    s: &Resolved,
    cx: &Context<'_>,
    ranks: &RankLauncher,
    workers: usize,
) -> Result<Done, StepError> {
    let settings = cx.attempt_dir.join("settings.json");
    let done_file = cx.attempt_dir.join("done.json");
    let _ = std::fs::remove_file(&done_file);
    let text = serde_json::to_vec_pretty(&Value::Table(s.0.clone()).to_json())
        .map_err(StepError::infra)?;
    std::fs::write(&settings, text).map_err(StepError::infra)?;
    let mut command = tokio::process::Command::new(&ranks.program);
    command
        .args(&ranks.args)
        .arg(format!("--ntasks={workers}"))
        .args(&ranks.rank_args)
        .arg("--kind")
        .arg(kind.name())
        .arg("--settings")
        .arg(&settings)
        .arg("--done")
        .arg(&done_file)
        .arg("--logs")
        .arg(cx.attempt_dir)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let shown = format!(
        "{} {} --ntasks={workers} {}",
        ranks.program.display(),
        ranks.args.join(" "),
        ranks.rank_args.join(" ")
    );
    cx.log.line(&format!("{kind}: {shown}"));
    let output = command.output().await.map_err(|e| StepError {
        class: Class::Infrastructure,
        message: format!("cannot start the ranks ({shown}): {e}"),
    })?;
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        cx.log.line(line);
    }
    let instance_logs: Vec<(String, PathBuf)> = (0..workers)
        .map(|r| {
            let name = shardline_contract::instance::host(r);
            let path = cx.attempt_dir.join(format!("{name}.log"));
            (name, path)
        })
        .filter(|(_, p)| p.exists())
        .collect();
    if !output.status.success() {
        let errors: Vec<String> = instance_logs
            .iter()
            .filter_map(|(name, p)| {
                let text = std::fs::read_to_string(p).ok()?;
                let line = text.lines().rev().find(|l| l.starts_with("error: "))?;
                Some(format!("{name}: {}", line.trim_start_matches("error: ")))
            })
            .collect();
        return Err(StepError {
            class: Class::Infrastructure,
            message: format!(
                "the ranks failed ({}){}",
                output.status,
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(": {}", errors.join("; "))
                }
            ),
        });
    }
    let bytes = std::fs::read(&done_file).map_err(|e| {
        StepError::infra(format!(
            "the ranks exited, but rank 0 wrote no {} ({e})",
            done_file.display()
        ))
    })?;
    let mut done: Done = serde_json::from_slice(&bytes).map_err(StepError::infra)?;
    done.instance_logs = instance_logs;
    Ok(done)
}

/// One rank of a step started by a [`RankLauncher`] (`shardline pipeline rank`): reads the step's
/// resolved settings from `settings` (JSON), writes its own log as `<logs>/algo-N.log` and runs
/// the step's `kind` (`train` or `transform`) as rank `rank` of `size`.
pub async fn rank_job(
    kind: &str,
    settings: &Path,
    done: &Path,
    logs: &Path,
    rank: usize,
    size: Option<usize>,
) -> Result<(), StepError> {
    let text = std::fs::read(settings)
        .map_err(|e| StepError::infra(format!("{}: {e}", settings.display())))?;
    let resolved: Resolved = serde_json::from_slice::<BTreeMap<String, Value>>(&text)
        .map(Resolved)
        .map_err(|e| {
            StepError::invalid(format!(
                "{} is not a step's settings (a JSON object): {e}",
                settings.display()
            ))
        })?;
    let log_path = logs.join(format!("{}.log", shardline_contract::instance::host(rank)));
    let log = StepLog::create(&log_path, Box::new(|_: &str| {}))
        .map_err(|e| StepError::infra(format!("{}: {e}", log_path.display())))?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    log.line(&format!(
        "pipeline rank: rank {rank} of {} on host {}",
        size.map_or_else(|| "?".to_string(), |n| n.to_string()),
        host.trim()
    ));
    let result = match kind {
        "train" => train_rank(&resolved, rank, size, done, &log).await,
        "transform" => transform_rank(&resolved, rank, size, done, &log).await,
        other => Err(StepError::invalid(format!(
            "kind {other:?} is not train or transform"
        ))),
    };
    if let Err(e) = &result {
        log.line(&format!("error: {}", e.message));
    }
    result
}

/// One rank of a training step started by a [`RankLauncher`]: trains as rank `rank` of an MPI
/// job with the step's resolved `settings`; rank 0 writes its [`Done`] to `done` (atomically).
pub async fn train_rank(
    settings: &Resolved,
    rank: usize,
    size: Option<usize>,
    done: &Path,
    log: &StepLog<'_>,
) -> Result<(), StepError> {
    let workers = size.unwrap_or(train_workers(settings)?);
    let config = train_config(settings, shardline_train::Ranks::Mpi { rank, size })?;
    let report = shardline_train::run(&config, log)
        .await
        .map_err(classify_train)?;
    if rank == 0 {
        write_done(done, &train_done(report, workers, log))?;
    }
    Ok(())
}

async fn evaluate(s: &Resolved, cx: &Context<'_>) -> Result<Done, StepError> {
    let d = shardline_train::evaluate::EvaluateConfig::default();
    let config = shardline_train::evaluate::EvaluateConfig {
        model: s.need_str("model")?,
        data: s.need_str("data")?,
        channel: s.str("channel").unwrap_or(d.channel),
        device: s.str("device").unwrap_or(d.device),
    };
    let report = shardline_train::evaluate::run(&config)
        .await
        .map_err(classify_train)?;
    cx.log.line(&format!(
        "evaluate: accuracy {:.2}% on {} samples of channel {}",
        100.0 * report.accuracy,
        report.samples,
        config.channel
    ));
    Ok(Done {
        metrics: vec![("accuracy".into(), report.accuracy)],
        report: serde_json::to_value(&report).map_err(StepError::infra)?,
        ..Done::default()
    })
}

/// A digest of every default a step of `kind` takes for the settings it is not given (the
/// library configs' `Debug` forms, which name every field and value).
pub fn defaults_digest(kind: Kind) -> String {
    let text = match kind {
        Kind::Datagen => format!("{:?}", shardline_datagen::ShapesConfig::default()),
        Kind::Manifest => format!("{:?}", shardline_manifest::Config::default()),
        Kind::Process => format!("{:?}", ProcessConfig::default()),
        Kind::Train => format!("{:?}", shardline_train::TrainConfig::default()),
        Kind::Evaluate => format!("{:?}", shardline_train::evaluate::EvaluateConfig::default()),
        Kind::Transform => format!(
            "{:?}",
            shardline_serve::transform::TransformConfig::default()
        ),
        _ => String::new(),
    };
    shardline_lineage::Digest::of(text.as_bytes()).to_string()
}

async fn register(s: &Resolved, cx: &Context<'_>) -> Result<Done, StepError> {
    let url = s.str("registry").unwrap_or_else(|| cx.registry.to_string());
    let registry = shardline_registry::Registry::open(&url)
        .map_err(|e| StepError::invalid(format!("`registry` {url}: {e}")))?;
    let evaluation = s.0.get("evaluation").map(Value::to_json);
    // What is registered is served: it must load as the endpoint loads it.
    let model = s.need_str("model")?;
    shardline_serve::ModelFiles::check(&model)
        .await
        .map_err(|e| StepError::invalid(e.to_string().trim_start_matches("serve: ").to_string()))?;
    let record = registry
        .register(
            &s.need_str("name")?,
            &model,
            evaluation,
            s.str("description"),
        )
        .await
        .map_err(|e| match e {
            shardline_registry::Error::NotAModel(_) => StepError::invalid(e.to_string()),
            other => StepError::infra(other),
        })?;
    let artifact = registry.artifact_uri(&record);
    cx.log.line(&format!(
        "register: {}:{} in {url} ({artifact})",
        record.name, record.version
    ));
    let mut outputs = BTreeMap::new();
    outputs.insert("model".to_string(), artifact.clone());
    Ok(Done {
        report: json!({"name": record.name, "version": record.version, "artifact": artifact}),
        outputs,
        ..Done::default()
    })
}

fn transform_config(
    s: &Resolved,
) -> Result<shardline_serve::transform::TransformConfig, StepError> {
    let d = shardline_serve::transform::TransformConfig::default();
    let mut classifier = d.classifier.clone();
    if let Some(device) = s.str("device") {
        classifier.device = device;
    }
    Ok(shardline_serve::transform::TransformConfig {
        model: s.need_str("model")?,
        manifest: s.need_str("manifest")?,
        out: s.need_str("out")?,
        instances: s.usize_or("instances", d.instances)?,
        k: s.usize_or("k", d.k)?,
        batch: s.usize_or("batch", d.batch)?,
        force: s.bool_or("force", d.force),
        error_budget: s.float_or("error_budget", d.error_budget),
        classifier,
        ..d
    })
}

async fn transform_run(
    config: &shardline_serve::transform::TransformConfig,
    log: &StepLog<'_>,
) -> Result<Done, StepError> {
    let report = shardline_serve::transform::run(config, log)
        .await
        .map_err(|e| match e {
            shardline_serve::Error::Transform(m) => StepError::invalid(m),
            e @ shardline_serve::Error::BadInput { .. } => StepError::invalid(e.to_string()),
            other => StepError::infra(other),
        })?;
    log.line(&format!(
        "transform: {} of {} objects predicted ({} unreadable) into {}",
        report.predicted, report.objects, report.failed, report.predictions
    ));
    Ok(Done {
        report: json!({
            "objects": report.objects,
            "predicted": report.predicted,
            "failed": report.failed,
            "predictions": report.predictions,
        }),
        instances: config.instances,
        ..Done::default()
    })
}

async fn transform(s: &Resolved, cx: &Context<'_>) -> Result<Done, StepError> {
    let config = transform_config(s)?;
    if let Some(ranks) = cx.ranks.filter(|_| config.instances > 1) {
        cx.log.line(&format!(
            "transform: {} instances as processes of their own",
            config.instances
        ));
        return as_ranks(Kind::Transform, s, cx, ranks, config.instances).await;
    }
    transform_run(&config, cx.log).await
}

/// One instance of a transform step started by a [`RankLauncher`]: predicts its own share;
/// instance 0 waits for the others and writes the summary and its [`Done`] to `done`.
pub async fn transform_rank(
    settings: &Resolved,
    rank: usize,
    size: Option<usize>,
    done: &Path,
    log: &StepLog<'_>,
) -> Result<(), StepError> {
    let mut config = transform_config(settings)?;
    config.instances = size.unwrap_or(config.instances);
    config.rank = Some(rank);
    let d = transform_run(&config, log).await?;
    if rank == 0 {
        write_done(done, &d)?;
    }
    Ok(())
}

fn write_done(done: &Path, d: &Done) -> Result<(), StepError> {
    let tmp = done.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(d).map_err(StepError::infra)?,
    )
    .and_then(|()| std::fs::rename(&tmp, done))
    .map_err(|e| StepError::infra(format!("{}: {e}", done.display())))
}

async fn command(s: &Resolved, cx: &Context<'_>) -> Result<Done, StepError> {
    let program = s.need_str("program")?;
    let out = s.need_str("out")?;
    let mut done = match s.str("contract").as_deref() {
        Some("processing") => process(s, cx, Some(program)).await?,
        Some("training") => {
            let config = shardline_container::training::TrainingConfig {
                script: program,
                processes_per_host: 1,
                hyperparameters: s.table("hyperparameters"),
                channels: s.table("inputs"),
                data: s.str("data"),
                out: out.clone(),
                root: Some(cx.attempt_dir.join("root")),
                force: s.bool_or("force", false),
            };
            let report = shardline_container::training::run(&config, cx.log)
                .await
                .map_err(|e| {
                    use shardline_container::Error as E;
                    let class = match &e {
                        E::Failed { .. } => Class::Program,
                        E::Setting { .. } | E::BadInput { .. } | E::Start { .. } => Class::Invalid,
                        _ => Class::Infrastructure,
                    };
                    StepError {
                        class,
                        message: e.to_string(),
                    }
                })?;
            cx.log
                .line(&format!("command: model packed as {}", report.model));
            Done {
                report: json!({"model": report.model, "command": report.command}),
                instances: 1,
                ..Done::default()
            }
        }
        other => {
            return Err(StepError::invalid(format!(
                "`contract` {other:?} is not processing or training"
            )));
        }
    };
    // The user's own report: a JSON file the program wrote under `out` (a property file).
    if let Some(file) = s.str("report") {
        let store = Store::open(&out).map_err(StepError::infra)?;
        let bytes = store.get(&file).await.map_err(|e| {
            StepError::invalid(format!(
                "`report`: the program wrote no {file} under {out} ({e})"
            ))
        })?;
        done.report = serde_json::from_slice(&bytes).map_err(|e| {
            StepError::invalid(format!("`report`: {file} under {out} is not JSON ({e})"))
        })?;
    }
    Ok(done)
}
