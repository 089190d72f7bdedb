//! `shardline train`: flags → [`TrainConfig`] → [`shardline_train::run`] → the summary.

use std::path::Path;

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use shardline_train::{Decay, EpochMetrics, LrScaling, ModelChoice, Outcome, Ranks, TrainConfig};

use crate::progress::Ui;

/// Flags of `shardline train`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The output of `shardline process` (recipe.json, lineage.json, <channel>/index.json).
    #[arg(long, value_name = "URL")]
    pub data: Option<String>,
    /// Where the model directory goes: model.json, weights.bin, labels.json, recipe.json,
    /// metrics.csv, lineage.json.
    #[arg(long, value_name = "URL")]
    pub out: String,
    /// Data-parallel workers (threads of this process, one model replica each).
    #[arg(long, default_value_t = default_workers())]
    pub workers: usize,
    /// Passes over the training data: the most, since early stopping (--patience) may end
    /// training sooner.
    #[arg(long, default_value_t = TrainConfig::default().schedule.epochs)]
    pub epochs: usize,
    /// Samples per worker and step.
    #[arg(long, default_value_t = TrainConfig::default().schedule.batch)]
    pub batch: usize,
    /// Base learning rate (Adam).
    #[arg(long, default_value_t = TrainConfig::default().schedule.lr)]
    pub lr: f64,
    /// linear: lr x workers (Horovod's advice); none: the same lr for any number of workers.
    #[arg(long, value_enum, default_value_t = ScalingArg::Linear)]
    pub lr_scaling: ScalingArg,
    /// Epochs over which the learning rate rises from --lr to the worker-scaled rate (0: none;
    /// at most --epochs minus 1).
    #[arg(long, default_value_t = TrainConfig::default().schedule.warmup_epochs)]
    pub warmup_epochs: usize,
    /// cosine: the rate falls as half a cosine to zero at --epochs; constant: it does not fall.
    #[arg(long, value_enum, default_value_t = DecayArg::Cosine)]
    pub decay: DecayArg,
    /// Stop when the validation accuracy has not improved for this many epochs and keep the best
    /// epoch's weights; `off` runs every epoch and keeps the last.
    #[arg(long, default_value = "5", value_parser = patience)]
    pub patience: Patience,
    /// Light augmentation: move each training sample by a random translation of up to this many
    /// pixels each way; `auto` is min(height, width) / 12 (2 on 28x28, none under 12x12), `off`
    /// (or 0) none.
    #[arg(long, default_value = "auto", value_parser = shift)]
    pub shift: Shift,
    /// The architecture (ignored with --model-config).
    #[arg(long, value_enum, default_value_t = ModelArg::Bncnn)]
    pub model: ModelArg,
    /// A JSON model config (kind, input, classes, widths) instead of --model.
    #[arg(long, value_name = "FILE")]
    pub model_config: Option<std::path::PathBuf>,
    /// Seed of the shard order.
    #[arg(long, default_value_t = TrainConfig::default().schedule.seed)]
    pub seed: u64,
    /// Gradient fusion bucket size, MiB.
    #[arg(long, default_value_t = TrainConfig::default().schedule.bucket_bytes >> 20)]
    pub bucket_mib: usize,
    /// Continue from the checkpoint in --out (written after every epoch) instead of starting over.
    #[arg(long)]
    pub resume: bool,
    /// Replace a finished model of another training job in --out (once this one succeeds).
    #[arg(long)]
    pub force: bool,
    /// The device: cpu (Burn's flex backend, the default), or cuda / wgpu in a build with that
    /// feature (`--features cuda`).
    #[arg(long, default_value_t = TrainConfig::default().device)]
    pub device: String,
    /// How long a collective (allreduce, broadcast) may wait for the other ranks, in seconds,
    /// before this rank stops the job: a dead or unreachable rank ends the job in this time, not
    /// in Open MPI's own keepalive (minutes).
    #[arg(long, value_name = "SECONDS", default_value_t = TrainConfig::default().collective_timeout.as_secs_f64())]
    pub collective_timeout: f64,
    /// Your own training program instead of Shardline's trainer.
    #[command(flatten)]
    pub script: super::train_script::ScriptArgs,
}

/// Learning-rate scaling.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ScalingArg {
    /// lr x workers.
    Linear,
    /// Unchanged.
    None,
}

/// Learning-rate decay.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DecayArg {
    /// Half a cosine to zero.
    Cosine,
    /// None.
    Constant,
}

/// `--shift`: pixels, `auto` (`None`) or `off` (0).
#[derive(Debug, Clone, Copy)]
pub struct Shift(pub Option<usize>);

fn shift(text: &str) -> Result<Shift, String> {
    match text {
        "auto" => Ok(Shift(None)),
        "off" => Ok(Shift(Some(0))),
        _ => text
            .parse::<usize>()
            .map(|n| Shift(Some(n)))
            .map_err(|_| format!("{text:?} is not a number of pixels, `auto` or `off`")),
    }
}

