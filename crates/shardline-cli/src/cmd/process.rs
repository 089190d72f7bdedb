//! `shardline process`: distribute each channel to N instances and turn every object into
//! tensors in WebDataset shards (or run the user's script under the SageMaker Processing
//! contract).
//!
//! Flags → [`ProcessConfig`] → [`shardline_process::run`] → print. With no launcher identity in
//! the environment the command is the **local launcher** (instances are `shardline instance`
//! processes, each given its job as JSON on stdin); started by mpirun, srun, a Kubernetes Indexed
//! Job or SageMaker it is one **instance** of theirs, and rank 0 finalises.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use shardline_contract::distribute::Distribution;
use shardline_preprocess::{Augment, Filter, Mode, Recipe};
use shardline_process::identity::{self, Identity};
use shardline_process::instance::Tick;
use shardline_process::job::{Settings, parse_input_flag};
use shardline_process::launch::{self, InstanceJob, LocalProcesses};
use shardline_process::{ProcessConfig, Role};

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
    #[arg(long, default_value_t = Settings::default().seed)]
    pub seed: u64,
    /// Shards close once they pass this size (e.g. 64MiB, 500KiB, or bytes).
    #[arg(long, default_value = "64MiB")]
    pub shard_size: String,
    /// Images whose header declares more pixels are rejected before decoding.
    #[arg(long, default_value_t = Settings::default().recipe.max_pixels)]
    pub max_pixels: u64,
    /// Decode every JPEG at full size. By default a JPEG at least twice the size the resize needs
    /// is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (as Pillow's `draft()` does).
    #[arg(long)]
    pub full_decode: bool,
    /// Fraction of objects that may be quarantined (corrupt, truncated, not an image) before the
    /// job fails.
    #[arg(long, default_value_t = Settings::default().error_budget)]
    pub error_budget: f64,
    /// Attempts per instance (the local launcher retries a crashed instance on its share only).
    #[arg(long, default_value_t = ProcessConfig::default().max_attempts)]
    pub max_attempts: usize,
    /// Instances run at once by the local launcher (0: one per core); the rest wait their turn.
    #[arg(long, default_value_t = ProcessConfig::default().max_parallel)]
    pub max_parallel: usize,
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
    #[arg(long, default_value_t = ProcessConfig::default().wait_timeout_s)]
    pub wait_timeout: u64,
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
    match text.split_once(['x', 'X']) {
        Some((w, h)) => Ok((
            w.trim().parse().map_err(|_| bad())?,
            h.trim().parse().map_err(|_| bad())?,
        )),
        None => {
            let n = text.trim().parse().map_err(|_| bad())?;
            Ok((n, n))
        }
    }
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
    Ok(number * factor)
}

