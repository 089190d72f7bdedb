//! `shardline process`: distribute each channel to N instances and turn every object into
//! tensors in WebDataset shards (or run the user's script under the SageMaker Processing
//! contract).
//!
//! The same command line plays three roles:
//! - with no launcher identity in the environment it is the **local launcher**: it starts N copies
//!   of itself, supervises and retries them, keeps their logs, and finalises the job;
//! - started by the local launcher (`SHARDLINE_RANK` and `SHARDLINE_SUPERVISED` set) it is one
//!   **supervised instance**, reporting progress on stdout;
//! - started by mpirun, srun, a Kubernetes Indexed Job or SageMaker it is one **instance**; rank 0
//!   then waits for the others and finalises.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use indicatif::ProgressBar;
use shardline_contract::distribute::Distribution;
use shardline_contract::owner::{self, Stage};
use shardline_preprocess::{Augment, Filter, Mode, Recipe};
use shardline_process::identity::{self, Identity};
use shardline_process::instance::{self, Tick};
use shardline_process::job::{self, Job, Settings, parse_input_flag};
use shardline_process::launch::{self, Event, LocalProcesses, PROGRESS_PREFIX};
use shardline_process::{finalize, script};
use shardline_store::Store;

use crate::progress::Ui;

/// Flags of `shardline process`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// A channel and its objects: CHANNEL=URL, where URL is a SageMaker manifest (plain or
    /// augmented) or a store prefix. Repeat for each channel.
    #[arg(long = "input", value_name = "CHANNEL=URL", required = true)]
    pub inputs: Vec<String>,
    /// Where the shards, indexes, recipe, report, lineage and logs go.
    #[arg(long, value_name = "URL")]
    pub out: String,
    /// Number of processing instances. Under mpirun, srun, SageMaker or a Kubernetes Indexed Job
    /// the launcher's world size is used (and must agree if this is given).
    #[arg(long)]
    pub instances: Option<usize>,
    /// sharded-by-key: each instance a unique subset; fully-replicated: each instance everything.
    #[arg(long, default_value = "sharded-by-key")]
    pub distribution: String,
    /// Output size, WIDTHxHEIGHT (or one number for a square).
    #[arg(long, default_value = "64x64")]
    pub size: String,
    /// Colour mode of the tensors.
    #[arg(long, value_enum, default_value_t = ModeArg::Rgb)]
    pub mode: ModeArg,
    /// Resize filter.
    #[arg(long, value_enum, default_value_t = FilterArg::Bilinear)]
    pub filter: FilterArg,
    /// Deterministic augmentations, comma-separated: flip, crop.
    #[arg(long, value_delimiter = ',')]
    pub augment: Vec<AugmentArg>,
    /// The channels --augment applies to, comma-separated. The others (validation, test) are
    /// processed as they are, so that their metrics measure the real images.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "train",
        value_name = "CHANNELS"
    )]
    pub augment_channels: Vec<String>,
    /// Seed of the augmentations (each object's randomness also depends on its key).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Shards close once they pass this size (e.g. 64MiB, 500KiB, or bytes).
    #[arg(long, default_value = "64MiB")]
    pub shard_size: String,
    /// Images whose header declares more pixels are rejected before decoding.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub max_pixels: u64,
    /// Decode every JPEG at full size. By default a JPEG at least twice the size the resize needs
    /// is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (as Pillow's `draft()` does).
    #[arg(long)]
    pub full_decode: bool,
    /// Fraction of objects that may be quarantined (corrupt, truncated, not an image) before the
    /// job fails.
    #[arg(long, default_value_t = 0.001)]
    pub error_budget: f64,
    /// Attempts per instance (the local launcher retries a crashed instance on its share only).
    #[arg(long, default_value_t = 3)]
    pub max_attempts: usize,
    /// Redo instances that already finished this job.
    #[arg(long)]
    pub force: bool,
    /// Run this command once per instance under the SageMaker Processing contract instead of the
    /// built-in image processor. `{root}` is replaced by the instance's root folder.
    #[arg(long, value_name = "CMD")]
    pub script: Option<String>,
    /// The root of the processing container layout for --script (default: a temporary folder per
    /// instance); /opt/ml gives SageMaker's exact paths.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Under an external launcher, how long rank 0 waits for the other instances, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub wait_timeout: u64,
}