/// `--patience`: a number of epochs, or `off` (`None`).
#[derive(Debug, Clone, Copy)]
pub struct Patience(pub Option<usize>);

fn patience(text: &str) -> Result<Patience, String> {
    match text {
        "off" => Ok(Patience(None)),
        _ => match text.parse::<usize>() {
            Ok(0) | Err(_) => Err(format!(
                "{text:?} is not a number of epochs (1 or more) or `off`"
            )),
            Ok(n) => Ok(Patience(Some(n))),
        },
    }
}

/// Architectures.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ModelArg {
    /// Batch-normalised convolution blocks (16, 32, 64 channels, each of stride 2), dense 128
    /// (the default).
    Bncnn,
    /// Strided convolutions, global average pool (the default before bncnn).
    Cnn,
    /// Fully connected.
    Mlp,
    /// The benchmark's reference CNN (3x3 convolutions and 2x2 max-pools, 32 then 64 channels,
    /// dense 128), as Keras tutorials write it.
    Reference,
    /// ResNet-18 in its CIFAR layout (for 32x32 inputs; batch norm, residual blocks).
    Resnet18,
}

/// This process's rank and the world size when a launcher started it as one rank of an MPI job:
/// `mpirun` (`OMPI_COMM_WORLD_RANK`), a PMIx launcher (`PMIX_RANK`, e.g. Slurm's `srun
/// --mpi=pmix`), or a Slurm job step of several tasks (`SLURM_PROCID` with `SLURM_STEP_NUM_TASKS`
/// > 1).
pub(crate) fn launcher_rank() -> Result<Option<(usize, Option<usize>)>> {
    let var = |name: &str| std::env::var(name).ok();
    let number = |name: &str, text: String| -> Result<usize> {
        text.trim()
            .parse()
            .with_context(|| format!("train: {name}={text:?} is not a whole number"))
    };
    let size = ["OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS"]
        .iter()
        .find_map(|v| var(v).and_then(|t| t.trim().parse().ok()));
    for name in ["OMPI_COMM_WORLD_RANK", "PMIX_RANK"] {
        if let Some(rank) = var(name) {
            return Ok(Some((number(name, rank)?, size)));
        }
    }
    let tasks = var("SLURM_STEP_NUM_TASKS").and_then(|t| t.parse::<usize>().ok());
    if tasks.is_some_and(|n| n > 1)
        && let Some(rank) = var("SLURM_PROCID")
    {
        return Ok(Some((number("SLURM_PROCID", rank)?, tasks)));
    }
    Ok(None)
}

/// Validates the flags into the stage's config (defaults from `TrainConfig::default`, flag
/// defaults above being the same values).
pub fn config(args: &Args) -> Result<TrainConfig> {
    let model = match &args.model_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("train: --model-config {}", path.display()))?;
            ModelChoice::Config(serde_json::from_str(&text).with_context(|| {
                format!(
                    "train: --model-config {} is not a model config",
                    path.display()
                )
            })?)
        }
        None => match args.model {
            ModelArg::Bncnn => ModelChoice::Bncnn,
            ModelArg::Cnn => ModelChoice::Cnn,
            ModelArg::Mlp => ModelChoice::Mlp,
            ModelArg::Reference => ModelChoice::Reference,
            ModelArg::Resnet18 => ModelChoice::Resnet18,
        },
    };
    let ranks = match launcher_rank()? {
        Some((rank, size)) => Ranks::Mpi { rank, size },
        None => Ranks::InProcess {
            workers: args.workers,
        },
    };
    let config = TrainConfig {
        data: args
            .data
            .clone()
            .context("train: --data is required: the output of `shardline process`")?,
        out: args.out.clone(),
        ranks,
        schedule: shardline_train::Schedule {
            epochs: args.epochs,
            batch: args.batch,
            lr: args.lr,
            lr_scaling: match args.lr_scaling {
                ScalingArg::Linear => LrScaling::Linear,
                ScalingArg::None => LrScaling::None,
            },
            seed: args.seed,
            bucket_bytes: args.bucket_mib << 20,
            warmup_epochs: args.warmup_epochs,
            decay: match args.decay {
                DecayArg::Cosine => Decay::Cosine,
                DecayArg::Constant => Decay::Constant,
            },
            shift: args.shift.0,
            patience: args.patience.0,
        },
        model,
        resume: args.resume,
        force: args.force,
        device: args.device.clone(),
        collective_timeout: collective_timeout(args.collective_timeout)?,
    };
    config.validate()?;
    Ok(config)
}

