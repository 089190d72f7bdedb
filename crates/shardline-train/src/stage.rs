//! `run`: the training stage as one call. From the output of the process step to a model
//! directory: validates the configuration, claims `out` (it must not hold another stage's output
//! or another finished training job), trains on in-process workers or as one MPI rank, writes a
//! checkpoint after every epoch (resumable), measures the test accuracy, and commits the model
//! directory (model.json, weights.bin, labels.json, recipe.json, metrics.csv, training.svg,
//! model.tar.gz, its owner record, lineage.json last).

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use shardline_comm::{Communicator, InProcess};
use shardline_contract::lineage::{self, ModelLineage, ProcessLineage};
use shardline_contract::model::{self as files, Labels};
use shardline_contract::owner::{self, Claim, Stage};
use shardline_contract::recipe::Recipe;
use shardline_contract::shards::{Index, index_key};
use shardline_dataset::Normalise;
use shardline_lineage::{Digest, FileRecord, PRODUCER};
use shardline_store::Store;
use shardline_store::commit::{self, Commit};

use crate::evaluate::read;
use crate::report::{metrics_csv, plot, timings_csv};
use crate::train::Decay;
use crate::train::test_accuracy;
use crate::{Channel, Data, EpochMetrics, Error, LrScaling, Model, ModelConfig, Resume, Schedule};

/// Which architecture to train.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelChoice {
    /// The batch-normalised CNN (the default).
    Bncnn,
    /// The strided CNN.
    Cnn,
    /// A fully connected network.
    Mlp,
    /// The benchmark's max-pool reference CNN.
    Reference,
    /// ResNet-18 (CIFAR layout).
    Resnet18,
    /// A model config of the user's (its input and classes must match the data).
    Config(ModelConfig),
}

/// How the ranks of the job are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranks {
    /// `workers` threads of this process, connected in memory.
    InProcess {
        /// Data-parallel workers.
        workers: usize,
    },
    /// This process is one rank of an MPI job (started by mpirun or srun); rank 0 writes.
    /// The caller reads the launcher's rank and world size (the size when it announces one).
    Mpi {
        /// This process's rank.
        rank: usize,
        /// The number of ranks.
        size: Option<usize>,
    },
}

/// The resolved settings of a training job. `Default` holds every default.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// The output of the process step (recipe.json, lineage.json, <channel>/index.json).
    pub data: String,
    /// Where the model directory goes.
    pub out: String,
    /// How the ranks are made.
    pub ranks: Ranks,
    /// The schedule every rank follows.
    pub schedule: Schedule,
    /// The architecture.
    pub model: ModelChoice,
    /// Continue from the checkpoint in `out`.
    pub resume: bool,
    /// Replace a finished, different training job in `out`.
    pub force: bool,
    /// The Burn device by name (`cpu`, `cuda`, `wgpu`).
    pub device: String,
    /// How long a collective may wait for the other ranks.
    pub collective_timeout: Duration,
}

impl Default for TrainConfig {
    fn default() -> TrainConfig {
        TrainConfig {
            data: String::new(),
            out: String::new(),
            ranks: Ranks::InProcess { workers: 2 },
            schedule: Schedule {
                epochs: 12,
                batch: 64,
                lr: 2e-3,
                lr_scaling: LrScaling::Linear,
                seed: 0,
                bucket_bytes: 4 << 20,
                warmup_epochs: 2,
                decay: Decay::Cosine,
                shift: None,
                patience: Some(5),
            },
            model: ModelChoice::Bncnn,
            resume: false,
            force: false,
            device: "cpu".into(),
            collective_timeout: Duration::from_secs(600),
        }
    }
}

impl TrainConfig {
    /// Checks every setting before any work; errors name the setting.
    pub fn validate(&self) -> Result<(), Error> {
        let s = &self.schedule;
        if let Ranks::InProcess { workers: 0 } = self.ranks {
            return Err(Error::Setting("`workers` must be at least 1".into()));
        }
        if s.batch == 0 || s.epochs == 0 {
            return Err(Error::Setting(
                "`batch` and `epochs` must be at least 1".into(),
            ));
        }
        if !(s.lr.is_finite() && s.lr > 0.0) {
            return Err(Error::Setting(format!(
                "`lr` {} must be a positive number",
                s.lr
            )));
        }
        if s.patience == Some(0) {
            return Err(Error::Setting(
                "`patience` must be at least 1 epoch (or off, to run every epoch)".into(),
            ));
        }
        if s.bucket_bytes == 0 {
            return Err(Error::Setting(
                "`bucket_mib`: the fusion bucket must be at least 1 byte".into(),
            ));
        }
        if self.data.is_empty() {
            return Err(Error::Setting(
                "`data` is required: the output of `shardline process`".into(),
            ));
        }
        crate::device::by_name(&self.device)?;
        Ok(())
    }
}

