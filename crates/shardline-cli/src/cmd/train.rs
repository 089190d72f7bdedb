//! `shardline train`: data-parallel training on the output of `shardline process`, with the
//! workers as threads of this process (in-process collectives).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use shardline_comm::InProcess;
use shardline_dataset::Normalise;
use shardline_process::shards::Index;
use shardline_process::transform::Recipe;
use shardline_store::Store;
use shardline_store::commit::{self, Commit};
use shardline_train::train::test_accuracy;
use shardline_train::{
    Channel, Data, EpochMetrics, LrScaling, ModelConfig, Resume, TrainConfig, weights,
};

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
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Passes over the training data.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Samples per worker and step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Base learning rate (Adam).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// linear: lr x workers (Horovod's advice); none: the same lr for any number of workers.
    #[arg(long, value_enum, default_value_t = ScalingArg::Linear)]
    pub lr_scaling: ScalingArg,
    /// The architecture (ignored with --model-config).
    #[arg(long, value_enum, default_value_t = ModelArg::Cnn)]
    pub model: ModelArg,
    /// A JSON model config (kind, input, classes, widths) instead of --model.
    #[arg(long, value_name = "FILE")]
    pub model_config: Option<std::path::PathBuf>,
    /// Seed of the shard order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Gradient fusion bucket size, MiB.
    #[arg(long, default_value_t = 4)]
    pub bucket_mib: usize,
    /// Continue from the checkpoint in --out (written after every epoch) instead of starting over.
    #[arg(long)]
    pub resume: bool,
    /// The device: cpu (Burn's flex backend, the default), or cuda / wgpu in a build with that
    /// feature (`--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
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

/// Architectures.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ModelArg {
    /// Strided convolutions (the default).
    Cnn,
    /// Fully connected.
    Mlp,
    /// The benchmark's reference CNN (3x3 convolutions and 2x2 max-pools, 32 then 64 channels,
    /// dense 128), as Keras tutorials write it.
    Reference,
}

async fn channel(data: &Store, name: &str) -> Result<Option<Channel>> {
    if !data.exists(&format!("{name}/index.json")).await? {
        return Ok(None);
    }
    let index: Index = super::read_json(
        data,
        &format!("{name}/index.json"),
        "train: --data must be the output of `shardline process`",
    )
    .await?;
    Ok(Some(Channel {
        store: data.child(name),
        shards: index.shardlist,
    }))
}

fn metrics_csv(metrics: &[EpochMetrics]) -> String {
    let mut out = String::from(
        "epoch,train_loss,train_accuracy,validation_loss,validation_accuracy,samples_per_second,data_wait_percent,allreduce_ms,train_seconds\n",
    );
    for m in metrics {
        out.push_str(&format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.1},{:.2},{:.3},{:.3}\n",
            m.epoch,
            m.train_loss,
            m.train_accuracy,
            m.validation_loss,
            m.validation_accuracy,
            m.samples_per_second,
            m.data_wait_percent,
            m.allreduce_ms,
            m.train_seconds
        ));
    }
    out
}

/// Everything one rank needs, shared by the worker threads.
#[derive(Clone)]
struct Run {
    model_config: ModelConfig,
    job: Data,
    config: TrainConfig,
    test: Option<Channel>,
    resume: Option<Resume>,
    out: Store,
    quiet: bool,
    /// What a checkpoint must match to be resumed: the model config, the labels and the recipe.
    identity: serde_json::Value,
    /// The Burn device's name.
    device: String,
    /// Rank 0's bar of the steps of the current epoch (drawn only on a terminal).
    bar: Option<indicatif::ProgressBar>,
}

/// Writes the checkpoint of an epoch under `checkpoint/`, atomically, the state record last.
fn checkpoint(
    out: &Store,
    identity: &serde_json::Value,
    done: &[EpochMetrics],
    model: &shardline_train::Model,
    optimizer: &[u8],
) -> Result<(), shardline_train::Error> {
    let state = serde_json::json!({"epoch": done.len(), "metrics": done, "identity": identity});
    let files = [
        ("checkpoint/weights.bin", weights::encode(model)),
        ("checkpoint/optimizer.bpk", optimizer.to_vec()),
        (
            "checkpoint/state.json",
            serde_json::to_vec_pretty(&state).unwrap_or_default(),
        ),
    ];
    let write = async {
        let mut tx = Commit::begin_scoped(out, Some("checkpoint"));
        for (name, bytes) in files {
            tx.stage(name, Bytes::from(bytes)).await?;
        }
        tx.publish().await
    };
    // Called from a worker thread, outside any async runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| shardline_train::Error::Data(format!("checkpoint: {e}")))?;
    runtime
        .block_on(write)
        .map_err(|e| shardline_train::Error::Data(format!("writing the checkpoint: {e}")))
}