fn collective_timeout(seconds: f64) -> Result<std::time::Duration> {
    if !(seconds.is_finite() && seconds > 0.0) {
        anyhow::bail!("train: --collective-timeout {seconds} must be a positive number of seconds");
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

/// The library's default number of in-process workers.
fn default_workers() -> usize {
    match TrainConfig::default().ranks {
        Ranks::InProcess { workers } => workers,
        Ranks::Mpi { .. } => 1,
    }
}

/// Rank 0's terminal: a bar of the steps of the epoch, and a line per epoch.
struct Bars<'a> {
    ui: &'a Ui,
    bar: ProgressBar,
}

impl shardline_train::Progress for Bars<'_> {
    fn message(&self, line: &str) {
        // Not `ui.say`: it suspends the same bars, and suspending twice deadlocks.
        if !self.ui.is_quiet() {
            let line = self.ui.name_flags(line);
            self.bar.suspend(|| crate::progress::out(&line));
        }
    }
    fn step(&self, epoch: usize, epochs: usize, step: usize, steps: usize) {
        if step == 1 {
            self.bar.reset();
            self.bar.set_length(steps as u64);
            self.bar.set_message(format!("epoch {epoch}/{epochs}"));
        }
        self.bar.inc(1);
    }
    fn epoch(&self, m: &EpochMetrics) {
        // Without a validation channel there is no validation accuracy to print (it is NaN).
        let validation = if m.validation_accuracy.is_finite() {
            format!("validation {:.3}", m.validation_accuracy)
        } else {
            "no validation channel".to_string()
        };
        self.message(&format!(
            "  epoch {:>3}: loss {:.4}, accuracy {:.3}, {validation}, {:.0} samples/s, data wait {:.1}%, allreduce {:.2} ms/step",
            m.epoch,
            m.train_loss,
            m.train_accuracy,
            m.samples_per_second,
            m.data_wait_percent,
            m.allreduce_ms
        ));
    }
    fn done(&self) {
        self.bar.finish_and_clear();
    }
}

/// Runs the stage and prints its summary; returns the test accuracy, if there is a test channel.
pub async fn run(args: Args, ui: &Ui) -> Result<Option<f64>> {
    if args.script.script.is_some() {
        super::train_script::run(
            args.data.as_deref(),
            &args.out,
            args.force,
            &args.script,
            ui,
        )
        .await?;
        return Ok(None);
    }
    let var = |name: &str| std::env::var(name).ok();
    if launcher_rank()?.is_none()
        && let Some(hosts) =
            shardline_container::hosts::detect(Path::new(shardline_container::hosts::ROOT), &var)?
        && hosts.hosts.len() > 1
    {
        across_sagemaker_hosts(&hosts, ui)?;
        return Ok(None);
    }
    run_config(&config(&args)?, ui).await
}

/// One instance of a SageMaker training job of several: the first host runs this same command
/// as one MPI rank per host (`mpirun`), the others wait for it.
fn across_sagemaker_hosts(
    hosts: &shardline_container::hosts::TrainingHosts,
    ui: &Ui,
) -> Result<()> {
    let n = hosts.hosts.len();
    if !hosts.leads() {
        ui.say(format!(
            "train: host {} of a SageMaker job of {n} ({}); its rank is started by {}",
            hosts.current, hosts.source, hosts.hosts[0]
        ));
        hosts.follow(std::time::Duration::from_secs(600))?;
        return Ok(());
    }
    if !cfg!(feature = "mpi") {
        bail!(
            "train: this is the first of {n} SageMaker hosts ({}), and training across hosts runs over MPI, but this binary was built without it; build the image with `--features mpi`",
            hosts.source
        );
    }
    let program = std::env::current_exe().context("train: cannot find this executable")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    ui.say(format!(
        "train: leading a SageMaker job of {n} hosts ({}): one rank per host with mpirun",
        hosts.hosts.join(", ")
    ));
    Ok(hosts.lead(Path::new(shardline_container::hosts::ROOT), &program, &args)?)
}

/// Runs the stage with a resolved config and prints its summary.
pub async fn run_config(config: &TrainConfig, ui: &Ui) -> Result<Option<f64>> {
    let bars = Bars {
        ui,
        bar: ui.bar("epoch", Some(0), "steps"),
    };
    let report = shardline_train::run(config, &bars).await;
    bars.bar.finish_and_clear();
    let report = report?;
    match (&report.outcome, report.test_accuracy) {
        (Outcome::Follower, _) => {}
        (_, Some(a)) => ui.say(format!(
            "train: test accuracy {:.2}%; model in {}",
            100.0 * a,
            report.out
        )),
        (_, None) => ui.say(format!("train: no test channel; model in {}", report.out)),
    }
    Ok(report.test_accuracy)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags' defaults are the library's.
    #[test]
    fn no_flags_give_the_library_defaults() {
        let args: Args = crate::cmd::parse(&["train", "--data", "d", "--out", "o"]);
        let config = config(&args).expect("config");
        let defaults = TrainConfig::default();
        assert_eq!(
            format!("{:?}", config.schedule),
            format!("{:?}", defaults.schedule)
        );
        assert_eq!(
            format!("{:?}", config.ranks),
            format!("{:?}", defaults.ranks)
        );
        assert_eq!(
            format!("{:?}", config.model),
            format!("{:?}", defaults.model)
        );
        assert_eq!(config.device, defaults.device);
        assert_eq!(config.collective_timeout, defaults.collective_timeout);
    }
}
