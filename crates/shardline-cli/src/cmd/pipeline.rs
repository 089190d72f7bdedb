//! `shardline pipeline ...`, `shardline logs` and `shardline lineage`: flags → the pipeline
//! library ([`shardline_pipeline`]) → print.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use shardline_pipeline::db::{Db, Execution};
use shardline_pipeline::def::parse_overrides;
use shardline_pipeline::{Definition, Event, Options, Runner, Summary, report};
use shardline_process::launch::LocalProcesses;

use crate::progress::Ui;

/// Where the execution store is.
#[derive(Debug, Clone, clap::Args)]
pub struct State {
    /// The state directory: the execution store (state.db), logs, reports, OpenLineage events.
    #[arg(
        long,
        env = "SHARDLINE_STATE",
        default_value = ".shardline",
        value_name = "DIR"
    )]
    pub state: PathBuf,
}

/// Flags of `pipeline run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The pipeline definition (TOML).
    pub file: PathBuf,
    /// A parameter's value, KEY=VALUE (repeat for each).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Run every step; use no cached result.
    #[arg(long)]
    pub no_cache: bool,
    /// Steps at once, at most (default: the definition's max_parallel).
    #[arg(long)]
    pub max_parallel: Option<usize>,
    /// Also post OpenLineage events to this URL (Marquez: http://host:5000/api/v1/lineage).
    #[arg(long, env = "SHARDLINE_OPENLINEAGE_URL", value_name = "URL")]
    pub openlineage_url: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub state: State,
}

/// Where the steps run.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// local: in this process; slurm: each step a Slurm job (sbatch, with afterok dependencies on
    /// its inputs' jobs); the state directory, this binary and local data must be on a file
    /// system every node shares.
    #[arg(long, value_enum, default_value = "local")]
    pub engine: EngineArg,
    /// One more sbatch argument for every step's job (repeat): --sbatch-arg=--partition=cpu.
    #[arg(long = "sbatch-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub sbatch_args: Vec<String>,
}

/// The engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    /// This process.
    Local,
    /// Slurm jobs.
    Slurm,
}

impl EngineArgs {
    fn engine(&self) -> Result<shardline_pipeline::slurm::Engine> {
        use shardline_pipeline::slurm::{Engine, SlurmEngine};
        Ok(match self.engine {
            EngineArg::Local => {
                if !self.sbatch_args.is_empty() {
                    bail!("pipeline: --sbatch-arg needs --engine slurm");
                }
                Engine::Local
            }
            EngineArg::Slurm => {
                // What the engine sets for every step's job: overriding it would lose the logs,
                // the dependency chain or the task count.
                const SET: &[&str] = &[
                    "--output",
                    "-o",
                    "--dependency",
                    "-d",
                    "--ntasks",
                    "-n",
                    "--chdir",
                    "-D",
                    "--job-name",
                    "-J",
                    "--kill-on-invalid-dep",
                    "--parsable",
                ];
                for arg in &self.sbatch_args {
                    let flag = arg.split_once('=').map_or(arg.as_str(), |(f, _)| f);
                    if arg.trim().is_empty() {
                        bail!(
                            "pipeline: an empty --sbatch-arg; give sbatch options such as --sbatch-arg=--partition=cpu"
                        );
                    }
                    if SET.contains(&flag)
                        || (flag.len() > 2
                            && SET.iter().any(|s| {
                                s.len() == 2 && flag.starts_with(s) && !flag.starts_with("--")
                            }))
                    {
                        bail!(
                            "pipeline: --sbatch-arg={arg}: the Slurm engine sets {flag} for every step's job (logs, dependencies, tasks); leave it out"
                        );
                    }
                }
                Engine::Slurm(SlurmEngine {
                    program: std::env::current_exe()
                        .context("pipeline: cannot find this executable")?,
                    sbatch_args: self.sbatch_args.clone(),
                    mpi: cfg!(feature = "mpi"),
                    poll: Duration::from_millis(500),
                })
            }
        })
    }
}