/// What the stage reports as it goes; called on rank 0 only. Every method has a default that
/// does nothing.
pub trait Progress: Send + Sync {
    /// A line worth telling the user.
    fn message(&self, _line: &str) {}
    /// A training step finished (both counted from 1).
    fn step(&self, _epoch: usize, _epochs: usize, _step: usize, _steps: usize) {}
    /// An epoch finished.
    fn epoch(&self, _metrics: &EpochMetrics) {}
    /// Training finished (the model is being written).
    fn done(&self) {}
}

/// A progress sink that reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A model was trained and written.
    Trained,
    /// `out` already held this job's finished model; nothing was written.
    Unchanged,
    /// This process is an MPI rank other than 0: rank 0 wrote the model.
    Follower,
}

/// The result of [`run`].
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// What happened.
    pub outcome: Outcome,
    /// The model directory's URI.
    pub out: String,
    /// Accuracy on the test channel, if the data has one.
    pub test_accuracy: Option<f64>,
    /// Metrics per epoch (empty for [`Outcome::Follower`]).
    pub metrics: Vec<EpochMetrics>,
    /// The job's digest.
    pub job: String,
}

/// What a checkpoint must match to be resumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Identity {
    model: ModelConfig,
    labels: Vec<String>,
    recipe: Recipe,
    /// Batch, learning rate and its scaling, seed and fusion bucket.
    #[serde(default)]
    schedule: Option<serde_json::Value>,
    /// Data-parallel ranks.
    #[serde(default)]
    world: Option<usize>,
}

#[derive(Serialize, Deserialize)]
struct CheckpointState {
    epoch: usize,
    metrics: Vec<EpochMetrics>,
    identity: Option<Identity>,
}

/// Everything one rank needs, shared by the worker threads.
#[derive(Clone)]
struct Job<'a> {
    model_config: ModelConfig,
    data: Data,
    schedule: Schedule,
    test: Option<Channel>,
    resume: Option<Resume>,
    out: Store,
    identity: Identity,
    device: String,
    progress: &'a dyn Progress,
}

/// What a read of the processed data says when it fails.
const NOT_PROCESSED: &str = "the data must be the output of `shardline process`";

async fn channel(data: &Store, name: &str) -> Result<Option<Channel>, Error> {
    let key = index_key(name);
    if !data.exists(&key).await.map_err(store_error)? {
        return Ok(None);
    }
    let index: Index = read(data, &key, NOT_PROCESSED).await?;
    Ok(Some(Channel {
        store: data.child(name),
        shards: index.shardlist,
    }))
}

fn store_error(e: shardline_store::Error) -> Error {
    Error::Data(e.to_string())
}

fn contract_error(e: shardline_contract::Error) -> Error {
    Error::Data(e.to_string())
}

/// The model config for `choice` on data of `[c, h, w]` and `classes`, checked against both.
fn model_config(
    choice: &ModelChoice,
    input: [usize; 3],
    classes: usize,
) -> Result<ModelConfig, Error> {
    let config = match choice {
        ModelChoice::Bncnn => ModelConfig::bncnn(input, classes),
        ModelChoice::Cnn => ModelConfig::cnn(input, classes),
        ModelChoice::Mlp => ModelConfig::mlp(input, classes),
        ModelChoice::Reference => ModelConfig::reference(input, classes),
        ModelChoice::Resnet18 => ModelConfig::resnet18(input, classes),
        ModelChoice::Config(config) => config.clone(),
    };
    if config.input != input || config.classes != classes {
        return Err(Error::Config(format!(
            "the model config expects input {:?} and {} classes, but the data has {:?} and {} classes",
            config.input, config.classes, input, classes
        )));
    }
    config.validate().map_err(Error::Config)?;
    Ok(config)
}