impl Args {
    /// The command line that makes an instance of this job: the same flags, spelled out, so
    /// that the local launcher can start instances whichever command started it (quickstart, say).
    fn instance_argv(&self) -> Vec<String> {
        let mut argv = vec!["process".to_string()];
        for input in &self.inputs {
            argv.extend(["--input".to_string(), input.clone()]);
        }
        fn value(v: &impl clap::ValueEnum) -> String {
            v.to_possible_value()
                .map(|p| p.get_name().to_string())
                .unwrap_or_default()
        }
        argv.extend([
            format!("--out={}", self.out),
            format!("--distribution={}", self.distribution),
            format!("--size={}", self.size),
            format!("--mode={}", value(&self.mode)),
            format!("--filter={}", value(&self.filter)),
            format!("--seed={}", self.seed),
            format!("--shard-size={}", self.shard_size),
            format!("--max-pixels={}", self.max_pixels),
            format!("--error-budget={}", self.error_budget),
            format!("--max-attempts={}", self.max_attempts),
            format!("--wait-timeout={}", self.wait_timeout),
        ]);
        if let Some(n) = self.instances {
            argv.push(format!("--instances={n}"));
        }
        if !self.augment.is_empty() {
            let list: Vec<String> = self.augment.iter().map(value).collect();
            argv.push(format!("--augment={}", list.join(",")));
            argv.push(format!(
                "--augment-channels={}",
                self.augment_channels.join(",")
            ));
        }
        if self.force {
            argv.push("--force".into());
        }
        if self.full_decode {
            argv.push("--full-decode".into());
        }
        if let Some(script) = &self.script {
            argv.push(format!("--script={script}"));
        }
        if let Some(root) = &self.root {
            argv.push(format!("--root={}", root.display()));
        }
        argv
    }
}

/// Colour modes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
    /// One channel.
    Gray,
    /// Three channels.
    Rgb,
}

/// Resize filters.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FilterArg {
    /// Nearest neighbour.
    Nearest,
    /// Bilinear.
    Bilinear,
    /// Lanczos 3.
    Lanczos3,
}

/// Augmentations.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AugmentArg {
    /// Random left-right mirror.
    Flip,
    /// Random crop of 80-100% of each side.
    Crop,
}

fn parse_size(text: &str) -> Result<(u32, u32)> {
    let bad = || {
        anyhow::anyhow!("process: --size {text:?} is not WIDTHxHEIGHT (e.g. 224x224) or one number")
    };
    let (w, h) = match text.split_once(['x', 'X']) {
        Some((w, h)) => (
            w.trim().parse().map_err(|_| bad())?,
            h.trim().parse().map_err(|_| bad())?,
        ),
        None => {
            let n = text.trim().parse().map_err(|_| bad())?;
            (n, n)
        }
    };
    if !(1..=8192).contains(&w) || !(1..=8192).contains(&h) {
        bail!("process: --size {text} is out of range; each side must be 1 to 8192");
    }
    Ok((w, h))
}

fn parse_bytes(text: &str) -> Result<usize> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: usize = number
        .parse()
        .with_context(|| format!("process: --shard-size {text:?} is not a size like 64MiB"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => bail!("process: --shard-size unit {other:?} is not B, KiB, MiB or GiB"),
    };
    if number == 0 {
        bail!("process: --shard-size must be above 0");
    }
    Ok(number * factor)
}

