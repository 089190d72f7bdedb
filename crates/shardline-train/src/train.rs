//! The data-parallel training loop, Horovod's model: every worker holds the model; parameters
//! are broadcast from rank 0 at the start; each step every worker computes gradients on its own
//! batch, the gradients are averaged by fused allreduce, and every worker applies the same
//! update. Rank 0 alone keeps the metrics and the final model.

use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use shardline_comm::Communicator;
use shardline_contract::shards::ShardRecord;
use shardline_dataset::{Batch, Normalise, Prefetcher, plan_epoch};
use shardline_store::Store;

use crate::Error;
use crate::model::{Model, ModelConfig};
use crate::sync::{average_gradients, broadcast_parameters};

/// How the learning rate follows the number of workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrScaling {
    /// `lr × workers`, Horovod's advice when each worker keeps its batch size.
    Linear,
    /// The same learning rate whatever the number of workers.
    None,
}

/// The training loop's settings: the schedule every rank follows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Schedule {
    /// Passes over the training data.
    pub epochs: usize,
    /// Samples per worker and step.
    pub batch: usize,
    /// Base learning rate (Adam).
    pub lr: f64,
    /// How the learning rate follows the number of workers.
    pub lr_scaling: LrScaling,
    /// Seed of the shard order.
    pub seed: u64,
    /// Gradient fusion bucket size in bytes.
    pub bucket_bytes: usize,
}

/// One channel of processed data: its shards and where they are.
#[derive(Debug, Clone)]
pub struct Channel {
    /// The store holding the channel's shards.
    pub store: Store,
    /// The shards.
    pub shards: Vec<ShardRecord>,
}

/// The processed data a job trains on.
#[derive(Debug, Clone)]
pub struct Data {
    /// How shard tensors become model inputs (from the processing recipe).
    pub normalise: Normalise,
    /// The training channel.
    pub train: Channel,
    /// The validation channel, if any.
    pub validation: Option<Channel>,
}

/// Per-epoch metrics, as written to `metrics.csv`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy.
    pub train_accuracy: f64,
    /// Mean validation loss (NaN without a validation channel).
    pub validation_loss: f64,
    /// Validation accuracy.
    pub validation_accuracy: f64,
    /// Training samples per second over all workers.
    pub samples_per_second: f64,
    /// Share of step time spent waiting for data, percent.
    pub data_wait_percent: f64,
    /// Mean allreduce time per step, milliseconds.
    pub allreduce_ms: f64,
    /// Seconds of the epoch's training steps (rank 0's clock; validation left out).
    #[serde(default)]
    pub train_seconds: f64,
}

/// Loss and accuracy sums of one pass.
#[derive(Default)]
struct Sums {
    loss: f64,
    correct: f64,
    samples: f64,
}

fn tensors(batch: Batch, normalise: &Normalise, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let [h, w, c] = normalise.shape;
    let n = batch.labels.len();
    let images = Tensor::<4>::from_data(TensorData::new(batch.images, [n, c, h, w]), device);
    let labels: Vec<i64> = batch.labels.iter().map(|&l| i64::from(l)).collect();
    let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [n]), device);
    (images, labels)
}

/// Sums of loss × samples and correct predictions for one batch.
fn score(logits: Tensor<2>, labels: Tensor<1, Int>, loss: f64) -> Sums {
    let n = labels.dims()[0] as f64;
    let predicted = logits.argmax(1).flatten::<1>(0, 1);
    let correct: i64 = predicted.equal(labels).int().sum().into_scalar();
    Sums {
        loss: loss * n,
        correct: correct as f64,
        samples: n,
    }
}

/// Sums the pass's totals over the ranks.
fn all_sums(comm: &mut dyn Communicator, sums: &Sums) -> Result<Sums, Error> {
    let mut buffer = [sums.loss as f32, sums.correct as f32, sums.samples as f32];
    comm.allreduce_sum(&mut buffer)?;
    Ok(Sums {
        loss: f64::from(buffer[0]),
        correct: f64::from(buffer[1]),
        samples: f64::from(buffer[2]),
    })
}

/// One training step on one worker: forward, backward, average the gradients, update.
pub fn step(
    comm: &mut dyn Communicator,
    model: Model,
    optimizer: &mut ModuleOptimizer,
    images: Tensor<4>,
    labels: Tensor<1, Int>,
    lr: f64,
    bucket_bytes: usize,
) -> Result<(Model, f64, f64, Tensor<2>), Error> {
    let device = images.device();
    let logits = model.forward(images);
    let loss = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits.clone(), labels);
    let loss_value: f32 = loss.clone().into_scalar();
    if !loss_value.is_finite() {
        return Err(Error::Diverged { loss: loss_value });
    }
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let (grads, stats) = average_gradients(comm, &model, grads, bucket_bytes)?;
    let model = optimizer.step(lr, model, grads);
    Ok((model, f64::from(loss_value), stats.seconds, logits.detach()))
}