/// The flags, as the library's config (the library validates it, naming settings).
pub fn config(args: &Args, instances: usize) -> Result<ProcessConfig> {
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
    let mut inputs = Vec::new();
    for text in &args.inputs {
        inputs.push(parse_input_flag(text)?);
    }
    // Without augmentations the channel list stays empty (and out of the job's digest).
    let augment_channels = if recipe.augment.is_empty() {
        Vec::new()
    } else {
        args.augment_channels.clone()
    };
    Ok(ProcessConfig {
        inputs,
        out: args.out.clone(),
        settings: Settings {
            instances,
            distribution,
            recipe,
            seed: args.seed,
            augment_channels,
            shard_bytes: parse_bytes(&args.shard_size)?,
            script: args.script.clone(),
            error_budget: args.error_budget,
        },
        max_attempts: args.max_attempts,
        force: args.force,
        root: args.root.clone(),
        wait_timeout_s: args.wait_timeout,
        max_parallel: args.max_parallel,
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

/// Progress bars, one per instance.
struct Bars<'a> {
    ui: &'a Ui,
    bars: Vec<ProgressBar>,
}

impl shardline_process::Progress for Bars<'_> {
    fn message(&self, line: &str) {
        self.ui.say(format!("process: {line}"));
    }
    fn instance(&self, rank: usize, tick: Tick) {
        if let Some(bar) = self.bars.get(rank) {
            bar.set_length(tick.total);
            bar.set_position(tick.done);
            if tick.errors > 0 {
                bar.set_message(format!("{} ({} err)", identity::host(rank), tick.errors));
            }
        }
    }
    fn instance_done(&self, rank: usize) {
        if let Some(bar) = self.bars.get(rank) {
            bar.finish_and_clear();
        }
    }
}

/// Runs the command: the local launcher, or one instance of an external launcher.
pub async fn run(args: Args, ui: &Ui) -> Result<()> {
    let identity = detect_identity(args.instances)?;
    let instances = identity
        .as_ref()
        .map(|i| i.size)
        .or(args.instances)
        .unwrap_or(1);
    let config = config(&args, instances)?;
    run_config(&config, identity, ui).await
}

/// Runs a resolved config: with no launcher identity, as the local launcher of OS processes.
pub async fn run_config(config: &ProcessConfig, identity: Option<Identity>, ui: &Ui) -> Result<()> {
    // Before a bar per instance is drawn.
    config.validate()?;
    let program = std::env::current_exe().context("process: cannot find this executable")?;
    let launcher = LocalProcesses {
        program,
        args: vec!["instance".into()],
        env: Vec::new(),
    };
    let log = || crate::log_buffer();
    let ranks: Vec<usize> = match &identity {
        Some(id) => vec![id.rank],
        None => (0..config.settings.instances).collect(),
    };
    let mut bars = Bars {
        ui,
        bars: Vec::new(),
    };
    for rank in 0..ranks.iter().max().map_or(0, |r| r + 1) {
        let bar = ui.bar(&identity::host(rank), Some(0), "objects");
        if !ranks.contains(&rank) {
            bar.finish_and_clear();
        }
        bars.bars.push(bar);
    }
    let role = match identity {
        Some(identity) => Role::External {
            identity,
            log: Some(&log),
        },
        None => Role::Launch(&launcher),
    };
    let report = shardline_process::run(config, role, &bars).await?;
    for line in report.summary() {
        ui.say(line);
    }
    Ok(())
}

/// `shardline instance`: one instance of a local launcher's job, read as JSON on stdin, with
/// progress lines on stdout for the supervisor.
pub async fn instance() -> Result<()> {
    tokio::spawn(launch::kill_group_on_termination());
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
        .context("instance: reading the job on stdin")?;
    let job: InstanceJob = serde_json::from_str(&text)
        .context("instance: the job on stdin is not an instance job (this command is started by `shardline process`)")?;
    let last = Mutex::new(Instant::now() - Duration::from_secs(1));
    let progress = |tick: Tick| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if tick.done == tick.total || last.elapsed() > Duration::from_millis(200) {
            *last = Instant::now();
            crate::progress::out(&launch::progress_line(tick));
        }
    };
    shardline_process::run_instance(&job, &progress)
        .await
        .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags' defaults are the library's: a command with no optional flag runs the
    /// library's default config.
    #[test]
    fn no_flags_give_the_library_defaults() {
        let args: Args = crate::cmd::parse(&["process", "--input", "train=x/", "--out", "o"]);
        let config = config(&args, 1).expect("config");
        let defaults = ProcessConfig {
            inputs: vec![("train".into(), "x/".into())],
            out: "o".into(),
            ..ProcessConfig::default()
        };
        assert_eq!(
            serde_json::to_value(&config).expect("json"),
            serde_json::to_value(&defaults).expect("json")
        );
    }

    #[test]
    fn sizes_and_byte_counts_parse() {
        assert_eq!(parse_size("224x224").expect("ok"), (224, 224));
        assert_eq!(parse_size("32").expect("ok"), (32, 32));
        assert!(parse_size("axb").is_err());
        assert_eq!(parse_bytes("64MiB").expect("ok"), 64 << 20);
        assert_eq!(parse_bytes("500KiB").expect("ok"), 500 << 10);
        assert_eq!(parse_bytes("1000").expect("ok"), 1000);
        assert!(parse_bytes("3 parsecs").is_err());
    }
}