/// The `pipeline` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Validate a definition and run it as a new execution.
    Run(RunArgs),
    /// Run an execution again: its failed, stopped and not-yet-run steps, and every step whose
    /// cache key no longer matches.
    Resume {
        /// The execution (its id, or `last`).
        execution: String,
        /// Change a parameter, KEY=VALUE.
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Also post OpenLineage events to this URL.
        #[arg(long, env = "SHARDLINE_OPENLINEAGE_URL", value_name = "URL")]
        openlineage_url: Option<String>,
        #[command(flatten)]
        engine: EngineArgs,
        #[command(flatten)]
        state: State,
    },
    /// (Inside a Slurm job.) Runs one step of an execution, as the Slurm engine submitted it.
    #[command(hide = true)]
    Step {
        /// The execution.
        execution: String,
        /// The step.
        step: String,
        /// The coordinator's run file.
        #[arg(long, value_name = "FILE")]
        run: PathBuf,
        #[command(flatten)]
        state: State,
    },
    /// (Started by `srun --mpi=pmix` inside a step's job.) One rank of a training step.
    #[command(hide = true)]
    Rank {
        /// The step's kind: train or transform.
        #[arg(long, default_value = "train")]
        kind: String,
        /// The step's resolved settings (JSON).
        #[arg(long, value_name = "FILE")]
        settings: PathBuf,
        /// Where rank 0 writes what the step produced.
        #[arg(long, value_name = "FILE")]
        done: PathBuf,
        /// Where each rank writes its log (algo-1.log, ...).
        #[arg(long, value_name = "DIR")]
        logs: PathBuf,
    },
    /// Show, before anything runs, which steps would run, which come from the cache, and why.
    Plan {
        /// A definition file, or an execution id (what `resume` would do).
        target: String,
        /// A parameter's value, KEY=VALUE.
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        #[command(flatten)]
        state: State,
    },
    /// Write an orchestrator's definition of a pipeline (a SageMaker Pipelines definition,
    /// JSON); what it cannot express is an error naming each step.
    Export {
        /// The pipeline definition (TOML).
        file: PathBuf,
        /// The orchestrator.
        #[arg(long, value_enum)]
        to: ExportTarget,
        /// Write here (atomically) instead of to stdout. (Its id is not `out`, so that the steps'
        /// `out` settings in messages are not shown as this flag.)
        #[arg(long = "out", id = "export_file", value_name = "FILE")]
        out: Option<PathBuf>,
        /// A parameter's default in the export, KEY=VALUE (repeat for each).
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// The Shardline container image every step runs (an ECR image URI).
        #[arg(long, value_name = "URI")]
        image: String,
        /// The IAM role the jobs run as.
        #[arg(long, value_name = "ARN")]
        role: String,
        /// Where outputs whose `out` is not an S3 URI go (s3://BUCKET/PREFIX).
        #[arg(long, value_name = "S3URI")]
        bucket: Option<String>,
    },
    /// Validate a definition: every problem, with its line and column.
    Validate {
        /// The definition file.
        file: PathBuf,
    },
    /// The executions, newest first.
    List {
        #[command(flatten)]
        state: State,
    },
    /// One execution: its steps with status, duration, cache hit or why not, attempts,
    /// instances and key metrics.
    Show {
        /// The execution (its id, or `last`).
        execution: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: State,
    },
}

/// The orchestrators `pipeline export` writes for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportTarget {
    /// SageMaker Pipelines (definition JSON, version 2020-12-01).
    Sagemaker,
}

/// Writes `text` to `path` through a temporary file in the same folder, renamed into place.
pub(crate) fn write_atomically(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    // A link is followed (the file it names is replaced, not the link); what is not a regular
    // file (a terminal, a pipe, /dev/stdout) is written to as it is, since it cannot be renamed
    // over.
    let target = match std::fs::canonicalize(path) {
        Ok(real) => real,
        Err(_) => path.to_path_buf(),
    };
    if let Ok(meta) = std::fs::metadata(&target)
        && !meta.is_file()
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&target)
            .with_context(|| format!("cannot write {}", path.display()))?;
        return file
            .write_all(text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()));
    }
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    // The file keeps the mode of the one it replaces, or gets the usual 0644.
    let mode = std::fs::metadata(&target).map_or(0o644, |m| m.permissions().mode() & 0o7777);
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(&target)
        .with_context(|| format!("cannot rename into {}", path.display()))?;
    Ok(())
}