/// Evaluates `model` on a channel, each rank on its share, and returns the totals of all ranks.
fn evaluate(
    comm: &mut dyn Communicator,
    model: &Model,
    channel: &Channel,
    normalise: &Normalise,
    batch: usize,
    device: &Device,
) -> Result<(f64, f64), Error> {
    let plan = plan_epoch(&channel.shards, comm.size(), 1, 0, 0)?;
    let urls = plan.shards[comm.rank()]
        .iter()
        .map(|&i| channel.shards[i].url.clone())
        .collect();
    let mut reader = Prefetcher::spawn(channel.store.clone(), urls, normalise.clone(), batch * 2);
    let mut sums = Sums::default();
    // Evaluation needs no collective per batch, so ranks may hold different numbers of batches.
    while let Some(b) = reader.next_partial(batch)? {
        let (images, labels) = tensors(b, normalise, device);
        let logits = model.forward(images);
        let loss: f32 = CrossEntropyLossConfig::new()
            .init(device)
            .forward(logits.clone(), labels.clone())
            .into_scalar();
        let s = score(logits, labels, f64::from(loss));
        sums.loss += s.loss;
        sums.correct += s.correct;
        sums.samples += s.samples;
    }
    let total = all_sums(comm, &sums)?;
    Ok((
        total.loss / total.samples.max(1.0),
        total.correct / total.samples.max(1.0),
    ))
}

/// Where a resumed run starts: the state saved after `epoch` epochs.
#[derive(Debug, Clone)]
pub struct Resume {
    /// Epochs already done.
    pub epoch: usize,
    /// The model's parameters then, in module order.
    pub parameters: crate::sync::Parameters,
    /// The optimizer's state then (burnpack bytes).
    pub optimizer: Vec<u8>,
    /// The metrics of the epochs done.
    pub metrics: Vec<EpochMetrics>,
}

/// Called on rank 0 after each epoch with the metrics, the model and the optimizer's state, to
/// write a checkpoint.
pub type EpochEnd<'a> = &'a dyn Fn(&EpochMetrics, &Model, &[u8]) -> Result<(), Error>;

/// Called on every rank after each training step with `(epoch, step, steps)`, both counted from
/// 1: progress bars, and the fault points of the crash tests.
pub type StepEnd<'a> = &'a dyn Fn(usize, usize, usize);

/// What the training loop calls back into: after every step (every rank) and after every epoch
/// (rank 0).
#[derive(Clone, Copy)]
pub struct Hooks<'a> {
    /// After each epoch, on rank 0: the checkpoint.
    pub on_epoch: EpochEnd<'a>,
    /// After each step, on every rank.
    pub on_step: StepEnd<'a>,
}

/// What a worker returns: its final model and, on rank 0, the metrics.
pub struct Trained {
    /// The trained model (identical on every rank).
    pub model: Model,
    /// Metrics per epoch.
    pub metrics: Vec<EpochMetrics>,
}