/// Validates the flags into the job's settings.
fn settings(args: &Args, instances: usize) -> Result<Settings> {
    let (width, height) = parse_size(&args.size)?;
    let mode = match args.mode {
        ModeArg::Gray => Mode::Gray,
        ModeArg::Rgb => Mode::Rgb,
    };
    let mut recipe = Recipe::new(width, height, mode);
    recipe.filter = match args.filter {
        FilterArg::Nearest => Filter::Nearest,
        FilterArg::Bilinear => Filter::Bilinear,
        FilterArg::Lanczos3 => Filter::Lanczos3,
    };
    recipe.augment = args
        .augment
        .iter()
        .map(|a| match a {
            AugmentArg::Flip => Augment::Flip,
            AugmentArg::Crop => Augment::Crop,
        })
        .collect();
    recipe.max_pixels = args.max_pixels;
    recipe.jpeg_scaling = !args.full_decode;
    let distribution: Distribution = args
        .distribution
        .parse()
        .map_err(|e: String| anyhow::anyhow!("process: --distribution: {e}"))?;
    if !(0.0..=1.0).contains(&args.error_budget) {
        bail!(
            "process: --error-budget {} must be a fraction from 0 to 1",
            args.error_budget
        );
    }
    if args.max_attempts == 0 {
        bail!("process: --max-attempts must be at least 1");
    }
    let augment_channels = if recipe.augment.is_empty() {
        Vec::new()
    } else {
        let inputs: Vec<String> = args
            .inputs
            .iter()
            .filter_map(|i| parse_input_flag(i).ok().map(|(channel, _)| channel))
            .collect();
        for channel in &args.augment_channels {
            if !inputs.contains(channel) {
                bail!(
                    "process: --augment applies to channel {channel:?} (--augment-channels, \
                     default train), which is not an input (the inputs are {}); name the \
                     channels to augment with --augment-channels",
                    inputs.join(", ")
                );
            }
        }
        args.augment_channels.clone()
    };
    Ok(Settings {
        instances,
        distribution,
        recipe,
        seed: args.seed,
        augment_channels,
        shard_bytes: parse_bytes(&args.shard_size)?,
        script: args.script.clone(),
        error_budget: args.error_budget,
    })
}

fn detect_identity(instances: Option<usize>) -> Result<Option<Identity>> {
    let config_path = std::env::var("SHARDLINE_RESOURCE_CONFIG")
        .unwrap_or_else(|_| "/opt/ml/config/resourceconfig.json".into());
    let config = std::fs::read_to_string(&config_path).ok();
    identity::detect(
        &|name| std::env::var(name).ok(),
        config.as_deref(),
        instances,
    )
    .map_err(|e| anyhow::anyhow!("process: instance identity: {e}"))
}

/// Runs the command in whichever role the environment gives it.
pub async fn run(args: Args, ui: &Ui) -> Result<()> {
    let identity = detect_identity(args.instances)?;
    let instances = identity
        .as_ref()
        .map(|i| i.size)
        .or(args.instances)
        .unwrap_or(1);
    let settings = settings(&args, instances)?;
    let mut inputs = Vec::new();
    for text in &args.inputs {
        inputs.push(job::parse_input_flag(text)?);
    }
    let out = Store::open(&args.out).with_context(|| format!("process: --out {}", args.out))?;
    job::check_out(&inputs, out.location())?;
    let job = job::load(&inputs, settings).await?;
    job::check_out_roots(&job, out.location())?;
    // The launcher (or every instance of an external launcher) claims --out; a supervised
    // instance works under its launcher's claim.
    if std::env::var_os("SHARDLINE_SUPERVISED").is_none() {
        owner::claim(&out, Stage::Process, job.digest().as_str(), args.force).await?;
    }
    match identity {
        Some(id) if std::env::var_os("SHARDLINE_SUPERVISED").is_some() => {
            supervised_instance(&job, &args, &id, &out).await
        }
        Some(id) => external_instance(&job, &args, &id, &out, ui).await,
        None => launcher(&job, &args, &out, ui).await,
    }
}