/// Refuses a checkpoint that another model, another label set or another recipe wrote.
fn check_checkpoint(
    found: &serde_json::Value,
    wanted: &serde_json::Value,
    out: &Store,
) -> Result<()> {
    let at = out.uri_of("checkpoint/");
    if found.is_null() {
        bail!(
            "train: the checkpoint in {at} does not say which model wrote it; start a new run (another --out, without --resume)"
        );
    }
    if found["model"] != wanted["model"] {
        bail!(
            "train: the checkpoint in {at} belongs to another model ({}), not this run's ({}); resume with the same --model/--model-config, or start a new run with another --out",
            found["model"],
            wanted["model"]
        );
    }
    if found["labels"] != wanted["labels"] {
        bail!(
            "train: the checkpoint in {at} was trained on the classes {}, but --data has {}; resume on the same data, or start a new run with another --out",
            found["labels"],
            wanted["labels"]
        );
    }
    if found["recipe"] != wanted["recipe"] {
        bail!(
            "train: the checkpoint in {at} was trained on data processed with another recipe ({} vs {}); resume on the same processed data, or start a new run with another --out",
            found["recipe"],
            wanted["recipe"]
        );
    }
    Ok(())
}

/// One rank's work: train (rank 0 writes a checkpoint after every epoch), then measure the test
/// accuracy over all ranks.
fn worker(
    comm: &mut dyn shardline_comm::Communicator,
    run: &Run,
) -> Result<(shardline_train::Trained, Option<f64>), shardline_train::Error> {
    let device = shardline_train::device::by_name(&run.device)?;
    let done = std::sync::Mutex::new(
        run.resume
            .as_ref()
            .map(|r| r.metrics.clone())
            .unwrap_or_default(),
    );
    let rank = comm.rank();
    let on_step = |epoch: usize, step: usize, steps: usize| {
        if let Some(bar) = run.bar.as_ref().filter(|_| rank == 0) {
            if step == 1 {
                bar.reset();
                bar.set_length(steps as u64);
                bar.set_message(format!("epoch {epoch}/{}", run.config.epochs));
            }
            bar.inc(1);
        }
        shardline_process::fault::point(
            &format!("rank-{rank}"),
            &format!("epoch-{epoch}-step-{step}"),
        );
    };
    let say = |line: String| match &run.bar {
        Some(bar) => bar.suspend(|| crate::progress::out(&line)),
        None => crate::progress::out(&line),
    };
    let on_epoch = |m: &EpochMetrics, model: &shardline_train::Model, optimizer: &[u8]| {
        if !run.quiet {
            say(format!(
                "  epoch {:>3}: loss {:.4}, accuracy {:.3}, validation {:.3}, {:.0} samples/s, data wait {:.1}%, allreduce {:.2} ms/step",
                m.epoch,
                m.train_loss,
                m.train_accuracy,
                m.validation_accuracy,
                m.samples_per_second,
                m.data_wait_percent,
                m.allreduce_ms
            ));
        }
        let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
        done.push(m.clone());
        checkpoint(&run.out, &run.identity, &done, model, optimizer)?;
        shardline_process::fault::point("train", &format!("after-epoch-{}", m.epoch));
        Ok(())
    };
    let trained = shardline_train::train(
        comm,
        &run.model_config,
        &run.job,
        &run.config,
        &device,
        run.resume.as_ref(),
        shardline_train::Hooks {
            on_epoch: &on_epoch,
            on_step: &on_step,
        },
    )?;
    if let Some(bar) = run.bar.as_ref().filter(|_| rank == 0) {
        bar.finish_and_clear();
    }
    let accuracy = match &run.test {
        Some(test) => Some(test_accuracy(
            comm,
            &trained.model,
            test,
            &run.job.normalise,
            &device,
        )?),
        None => None,
    };
    Ok((trained, accuracy))
}