/// Prints `text` on stdout; a closed or full stdout is an error, not a panic.
pub(crate) fn print_text(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to standard output")
}

/// Flags of `shardline logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The execution (its id, or `last`).
    pub execution: String,
    /// The step.
    pub step: String,
    /// One instance's log (algo-1, algo-2, ...); default the step's own log.
    #[arg(long)]
    pub instance: Option<String>,
    /// The attempt (default the latest).
    #[arg(long)]
    pub attempt: Option<i64>,
    /// Keep printing as the log grows, until the step ends.
    #[arg(long, short)]
    pub follow: bool,
    #[command(flatten)]
    pub state: State,
}

/// Flags of `shardline lineage`.
#[derive(Debug, clap::Args)]
pub struct LineageArgs {
    /// A URI or path, a content digest (sha256:...), or model:NAME[:VERSION] in the registry.
    pub artifact: String,
    /// As JSON.
    #[arg(long)]
    pub json: bool,
    /// The registry model:NAME is looked up in (default: $SHARDLINE_REGISTRY or
    /// ~/.shardline/registry).
    #[arg(long, value_name = "URL")]
    pub registry: Option<String>,
    #[command(flatten)]
    pub state: State,
}

/// Reads and validates a definition file.
pub fn load(file: &Path) -> Result<Definition> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("pipeline: cannot read {}", file.display()))?;
    Ok(shardline_pipeline::parse(
        &file.display().to_string(),
        &text,
    )?)
}

fn launcher() -> Result<LocalProcesses> {
    Ok(LocalProcesses {
        program: std::env::current_exe().context("pipeline: cannot find this executable")?,
        args: vec!["instance".into()],
        env: Vec::new(),
    })
}