async fn run_instance(
    job: &Job,
    args: &Args,
    id: &Identity,
    out: &Store,
    progress: &(dyn Fn(Tick) + Send + Sync),
) -> Result<()> {
    tracing::info!(host = %id.host(), rank = id.rank, size = id.size, source = id.source, "instance starting");
    if job.settings.script.is_some() {
        script::run(
            job,
            id.rank,
            out,
            args.root.as_deref(),
            args.force,
            progress,
        )
        .await?;
    } else {
        let result = instance::run(job, id.rank, out, args.force, progress).await?;
        tracing::info!(
            host = %result.host,
            seconds = result.seconds,
            records_per_second = result.records_per_second,
            quarantined = result.quarantine.len(),
            "instance finished"
        );
    }
    Ok(())
}

async fn supervised_instance(job: &Job, args: &Args, id: &Identity, out: &Store) -> Result<()> {
    let last = Mutex::new(Instant::now() - Duration::from_secs(1));
    let progress = |tick: Tick| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if tick.done == tick.total || last.elapsed() > Duration::from_millis(200) {
            *last = Instant::now();
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(
                stdout,
                "{PROGRESS_PREFIX}{} {} {}",
                tick.done, tick.total, tick.errors
            );
            let _ = stdout.flush();
        }
    };
    run_instance(job, args, id, out, &progress).await
}