/// Trains and writes the model directory.
pub async fn run(config: &TrainConfig, progress: &dyn Progress) -> Result<TrainReport, Error> {
    config.validate()?;
    let data = Store::open(&config.data)
        .map_err(|e| Error::Setting(format!("`data` {}: {e}", config.data)))?;
    let out = Store::open(&config.out)
        .map_err(|e| Error::Setting(format!("`out` {}: {e}", config.out)))?;
    if data.location().overlaps(out.location()) {
        return Err(Error::Setting(format!(
            "`out` {} overlaps the data {}: the model directory would be written among the shards it trains on; give an `out` beside the data",
            out.uri(),
            data.uri()
        )));
    }
    commit::recover(&data).await.map_err(store_error)?;
    let recipe: Recipe = read(&data, "recipe.json", NOT_PROCESSED).await?;
    let lineage_bytes = data.get("lineage.json").await.map_err(|e| {
        Error::Data(format!(
            "data {}: no finished processing job ({e}); give the output of `shardline process`",
            data.uri()
        ))
    })?;
    let process: ProcessLineage =
        lineage::parse(&data.uri_of("lineage.json"), &lineage_bytes).map_err(contract_error)?;
    let labels = process.labels.clone();
    let train = channel(&data, "train").await?.ok_or_else(|| {
        Error::Data(format!(
            "data {} has no train channel (train/index.json)",
            data.uri()
        ))
    })?;
    if train.shards.is_empty() {
        return Err(Error::Data(format!(
            "the train channel of {} is empty",
            data.uri()
        )));
    }
    let validation = channel(&data, "validation").await?;
    let test = channel(&data, "test").await?;
    let [h, w, c] = recipe.shape();
    let model_config = model_config(&config.model, [c, h, w], labels.len())?;

    let (mpi, world, rank_zero) = match config.ranks {
        Ranks::InProcess { workers } => (false, Some(workers), true),
        Ranks::Mpi { rank, size } => (true, size, rank == 0),
    };
    // What a resumed run must share with its checkpoint (the learning rate may change: lowering
    // it after a divergence is what resume is for; the run says so).
    let schedule_value = serde_json::json!({
        "batch": config.schedule.batch,
        "lr_scaling": config.schedule.lr_scaling,
        "seed": config.schedule.seed,
        "bucket_bytes": config.schedule.bucket_bytes,
    });
    // The job: everything that changes the model.
    let job = Digest::of(
        &serde_json::to_vec(&serde_json::json!({
            "data_lineage": Digest::of(&lineage_bytes),
            "model": model_config,
            "schedule": schedule_value,
            "lr": config.schedule.lr,
            "epochs": config.schedule.epochs,
            "warmup_epochs": config.schedule.warmup_epochs,
            "decay": config.schedule.decay,
            "patience": config.schedule.patience,
            "shift": config.schedule.shift,
            "world": world,
        }))
        .map_err(|e| Error::Data(format!("encoding the job: {e}")))?,
    )
    .to_string();
    let identity = Identity {
        model: model_config.clone(),
        labels: labels.clone(),
        recipe: recipe.clone(),
        schedule: Some(schedule_value),
        world,
    };
    if rank_zero {
        // --resume continues whatever this location holds (the checkpoint decides what fits).
        let claim = owner::claim(&out, Stage::Train, &job, config.force || config.resume)
            .await
            .map_err(contract_error)?;
        if claim == (Claim::Same { finished: true }) && !config.resume {
            let found: Option<ModelLineage> =
                match out.get_opt(files::LINEAGE).await.map_err(store_error)? {
                    Some(bytes) => lineage::parse(&out.uri_of(files::LINEAGE), &bytes).ok(),
                    None => None,
                };
            progress.message(&format!(
                "train: {} already holds this job's model; nothing to do (`force` to train again)",
                out.uri()
            ));
            return Ok(TrainReport {
                outcome: Outcome::Unchanged,
                out: out.uri(),
                test_accuracy: found.and_then(|l| l.test_accuracy),
                metrics: Vec::new(),
                job,
            });
        }
        progress.message(&format!(
            "train: {}, {:?} model, {} epochs, batch {} per worker, on {}",
            match world {
                Some(n) if !mpi => format!("{n} workers"),
                Some(n) => format!("{n} MPI ranks"),
                None => "MPI ranks".into(),
            },
            model_config.kind,
            config.schedule.epochs,
            config.schedule.batch,
            data.uri()
        ));
    }
    let resume = if config.resume {
        Some(load_checkpoint(&out, &identity, progress).await?)
    } else {
        None
    };
    let run = Job {
        model_config: model_config.clone(),
        data: Data {
            normalise: Normalise::from_recipe(&recipe),
            train,
            validation,
        },
        schedule: config.schedule.clone(),
        test,
        resume,
        out: out.clone(),
        identity,
        device: config.device.clone(),
        progress,
    };
    // The kernels' threads: this machine's cores shared out among the ranks (under MPI all ranks
    // are counted as if on this host, so several hosts' ranks use fewer threads than they could,
    // never more than the cores).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    crate::kernels::set_threads((cores / world.unwrap_or(1).max(1)).max(1));
    let result = if mpi {
        mpi_rank(&run, config.collective_timeout)?
    } else {
        let workers = world.unwrap_or(1);
        in_process(&run, workers, config.collective_timeout)?
    };
    let Some((trained, accuracy)) = result else {
        return Ok(TrainReport {
            outcome: Outcome::Follower,
            out: out.uri(),
            test_accuracy: None,
            metrics: Vec::new(),
            job,
        });
    };
    progress.done();
    write_model(
        &out,
        &job,
        &data,
        &lineage_bytes,
        world.unwrap_or(0),
        &config.schedule,
        &model_config,
        &labels,
        &recipe,
        &trained,
        accuracy,
    )
    .await?;
    Ok(TrainReport {
        outcome: Outcome::Trained,
        out: out.uri(),
        test_accuracy: accuracy,
        metrics: trained.metrics,
        job,
    })
}