/// This process's rank when a launcher started it as one rank of an MPI job: `mpirun`
/// (`OMPI_COMM_WORLD_RANK`), a PMIx launcher (`PMIX_RANK`, e.g. Slurm's `srun --mpi=pmix`), or a
/// Slurm job step of several tasks (`SLURM_PROCID` with `SLURM_STEP_NUM_TASKS` > 1).
fn launcher_rank() -> Option<String> {
    for var in ["OMPI_COMM_WORLD_RANK", "PMIX_RANK"] {
        if let Ok(rank) = std::env::var(var) {
            return Some(rank);
        }
    }
    let tasks = std::env::var("SLURM_STEP_NUM_TASKS").ok()?;
    if tasks.parse::<usize>().is_ok_and(|n| n > 1) {
        return std::env::var("SLURM_PROCID").ok();
    }
    None
}

/// Whether a launcher started this process as one rank of an MPI job.
fn launched_by_mpirun() -> bool {
    launcher_rank().is_some()
}

/// Runs this process's rank over MPI; rank 0 gets the result.
#[cfg(feature = "mpi")]
fn mpi_rank(run: &Run) -> Result<Option<(shardline_train::Trained, Option<f64>)>> {
    // On its own thread: checkpoints start their own runtime, which cannot nest in this one.
    let run = run.clone();
    let thread = std::thread::spawn(move || -> Result<_> {
        let mut comm = shardline_comm::mpi_comm::Mpi::init(Duration::from_secs(600))?;
        let rank = shardline_comm::Communicator::rank(&comm);
        let result = worker(&mut comm, &run)?;
        Ok((rank == 0).then_some(result))
    });
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("train: the MPI worker panicked"))?
}

#[cfg(not(feature = "mpi"))]
fn mpi_rank(_: &Run) -> Result<Option<(shardline_train::Trained, Option<f64>)>> {
    bail!(
        "train: started by mpirun, but this shardline was built without MPI; build it with `cargo build --release --features mpi` (needs libopenmpi-dev and libclang-dev)"
    )
}

/// The training curves as an SVG: loss on the left, accuracy on the right, train and validation.
fn plot(metrics: &[EpochMetrics]) -> String {
    let (w, h, pad) = (360.0, 240.0, 36.0);
    let series = |f: &dyn Fn(&EpochMetrics) -> f64| -> Vec<f64> { metrics.iter().map(f).collect() };
    let panel = |x0: f64, title: &str, lines: &[(&str, Vec<f64>)]| -> String {
        let max = lines
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
            .max(1e-9);
        let n = metrics.len().max(2) as f64 - 1.0;
        // Falling curves leave the top free, rising ones the bottom.
        let legend_y = if title == "loss" {
            pad + 16.0
        } else {
            h - pad - 26.0
        };
        let mut out = format!(
            r##"<g transform="translate({x0},0)"><rect x="{pad}" y="{pad}" width="{}" height="{}" fill="none" stroke="#999"/><text x="{}" y="22" text-anchor="middle" font-size="14">{title}</text><text x="{pad}" y="{}" font-size="10">epoch 1</text><text x="{}" y="{}" font-size="10" text-anchor="end">epoch {}</text><text x="4" y="{}" font-size="10">{max:.2}</text>"##,
            w - 2.0 * pad,
            h - 2.0 * pad,
            w / 2.0,
            h - 20.0,
            w - pad,
            h - 20.0,
            metrics.len(),
            pad + 4.0
        );
        for (i, (name, values)) in lines.iter().enumerate() {
            let colour = ["#1f77b4", "#ff7f0e"][i % 2];
            let points: Vec<String> = values
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(k, v)| {
                    format!(
                        "{:.1},{:.1}",
                        pad + (w - 2.0 * pad) * k as f64 / n,
                        h - pad - (h - 2.0 * pad) * v / max
                    )
                })
                .collect();
            out.push_str(&format!(
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/><text x="{}" y="{}" font-size="11" fill="{colour}">{name}</text>"#,
                points.join(" "),
                w - pad - 80.0,
                legend_y + 14.0 * i as f64
            ));
        }
        out.push_str("</g>");
        out
    };
    let loss = panel(
        0.0,
        "loss",
        &[
            ("train", series(&|m| m.train_loss)),
            ("validation", series(&|m| m.validation_loss)),
        ],
    );
    let accuracy = panel(
        w,
        "accuracy",
        &[
            ("train", series(&|m| m.train_accuracy)),
            ("validation", series(&|m| m.validation_accuracy)),
        ],
    );
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{h}" font-family="sans-serif">{loss}{accuracy}</svg>
"#,
        2.0 * w
    )
}