async fn external_instance(
    job: &Job,
    args: &Args,
    id: &Identity,
    out: &Store,
    ui: &Ui,
) -> Result<()> {
    // Every rank sees the finished job's record and leaves its log, report and lineage as
    // they are. (On a first run there is no record until rank 0 finalises.)
    if already_done(job, args, out, ui).await? {
        return Ok(());
    }
    let bar = ui.bar(&id.host(), Some(0), "objects");
    let progress = |tick: Tick| {
        bar.set_length(tick.total);
        bar.set_position(tick.done);
    };
    let result = run_instance(job, args, id, out, &progress).await;
    bar.finish_and_clear();
    // The instance's own log, kept under the output whatever happened.
    let log = crate::log_buffer();
    out.put(&format!("logs/{}.log", id.host()), Bytes::from(log))
        .await?;
    result?;
    if id.rank != 0 {
        ui.say(format!(
            "process: {} finished; rank 0 finalises the job",
            id.host()
        ));
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(args.wait_timeout);
    let results = loop {
        let results = finalize::gather(job, out).await?;
        if results.iter().all(Option::is_some) {
            break results.into_iter().flatten().collect::<Vec<_>>();
        }
        if Instant::now() > deadline {
            let missing: Vec<String> = results
                .iter()
                .enumerate()
                .filter(|(_, r)| r.is_none())
                .map(|(rank, _)| identity::host(rank))
                .collect();
            return Err(shardline_process::Error::Timeout {
                seconds: args.wait_timeout,
                missing: missing.join(", "),
                logs: out.uri_of("logs/"),
            }
            .into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    summarise(job, out, &results, ui).await
}

/// Whether `out` already holds this job's finished output (its lineage record names the job),
/// for the built-in processor and scripts alike; then a rerun touches nothing, unless --force.
async fn already_done(job: &Job, args: &Args, out: &Store, ui: &Ui) -> Result<bool> {
    if !args.force
        && let Some(bytes) = out.get_opt("lineage.json").await?
        && let Ok(lineage) = serde_json::from_slice::<serde_json::Value>(&bytes)
        && lineage["job"].as_str() == Some(job.digest().as_str())
    {
        ui.say(format!(
            "process: {} already holds this job's output; nothing to do (--force to redo)",
            out.uri()
        ));
        return Ok(true);
    }
    Ok(false)
}

async fn launcher(job: &Job, args: &Args, out: &Store, ui: &Ui) -> Result<()> {
    if already_done(job, args, out, ui).await? {
        return Ok(());
    }
    let n = job.settings.instances;
    let logs = tempfile::tempdir().context("process: a temporary folder for the logs")?;
    let bars: Vec<ProgressBar> = (0..n)
        .map(|rank| ui.bar(&identity::host(rank), Some(0), "objects"))
        .collect();
    let program = std::env::current_exe().context("process: cannot find this executable")?;
    let launcher = LocalProcesses {
        program,
        args: args.instance_argv().into_iter().map(Into::into).collect(),
    };
    let retries = Mutex::new(Vec::new());
    let on_event = |event: Event| match event {
        Event::Progress(rank, tick) => {
            bars[rank].set_length(tick.total);
            bars[rank].set_position(tick.done);
            if tick.errors > 0 {
                bars[rank].set_message(format!("{} ({} err)", identity::host(rank), tick.errors));
            }
        }
        Event::Retry {
            rank,
            attempt,
            reason,
        } => {
            tracing::warn!(host = %identity::host(rank), attempt, %reason, "instance failed; retrying its share");
            retries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!(
                    "{} attempt {attempt} {reason}",
                    identity::host(rank)
                ));
        }
        Event::Done(rank) => bars[rank].finish(),
    };
    let supervised =
        launch::supervise(&launcher, n, args.max_attempts, logs.path(), &on_event).await;
    for bar in &bars {
        bar.finish_and_clear();
    }
    // Logs are kept under the output whatever happened, a dead instance's included.
    let mut log_urls = HashMap::new();
    for rank in 0..n {
        let path = launch::log_path(logs.path(), rank);
        if let Ok(bytes) = std::fs::read(&path) {
            let key = format!("logs/{}.log", identity::host(rank));
            out.put(&key, Bytes::from(bytes)).await?;
            log_urls.insert(rank, out.uri_of(&key));
        }
    }
    for line in retries.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        ui.say(format!("process: retried {line}"));
    }
    if let Err(shardline_process::Error::InstanceFailed {
        host,
        attempts,
        reason,
        ..
    }) = supervised
    {
        let rank = host
            .trim_start_matches("algo-")
            .parse::<usize>()
            .unwrap_or(1)
            - 1;
        let log = log_urls.get(&rank).cloned().unwrap_or_default();
        return Err(shardline_process::Error::InstanceFailed {
            host,
            attempts,
            reason,
            log,
        }
        .into());
    }
    supervised?;
    let results: Vec<_> = finalize::gather(job, out)
        .await?
        .into_iter()
        .flatten()
        .collect();
    if results.len() != n {
        bail!(
            "process: an instance exited successfully without its result record; see the logs under {}",
            out.uri_of("logs/")
        );
    }
    summarise(job, out, &results, ui).await
}

async fn summarise(
    job: &Job,
    out: &Store,
    results: &[instance::InstanceResult],
    ui: &Ui,
) -> Result<()> {
    if job.settings.script.is_some() {
        let report = script::finalize(job, out, results).await?;
        ui.say(format!(
            "process: the script ran on {} instance(s); outputs under {}",
            report.instances,
            out.uri()
        ));
        return Ok(());
    }
    let report = finalize::finalize(job, out, results).await?;
    ui.say(format!(
        "process: {} objects → {} samples in {} instance(s), {} quarantined; outputs under {}",
        report.assigned,
        report.written,
        results.len(),
        report.quarantined,
        out.uri()
    ));
    for line in &report.instances {
        let counts: Vec<String> = line
            .channels
            .iter()
            .map(|(c, [a, w, q])| format!("{c}: {w}/{a} ({q} quarantined)"))
            .collect();
        ui.say(format!(
            "  {}: {} — {:.0} objects/s",
            line.host,
            counts.join(", "),
            line.records_per_second
        ));
    }
    if !report.empty_instances.is_empty() {
        ui.say(format!(
            "  note: {} received no object (fewer objects than instances) and wrote empty outputs",
            report.empty_instances.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_byte_counts_parse() {
        assert_eq!(parse_size("224x224").expect("ok"), (224, 224));
        assert_eq!(parse_size("32").expect("ok"), (32, 32));
        assert!(parse_size("0x3").is_err());
        assert!(parse_size("axb").is_err());
        assert_eq!(parse_bytes("64MiB").expect("ok"), 64 << 20);
        assert_eq!(parse_bytes("500KiB").expect("ok"), 500 << 10);
        assert_eq!(parse_bytes("1000").expect("ok"), 1000);
        assert!(parse_bytes("3 parsecs").is_err());
    }
}