#[allow(clippy::too_many_arguments)]
async fn write_model(
    out: &Store,
    job: &str,
    data: &Store,
    data_lineage: &[u8],
    workers: usize,
    schedule: &Schedule,
    model_config: &ModelConfig,
    labels: &[String],
    recipe: &Recipe,
    trained: &crate::Trained,
    accuracy: Option<f64>,
) -> Result<(), Error> {
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        (files::CONFIG, json(model_config)?),
        (files::WEIGHTS, crate::weights::encode(&trained.model)),
        (
            files::LABELS,
            json(&Labels {
                classes: labels.to_vec(),
            })?,
        ),
        (files::RECIPE, json(recipe)?),
        (files::METRICS, metrics_csv(&trained.metrics).into_bytes()),
        (files::PLOT, plot(&trained.metrics).into_bytes()),
    ];
    let record = ModelLineage {
        schema: lineage::SCHEMA,
        producer: PRODUCER.to_string(),
        step: "train".into(),
        job: job.to_string(),
        data: data.uri(),
        data_lineage: Digest::of(data_lineage),
        workers,
        settings: serde_json::to_value(schedule)
            .map_err(|e| Error::Data(format!("encoding the settings: {e}")))?,
        model: serde_json::to_value(model_config)
            .map_err(|e| Error::Data(format!("encoding the model config: {e}")))?,
        test_accuracy: accuracy,
        kept: Some(lineage::KeptEpoch {
            epoch: trained.kept.epoch,
            epochs_run: trained.kept.epochs_run,
            reason: trained.kept.reason.clone(),
        }),
        outputs: files
            .iter()
            .map(|(n, b)| (n.to_string(), FileRecord::of(b)))
            .collect(),
    };
    files.push((
        files::LINEAGE,
        lineage::encode(&record).map_err(contract_error)?,
    ));
    let packed = files::pack(&files).map_err(contract_error)?;
    let lineage_file = files.pop();
    files.push((files::ARCHIVE, packed));
    files.push((files::TIMINGS, timings_csv(&trained.metrics).into_bytes()));
    let (owner_key, owner_record) = owner::finished(Stage::Train, job).map_err(contract_error)?;
    files.push((owner_key, owner_record));
    files.extend(lineage_file);
    commit::recover(out).await.map_err(store_error)?;
    let mut tx = Commit::begin(out);
    for (name, bytes) in files {
        tx.stage(name, Bytes::from(bytes))
            .await
            .map_err(store_error)?;
    }
    tx.publish().await.map_err(store_error)?;
    Ok(())
}