/// The model directory's files packed as `model.tar.gz` (SageMaker's artefact form).
pub(crate) fn tarball<N: AsRef<str>>(files: &[(N, Vec<u8>)]) -> Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    for (name, bytes) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, name.as_ref(), &bytes[..])?;
    }
    Ok(builder.into_inner()?.finish()?)
}

/// Trains and writes the model directory; returns the test accuracy, if there is a test channel.
pub async fn run(args: Args, ui: &Ui) -> Result<Option<f64>> {
    if args.workers == 0 || args.batch == 0 || args.epochs == 0 {
        bail!("train: --workers, --batch and --epochs must be at least 1");
    }
    if !(args.lr.is_finite() && args.lr > 0.0) {
        bail!("train: --lr {} must be a positive number", args.lr);
    }
    if args.script.script.is_some() {
        super::train_script::run(args.data.as_deref(), &args.out, &args.script, ui).await?;
        return Ok(None);
    }
    shardline_train::device::by_name(&args.device)?;
    let data_url = args
        .data
        .as_deref()
        .context("train: --data is required: the output of `shardline process`")?;
    let data = Store::open(data_url).with_context(|| format!("train: --data {data_url}"))?;
    let out = Store::open(&args.out).with_context(|| format!("train: --out {}", args.out))?;
    commit::recover(&data).await?;
    let recipe: Recipe = super::read_json(
        &data,
        "recipe.json",
        "train: --data must be the output of `shardline process`",
    )
    .await?;
    let lineage: serde_json::Value = super::read_json(
        &data,
        "lineage.json",
        "train: --data must be the output of `shardline process`",
    )
    .await?;
    let labels: Vec<String> = serde_json::from_value(lineage["labels"].clone())
        .context("train: the data's lineage.json has no label list")?;
    let train = channel(&data, "train").await?.with_context(|| {
        format!(
            "train: {} has no train channel (train/index.json)",
            data.uri()
        )
    })?;
    if train.shards.is_empty() {
        bail!("train: the train channel of {} is empty", data.uri());
    }
    let validation = channel(&data, "validation").await?;
    let test = channel(&data, "test").await?;
    let [h, w, c] = recipe.shape();
    let model_config = match &args.model_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("train: --model-config {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| {
                format!(
                    "train: --model-config {} is not a model config",
                    path.display()
                )
            })?
        }
        None => match args.model {
            ModelArg::Cnn => ModelConfig::cnn([c, h, w], labels.len()),
            ModelArg::Mlp => ModelConfig::mlp([c, h, w], labels.len()),
            ModelArg::Reference => ModelConfig::reference([c, h, w], labels.len()),
        },
    };
    if model_config.input != [c, h, w] || model_config.classes != labels.len() {
        bail!(
            "train: the model config expects input {:?} and {} classes, but the data has {:?} and {} classes",
            model_config.input,
            model_config.classes,
            [c, h, w],
            labels.len()
        );
    }
    model_config
        .validate()
        .map_err(|e| anyhow::anyhow!("train: model config: {e}"))?;
    let config = TrainConfig {
        epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        lr_scaling: match args.lr_scaling {
            ScalingArg::Linear => LrScaling::Linear,
            ScalingArg::None => LrScaling::None,
        },
        seed: args.seed,
        bucket_bytes: args.bucket_mib.max(1) << 20,
    };
    let job = Data {
        normalise: Normalise::from_recipe(&recipe),
        train,
        validation,
    };
    let workers = match (
        launched_by_mpirun(),
        std::env::var("OMPI_COMM_WORLD_SIZE").or_else(|_| std::env::var("SLURM_STEP_NUM_TASKS")),
    ) {
        (true, Ok(size)) => format!("{size} MPI ranks"),
        (true, Err(_)) => "MPI ranks".to_string(),
        (false, _) => format!("{} workers", args.workers),
    };
    // Under a launcher only rank 0 talks.
    let rank_zero = launcher_rank().is_none_or(|r| r == "0");
    if rank_zero {
        ui.say(format!(
            "train: {workers}, {:?} model, {} epochs, batch {} per worker, on {}",
            model_config.kind,
            config.epochs,
            config.batch,
            data.uri()
        ));
    }
    let identity = serde_json::json!({"model": model_config, "labels": labels, "recipe": recipe});
    let resume = if args.resume {
        let state: serde_json::Value = super::read_json(
            &out,
            "checkpoint/state.json",
            "train: --resume needs a checkpoint in --out",
        )
        .await?;
        check_checkpoint(&state["identity"], &identity, &out)?;
        let weights_bytes = out.get("checkpoint/weights.bin").await?;
        let optimizer = out.get("checkpoint/optimizer.bpk").await?.to_vec();
        let epoch = state["epoch"]
            .as_u64()
            .context("train: checkpoint/state.json has no epoch")? as usize;
        let metrics: Vec<EpochMetrics> = serde_json::from_value(state["metrics"].clone())?;
        let parameters = weights::decode_parameters(&weights_bytes)?;
        ui.say(format!(
            "train: resuming after epoch {epoch} from {}",
            out.uri_of("checkpoint/")
        ));
        Some(Resume {
            epoch,
            parameters,
            optimizer,
            metrics,
        })
    } else {
        None
    };
    let run = Run {
        model_config: model_config.clone(),
        job,
        config: config.clone(),
        test,
        resume,
        out: out.clone(),
        quiet: ui.is_quiet(),
        identity,
        device: args.device.clone(),
        bar: rank_zero.then(|| ui.bar("epoch", Some(0), "steps")),
    };
    let (trained, accuracy) = if launched_by_mpirun() {
        match mpi_rank(&run)? {
            Some(result) => result,
            // Not rank 0: rank 0 writes the model.
            None => return Ok(None),
        }
    } else {
        let workers: Vec<_> = InProcess::group(args.workers, Duration::from_secs(600))
            .into_iter()
            .map(|mut comm| {
                let run = run.clone();
                std::thread::spawn(move || {
                    let rank = shardline_comm::Communicator::rank(&comm);
                    worker(&mut comm, &run).map(|r| (rank, r))
                })
            })
            .collect();
        let mut results = Vec::new();
        for worker in workers {
            results.push(
                worker
                    .join()
                    .map_err(|_| anyhow::anyhow!("train: a worker thread panicked"))??,
            );
        }
        results
            .into_iter()
            .find(|(rank, _)| *rank == 0)
            .map(|(_, r)| r)
            .context("train: rank 0 returned nothing")?
    };

    // Rank 0 writes the model directory, atomically, lineage last.
    let lineage_out = serde_json::json!({
        "producer": shardline_lineage::PRODUCER,
        "step": "train",
        "data": data.uri(),
        "data_lineage": shardline_lineage::Digest::of(&serde_json::to_vec(&lineage).unwrap_or_default()),
        "workers": args.workers,
        "settings": config,
        "model": model_config,
        "test_accuracy": accuracy,
    });
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("model.json", serde_json::to_vec_pretty(&model_config)?),
        ("weights.bin", weights::encode(&trained.model)),
        (
            "labels.json",
            serde_json::to_vec_pretty(&serde_json::json!({"classes": labels}))?,
        ),
        ("recipe.json", serde_json::to_vec_pretty(&recipe)?),
        ("metrics.csv", metrics_csv(&trained.metrics).into_bytes()),
        ("training.svg", plot(&trained.metrics).into_bytes()),
        ("lineage.json", serde_json::to_vec_pretty(&lineage_out)?),
    ];
    let packed = tarball(&files)?;
    let mut files = files;
    // The tarball before lineage.json, which stays the last file committed.
    files.insert(files.len() - 1, ("model.tar.gz", packed));
    commit::recover(&out).await?;
    let mut tx = Commit::begin(&out);
    for (name, bytes) in files {
        tx.stage(name, Bytes::from(bytes)).await?;
    }
    tx.publish().await?;
    match accuracy {
        Some(a) => ui.say(format!(
            "train: test accuracy {:.2}%; model in {}",
            100.0 * a,
            out.uri()
        )),
        None => ui.say(format!("train: no test channel; model in {}", out.uri())),
    }
    Ok(accuracy)
}