/// Trains on this rank. Every rank calls it with the same arguments but its own communicator.
pub fn train(
    comm: &mut dyn Communicator,
    model_config: &ModelConfig,
    data: &Data,
    config: &Schedule,
    device: &Device,
    resume: Option<&Resume>,
    hooks: Hooks<'_>,
) -> Result<Trained, Error> {
    let (normalise, train, validation) = (&data.normalise, &data.train, data.validation.as_ref());
    let autodiff = device.clone().autodiff();
    // Rank 0's seeded weights reach every rank through the broadcast, as in Horovod.
    let model = crate::sync::seeded(model_config.init(&autodiff), config.seed)?;
    let (model, mut optimizer, first_epoch, mut metrics) = match resume {
        None => (model, AdamConfig::new().init(), 0, Vec::new()),
        Some(r) => (
            crate::sync::load_parameters(model, r.parameters.clone())?,
            AdamConfig::new()
                .init()
                .from_bytes(burn::tensor::Bytes::from_bytes_vec(r.optimizer.clone()))
                .map_err(|e| Error::Weights(format!("the checkpoint's optimizer state: {e:?}")))?,
            r.epoch,
            r.metrics.clone(),
        ),
    };
    let mut model = broadcast_parameters(comm, model)?;
    let lr = match config.lr_scaling {
        LrScaling::Linear => config.lr * comm.size() as f64,
        LrScaling::None => config.lr,
    };
    let mut first_loss: Option<f64> = None;
    for epoch in first_epoch..config.epochs {
        let plan = plan_epoch(
            &train.shards,
            comm.size(),
            config.batch,
            config.seed,
            epoch as u64,
        )?;
        let urls = plan.shards[comm.rank()]
            .iter()
            .map(|&i| train.shards[i].url.clone())
            .collect();
        // A shuffle buffer of a few batches' worth of tensors (at least 1,000 samples): shards are
        // written in key order, one class after another.
        let shuffle = (config.batch * 32).max(1000);
        let seed = config.seed ^ ((epoch as u64) << 32) ^ comm.rank() as u64;
        let mut reader = Prefetcher::spawn_shuffled(
            train.store.clone(),
            urls,
            normalise.clone(),
            config.batch * 4,
            shuffle,
            seed,
        );
        let started = Instant::now();
        let (mut waited, mut reduced) = (0.0, 0.0);
        let mut sums = Sums::default();
        for done in 1..=plan.steps {
            let batch = reader.next_batch(config.batch)?.ok_or_else(|| {
                Error::Data("a rank ran out of samples before the planned steps".into())
            })?;
            waited += batch.waited.as_secs_f64();
            let (images, labels) = tensors(batch, normalise, &autodiff);
            let (next, loss, seconds, logits) = step(
                comm,
                model,
                &mut optimizer,
                images,
                labels.clone(),
                lr,
                config.bucket_bytes,
            )?;
            model = next;
            reduced += seconds;
            // An exploding loss stops training like a NaN would: far above where this run began.
            let first = *first_loss.get_or_insert(loss);
            if loss > (100.0 * first).max(1e3) {
                return Err(Error::Diverged { loss: loss as f32 });
            }
            let s = score(logits, labels, loss);
            sums.loss += s.loss;
            sums.correct += s.correct;
            sums.samples += s.samples;
            (hooks.on_step)(epoch + 1, done, plan.steps);
        }
        drop(reader);
        let elapsed = started.elapsed().as_secs_f64();
        let total = all_sums(comm, &sums)?;
        let (validation_loss, validation_accuracy) = match validation {
            Some(channel) => evaluate(
                comm,
                &model.valid(),
                channel,
                normalise,
                config.batch,
                device,
            )?,
            None => (f64::NAN, f64::NAN),
        };
        let m = EpochMetrics {
            epoch: epoch + 1,
            train_loss: total.loss / total.samples.max(1.0),
            train_accuracy: total.correct / total.samples.max(1.0),
            validation_loss,
            validation_accuracy,
            samples_per_second: total.samples / elapsed.max(1e-9),
            data_wait_percent: 100.0 * waited / elapsed.max(1e-9),
            allreduce_ms: 1e3 * reduced / plan.steps.max(1) as f64,
            train_seconds: elapsed,
        };
        if comm.rank() == 0 {
            let state = optimizer
                .into_bytes()
                .map_err(|e| Error::Weights(format!("saving the optimizer state: {e:?}")))?;
            (hooks.on_epoch)(&m, &model.valid(), &state)?;
        }
        metrics.push(m);
    }
    Ok(Trained {
        model: model.valid(),
        metrics,
    })
}

/// Accuracy of a trained model on a channel, over all ranks.
pub fn test_accuracy(
    comm: &mut dyn Communicator,
    model: &Model,
    channel: &Channel,
    normalise: &Normalise,
    device: &Device,
) -> Result<f64, Error> {
    evaluate(comm, model, channel, normalise, 64, device).map(|(_, accuracy)| accuracy)
}

/// The confusion matrix of a model on a channel, read by this process alone:
/// `matrix[true class][predicted class]`.
pub fn confusion(
    model: &Model,
    channel: &Channel,
    normalise: &Normalise,
    classes: usize,
    device: &Device,
) -> Result<Vec<Vec<u64>>, Error> {
    let urls = channel.shards.iter().map(|s| s.url.clone()).collect();
    let mut reader = Prefetcher::spawn(channel.store.clone(), urls, normalise.clone(), 128);
    let mut matrix = vec![vec![0u64; classes]; classes];
    while let Some(batch) = reader.next_partial(64)? {
        let truths = batch.labels.clone();
        let (images, _) = tensors(batch, normalise, device);
        let predicted: Vec<i64> = model
            .forward(images)
            .argmax(1)
            .flatten::<1>(0, 1)
            .to_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .map_err(|e| Error::Data(format!("reading predictions: {e:?}")))?;
        for (&truth, &guess) in truths.iter().zip(&predicted) {
            let (t, g) = (truth as usize, guess as usize);
            if t >= classes || g >= classes {
                return Err(Error::Data(format!(
                    "label {t} or prediction {g} is outside the model's {classes} classes; were these shards made for another label set?"
                )));
            }
            matrix[t][g] += 1;
        }
    }
    Ok(matrix)
}