/// Pretty JSON, or an error (never an empty file).
fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec_pretty(value).map_err(|e| Error::Data(format!("encoding JSON: {e}")))
}

/// Compact JSON for a message.
fn show<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("<{e}>"))
}

async fn load_checkpoint(
    out: &Store,
    wanted: &Identity,
    progress: &dyn Progress,
) -> Result<Resume, Error> {
    let at = out.uri_of("checkpoint/");
    let bytes = out.get("checkpoint/state.json").await.map_err(|e| {
        Error::Data(format!(
            "`resume` needs a checkpoint in {at} ({e}); train without `resume` to start over"
        ))
    })?;
    let state: CheckpointState = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Data(format!("{at}state.json is not a checkpoint ({e})")))?;
    let found = state.identity.ok_or_else(|| {
        Error::Data(format!(
            "the checkpoint in {at} does not say which model wrote it; start a new run (another out, without resume)"
        ))
    })?;
    let refuse = |message: String| {
        Err(Error::Data(format!(
            "the checkpoint in {at} {message}; resume with the same settings, or start a new run with another out"
        )))
    };
    if found.model != wanted.model {
        return refuse(format!(
            "belongs to another model ({}), not this run's ({})",
            show(&found.model),
            show(&wanted.model)
        ));
    }
    if found.labels != wanted.labels {
        return refuse(format!(
            "was trained on the classes {}, but the data has {}",
            show(&found.labels),
            show(&wanted.labels)
        ));
    }
    if found.recipe != wanted.recipe {
        return refuse(format!(
            "was trained on data processed with another recipe ({} vs {})",
            show(&found.recipe),
            show(&wanted.recipe)
        ));
    }
    // Older checkpoints did not record the schedule or the world size: those are kept as given.
    if found.schedule.is_some() && found.schedule != wanted.schedule {
        return refuse(format!(
            "was written with another batch size, seed or fusion bucket ({} vs {})",
            show(&found.schedule),
            show(&wanted.schedule)
        ));
    }
    if found.world.is_some() && wanted.world.is_some() && found.world != wanted.world {
        return refuse(format!(
            "was written by {} workers, not {}",
            show(&found.world),
            show(&wanted.world)
        ));
    }
    let weights = out
        .get("checkpoint/weights.bin")
        .await
        .map_err(store_error)?;
    let optimizer = out
        .get("checkpoint/optimizer.bpk")
        .await
        .map_err(store_error)?
        .to_vec();
    let best = match out
        .get_opt("checkpoint/best.bin")
        .await
        .map_err(store_error)?
    {
        Some(bytes) => Some(crate::weights::decode_parameters(&bytes)?),
        None => None,
    };
    progress.message(&format!(
        "train: resuming after epoch {} from {at} (the epochs setting is the new total)",
        state.epoch
    ));
    Ok(Resume {
        epoch: state.epoch,
        parameters: crate::weights::decode_parameters(&weights)?,
        optimizer,
        metrics: state.metrics,
        best,
    })
}

/// Writes the checkpoint of an epoch under `checkpoint/`, atomically, the state record last.
fn checkpoint(
    out: &Store,
    identity: &Identity,
    done: &[EpochMetrics],
    model: &Model,
    best: Option<&crate::sync::Parameters>,
    optimizer: &[u8],
) -> Result<(), Error> {
    let state = CheckpointState {
        epoch: done.len(),
        metrics: done.to_vec(),
        identity: Some(identity.clone()),
    };
    let state = serde_json::to_vec_pretty(&state)
        .map_err(|e| Error::Data(format!("encoding the checkpoint state: {e}")))?;
    let mut files = vec![
        ("checkpoint/weights.bin", crate::weights::encode(model)),
        ("checkpoint/optimizer.bpk", optimizer.to_vec()),
    ];
    if let Some(best) = best {
        files.push((
            "checkpoint/best.bin",
            crate::weights::encode_parameters(best),
        ));
    }
    files.push(("checkpoint/state.json", state));
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
        .map_err(|e| Error::Data(format!("checkpoint: {e}")))?;
    runtime
        .block_on(write)
        .map_err(|e| Error::Data(format!("writing the checkpoint: {e}")))
}