/// `pipeline step`: one step inside its Slurm job. Processing instances are job steps of their
/// own (`srun --ntasks=1 --exact`); a training step's ranks one job step (`srun --mpi=pmix`).
async fn step_job(execution: &str, step: &str, run: &Path, state: &State) -> Result<()> {
    let exe = std::env::current_exe().context("pipeline: cannot find this executable")?;
    let mut options = Options::new(&state.state, super::model::default_registry());
    if cfg!(feature = "mpi") {
        options.ranks = Some(shardline_pipeline::run::RankLauncher {
            program: "srun".into(),
            args: vec!["--mpi=pmix".into(), "--kill-on-bad-exit=1".into()],
            rank_args: vec![exe.display().to_string(), "pipeline".into(), "rank".into()],
        });
    }
    let launcher = LocalProcesses {
        program: "srun".into(),
        args: ["--nodes=1", "--ntasks=1", "--exact", "--kill-on-bad-exit=1"]
            .iter()
            .map(Into::into)
            .chain([exe.into_os_string(), "instance".into()])
            .collect(),
        env: Vec::new(),
    };
    let print = |event: &Event| match event {
        Event::Line { text, .. } => println!("{text}"),
        Event::Started { step, attempt, .. } => println!("step {step}: attempt {attempt}"),
        Event::Finished {
            step,
            status,
            reason,
            ..
        } => println!(
            "step {step}: {status}{}",
            reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
    };
    let runner = Runner {
        options: &options,
        launcher: &launcher,
        on_event: &print,
    };
    let status = runner.step_job(execution, step, run).await?;
    match status.as_str() {
        "succeeded" | "cached" | "skipped" => Ok(()),
        other => bail!("pipeline: step {step} of execution {execution} {other}"),
    }
}

/// `pipeline rank`: one rank of a training or transform step (rank and world size from the
/// launcher).
async fn rank(kind: &str, settings: &Path, done: &Path, logs: &Path) -> Result<()> {
    let (rank, size) = super::train::launcher_rank()?.context(
        "pipeline rank: no launcher's rank in the environment; it is started by srun --mpi=pmix (or mpirun)",
    )?;
    shardline_pipeline::run::rank_job(kind, settings, done, logs, rank, size)
        .await
        .map_err(|e| anyhow::anyhow!("pipeline rank {rank}: {}", e.message))
}

/// Resolves `last` to the newest execution.
fn execution_id(db: &Db, id: &str) -> Result<String> {
    if id != "last" {
        return Ok(id.to_string());
    }
    db.executions()?
        .first()
        .map(|e| e.id.clone())
        .context("pipeline: there is no execution yet in this state directory")
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stopped() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

fn printer(ui: &Ui) -> impl Fn(&Event) + Send + Sync + '_ {
    move |event: &Event| match event {
        Event::Started {
            step,
            kind,
            attempt,
        } => ui.say(if *attempt > 1 {
            format!("▶ {step} ({kind}), attempt {attempt}")
        } else {
            format!("▶ {step} ({kind})")
        }),
        Event::Line { step, text } => ui.say(format!("  {step} │ {text}")),
        Event::Finished {
            step,
            status,
            reason,
            seconds,
        } => {
            let mark = match status.as_str() {
                "succeeded" => "✓",
                "cached" => "=",
                "failed" => "✗",
                _ => "-",
            };
            let reason = reason.as_deref().unwrap_or("");
            let time = if *seconds > 0.0 {
                format!(" in {seconds:.1} s")
            } else {
                String::new()
            };
            ui.say(format!("{mark} {step} {status}{time}  {reason}"));
        }
    }
}

fn print_summary(ui: &Ui, db: &Db, summary: &Summary) {
    ui.say("");
    for line in report::summary(db, summary) {
        ui.say(line);
    }
}

fn fail_unless_succeeded(summary: &Summary) -> Result<()> {
    let e = &summary.execution;
    match e.status.as_str() {
        "succeeded" => Ok(()),
        "stopped" => bail!(
            "pipeline: execution {} was stopped; `shardline pipeline resume {}` continues it",
            e.id,
            e.id
        ),
        _ => bail!(
            "pipeline: execution {} {}: {}; fix it and `shardline pipeline resume {}` (logs: `shardline logs {} STEP`)",
            e.id,
            e.status,
            e.message.as_deref().unwrap_or("a step failed"),
            e.id,
            e.id
        ),
    }
}

/// Runs a definition and prints its progress and summary.
pub async fn run_definition(def: &Definition, args: &RunArgs, ui: &Ui) -> Result<Summary> {
    let overrides = parse_overrides(&args.params).map_err(anyhow::Error::msg)?;
    let mut options = Options::new(&args.state.state, super::model::default_registry());
    options.no_cache = args.no_cache;
    options.max_parallel = args.max_parallel;
    options.openlineage_url = args.openlineage_url.clone();
    options.engine = args.engine.engine()?;
    let launcher = launcher()?;
    let print = printer(ui);
    let runner = Runner {
        options: &options,
        launcher: &launcher,
        on_event: &print,
    };
    let summary = runner.run(def, &overrides, stopped()).await?;
    let db = Db::open(&args.state.state)?;
    print_summary(ui, &db, &summary);
    Ok(summary)
}

fn show(db: &Db, e: &Execution, json: bool, ui: &Ui) -> Result<()> {
    if json {
        crate::progress::out(&serde_json::to_string_pretty(&report::show_json(db, e)?)?);
        return Ok(());
    }
    for line in report::show(db, e)? {
        ui.say(line);
    }
    Ok(())
}

/// Runs a `pipeline` subcommand.
pub async fn run(command: Command, ui: &Ui) -> Result<()> {
    match command {
        Command::Run(args) => {
            let def = load(&args.file)?;
            let summary = run_definition(&def, &args, ui).await?;
            fail_unless_succeeded(&summary)
        }
        Command::Resume {
            execution,
            params,
            openlineage_url,
            engine,
            state,
        } => {
            let db = Db::open(&state.state)?;
            let id = execution_id(&db, &execution)?;
            let overrides = parse_overrides(&params).map_err(anyhow::Error::msg)?;
            let mut options = Options::new(&state.state, super::model::default_registry());
            options.openlineage_url = openlineage_url;
            options.engine = engine.engine()?;
            let launcher = launcher()?;
            let print = printer(ui);
            let runner = Runner {
                options: &options,
                launcher: &launcher,
                on_event: &print,
            };
            let summary = runner.resume(&id, &overrides, stopped()).await?;
            print_summary(ui, &db, &summary);
            fail_unless_succeeded(&summary)
        }
        Command::Plan {
            target,
            params,
            state,
        } => {
            let overrides = parse_overrides(&params).map_err(anyhow::Error::msg)?;
            let options = Options::new(&state.state, super::model::default_registry());
            let launcher = launcher()?;
            let noop = |_: &Event| {};
            let runner = Runner {
                options: &options,
                launcher: &launcher,
                on_event: &noop,
            };
            let (def, resume) = if Path::new(&target).is_file() {
                (load(Path::new(&target))?, None)
            } else {
                let db = Db::open(&state.state)?;
                let id = execution_id(&db, &target)?;
                let (def, _) = shardline_pipeline::exec::load(&db, &id)?;
                (def, Some(id))
            };
            let lines = runner.plan(&def, &overrides, resume.as_deref()).await?;
            ui.say(format!(
                "plan of pipeline {} ({} steps){}:",
                def.name,
                def.steps.len(),
                resume
                    .as_deref()
                    .map(|id| format!(", resuming {id}"))
                    .unwrap_or_default()
            ));
            for l in &lines {
                ui.say(format!(
                    "  {:<14} {:<10} {:<7} {}",
                    l.step, l.kind, l.action, l.why
                ));
            }
            Ok(())
        }
        Command::Export {
            file,
            to: ExportTarget::Sagemaker,
            out,
            params,
            image,
            role,
            bucket,
        } => {
            let def = load(&file)?;
            let options = shardline_pipeline::export::ExportOptions {
                image,
                role,
                bucket,
                params: parse_overrides(&params).map_err(anyhow::Error::msg)?,
                ..Default::default()
            };
            let json = shardline_pipeline::export::sagemaker(&def, &options)?;
            let text = serde_json::to_string_pretty(&json)? + "\n";
            match out {
                Some(path) => {
                    write_atomically(&path, &text)?;
                    ui.say(format!(
                        "pipeline {}: SageMaker definition written to {}",
                        def.name,
                        path.display()
                    ));
                }
                None => print_text(&text)?,
            }
            Ok(())
        }
        Command::Step {
            execution,
            step,
            run,
            state,
        } => step_job(&execution, &step, &run, &state).await,
        Command::Rank {
            kind,
            settings,
            done,
            logs,
        } => rank(&kind, &settings, &done, &logs).await,
        Command::Validate { file } => {
            let def = load(&file)?;
            ui.say(format!(
                "pipeline {}: valid; {} parameters, {} steps",
                def.name,
                def.params.len(),
                def.steps.len()
            ));
            Ok(())
        }
        Command::List { state } => {
            // Reading commands never create a store.
            let db = Db::open_read_only(&state.state)?;
            let executions = db.executions()?;
            if executions.is_empty() {
                ui.say(format!(
                    "no executions in {} yet; `shardline pipeline run FILE` starts one",
                    state.state.display()
                ));
            }
            for e in executions {
                let steps = db.steps(&e.id)?;
                let cached = steps.iter().filter(|s| s.status == "cached").count();
                let ran = steps.iter().filter(|s| s.status == "succeeded").count();
                let when = chrono::DateTime::from_timestamp(e.started as i64, 0)
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default();
                ui.say(format!(
                    "{}  {:<14} {:<11} {when}  {ran} ran, {cached} cached of {}",
                    e.id,
                    e.pipeline,
                    e.shown_status(),
                    steps.len()
                ));
            }
            Ok(())
        }
        Command::Show {
            execution,
            json,
            state,
        } => {
            let db = Db::open_read_only(&state.state)?;
            let id = execution_id(&db, &execution)?;
            let e = db.execution(&id)?.with_context(|| {
                format!("pipeline: no execution {id}; `shardline pipeline list` shows them")
            })?;
            show(&db, &e, json, ui)
        }
    }
}

/// `shardline logs`.
pub async fn logs(args: LogsArgs) -> Result<()> {
    let db = Db::open_read_only(&args.state.state)?;
    let id = execution_id(&db, &args.execution)?;
    let choice = report::step_log(&db, &id, &args.step, args.instance.as_deref(), args.attempt)
        .map_err(|e| anyhow::anyhow!("logs: {e}"))?;
    if let Some(source) = &choice.cached_from {
        eprintln!(
            "logs: step {} of {id} came from the cache; these are its logs in execution {source}",
            args.step
        );
    }
    let path = &choice.path;
    let mut offset = 0u64;
    loop {
        let bytes = std::fs::read(path).with_context(|| format!("logs: {}", path.display()))?;
        if (bytes.len() as u64) > offset {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes[offset as usize..])?;
            out.flush()?;
            offset = bytes.len() as u64;
        }
        if !args.follow {
            return Ok(());
        }
        let running = db
            .steps(&id)?
            .into_iter()
            .find(|s| s.step == args.step)
            .is_some_and(|s| matches!(s.status.as_str(), "running" | "pending"));
        let alive = db
            .execution(&id)?
            .is_some_and(|e| e.shown_status() == "running");
        if !(running && alive) {
            // One last read catches lines written just before the end.
            let bytes = std::fs::read(path)?;
            if (bytes.len() as u64) > offset {
                use std::io::Write as _;
                std::io::stdout().write_all(&bytes[offset as usize..])?;
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `shardline lineage`.
pub async fn lineage(args: LineageArgs, ui: &Ui) -> Result<()> {
    let db = Db::open_read_only(&args.state.state)?;
    let artifact = match args.artifact.strip_prefix("model:") {
        Some(reference) => {
            let url = args
                .registry
                .clone()
                .unwrap_or_else(super::model::default_registry);
            let registry = shardline_registry::Registry::open(&url)?;
            let reference = shardline_registry::Reference::parse(reference)?;
            let (record, _) = registry.resolve(&reference).await?;
            registry.artifact_uri(&record)
        }
        None => {
            let path = Path::new(&args.artifact);
            if path.exists() {
                path.canonicalize()?.display().to_string()
            } else {
                args.artifact.clone()
            }
        }
    };
    let up = shardline_pipeline::trace::upstream(&db, &artifact)?;
    let down = shardline_pipeline::trace::downstream(&db, &artifact)?;
    if up.is_none() && down.next.is_empty() {
        bail!(
            "lineage: no step of any execution in {} read or wrote {artifact}; give a path, URI or digest that a pipeline step used",
            args.state.state.display()
        );
    }
    if args.json {
        crate::progress::out(&serde_json::to_string_pretty(
            &serde_json::json!({"artifact": artifact, "upstream": up, "downstream": down}),
        )?);
        return Ok(());
    }
    ui.say(format!("where {artifact} came from:"));
    match &up {
        Some(node) => {
            for line in shardline_pipeline::trace::render(node, true) {
                ui.say(format!("  {line}"));
            }
        }
        None => ui.say("  (no step wrote it: a raw input)"),
    }
    ui.say("what used it:");
    if down.next.is_empty() {
        ui.say("  (nothing yet)");
    }
    for child in &down.next {
        for line in shardline_pipeline::trace::render(child, false) {
            ui.say(format!("  {line}"));
        }
    }
    Ok(())
}