/// One rank's work: train (rank 0 writes a checkpoint after every epoch), then measure the test
/// accuracy over all ranks.
fn worker(
    comm: &mut dyn Communicator,
    run: &Job<'_>,
) -> Result<(crate::Trained, Option<f64>), Error> {
    let device = crate::device::by_name(&run.device)?;
    let done = std::sync::Mutex::new(
        run.resume
            .as_ref()
            .map(|r| r.metrics.clone())
            .unwrap_or_default(),
    );
    let rank = comm.rank();
    let epochs = run.schedule.epochs;
    let on_step = |epoch: usize, step: usize, steps: usize| {
        if rank == 0 {
            run.progress.step(epoch, epochs, step, steps);
        }
        shardline_contract::fault::point(
            &format!("rank-{rank}"),
            &format!("epoch-{epoch}-step-{step}"),
        );
    };
    let on_epoch = |m: &EpochMetrics,
                    model: &Model,
                    best: Option<&crate::sync::Parameters>,
                    optimizer: &[u8]| {
        run.progress.epoch(m);
        let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
        done.push(m.clone());
        checkpoint(&run.out, &run.identity, &done, model, best, optimizer)?;
        shardline_contract::fault::point("train", &format!("after-epoch-{}", m.epoch));
        Ok(())
    };
    let trained = crate::train(
        comm,
        &run.model_config,
        &run.data,
        &run.schedule,
        &device,
        run.resume.as_ref(),
        crate::Hooks {
            on_epoch: &on_epoch,
            on_step: &on_step,
        },
    )?;
    let accuracy = match &run.test {
        Some(test) => Some(test_accuracy(
            comm,
            &trained.model,
            test,
            &run.data.normalise,
            &device,
        )?),
        None => None,
    };
    Ok((trained, accuracy))
}

type RankResult = Option<(crate::Trained, Option<f64>)>;

fn in_process(run: &Job<'_>, workers: usize, timeout: Duration) -> Result<RankResult, Error> {
    std::thread::scope(|scope| {
        let threads: Vec<_> = InProcess::group(workers, timeout)
            .into_iter()
            .map(|mut comm| {
                scope.spawn(move || {
                    let rank = comm.rank();
                    worker(&mut comm, run).map(|r| (rank, r))
                })
            })
            .collect();
        let mut zero = None;
        let mut first_error = None;
        for thread in threads {
            match thread.join() {
                Ok(Ok((0, result))) => zero = Some(result),
                Ok(Ok(_)) => {}
                // A rank that stops (a diverged loss, bad data) leaves the others to find it gone
                // in their next collective: report the cause, not the consequence.
                Ok(Err(e)) => match (&first_error, &e) {
                    (Some(Error::Collective(_)), cause)
                        if !matches!(cause, Error::Collective(_)) =>
                    {
                        first_error = Some(e);
                    }
                    (None, _) => first_error = Some(e),
                    _ => {}
                },
                Err(_) => {
                    first_error.get_or_insert(Error::Data("a worker thread panicked".into()));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => zero
                .map(Some)
                .ok_or_else(|| Error::Data("rank 0 returned nothing".into())),
        }
    })
}

/// Runs this process's rank over MPI; rank 0 gets the result.
#[cfg(feature = "mpi")]
fn mpi_rank(run: &Job<'_>, timeout: Duration) -> Result<RankResult, Error> {
    // On its own thread: checkpoints start their own runtime, which cannot nest in this one.
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> Result<RankResult, Error> {
                let mut comm = shardline_comm::mpi_comm::Mpi::init(timeout)?;
                let rank = comm.rank();
                let result = worker(&mut comm, run)?;
                Ok((rank == 0).then_some(result))
            })
            .join()
            .map_err(|_| Error::Data("the MPI worker panicked".into()))?
    })
}

#[cfg(not(feature = "mpi"))]
fn mpi_rank(_: &Job<'_>, _: Duration) -> Result<RankResult, Error> {
    Err(Error::Setting(
        "started by an MPI launcher, but this shardline was built without MPI; build it with `cargo build --release --features mpi` (needs libopenmpi-dev and libclang-dev)".into(),
    ))
}
