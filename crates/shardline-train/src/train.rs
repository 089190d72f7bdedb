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

/// The most bytes of raw (uint8) samples a rank's shuffle buffer holds.
const SHUFFLE_BYTES: usize = 128 << 20;

/// How the learning rate follows the number of workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrScaling {
    /// `lr × workers`, Horovod's advice when each worker keeps its batch size.
    Linear,
    /// The same learning rate whatever the number of workers.
    None,
}

/// How the learning rate falls over the epochs, after any warm-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// The same rate throughout.
    #[default]
    Constant,
    /// Half a cosine from the peak rate to zero at the last epoch (`epochs`, the maximum).
    Cosine,
}

/// The training loop's settings: the schedule every rank follows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Schedule {
    /// Passes over the training data: the most, when `patience` may stop training earlier.
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
    /// Epochs over which the rate rises linearly from `lr` to the worker-scaled rate (Goyal et
    /// al.'s warm-up); 0 starts at the scaled rate. At most `epochs - 1` of them are used.
    #[serde(default)]
    pub warmup_epochs: usize,
    /// How the rate falls after the warm-up.
    #[serde(default)]
    pub decay: Decay,
    /// Light augmentation: each training sample is moved by a random translation of up to this
    /// many pixels each way (`Some(0)`: none); `None` picks it from the image size,
    /// `min(height, width) / 12` (2 pixels on 28x28 or 32x32, none under 12x12).
    #[serde(default = "no_shift")]
    pub shift: Option<usize>,
    /// Early stopping: with a validation channel, stop when its accuracy has not improved for
    /// this many epochs, and keep the best epoch's weights. `None` runs every epoch and keeps the
    /// last.
    #[serde(default)]
    pub patience: Option<usize>,
}

/// Records written before augmentation existed trained without it.
fn no_shift() -> Option<usize> {
    Some(0)
}

impl Schedule {
    /// The translation of [`Schedule::shift`] in pixels, for images of `height` x `width`.
    pub fn shift_pixels(&self, height: usize, width: usize) -> usize {
        self.shift.unwrap_or(height.min(width) / 12)
    }

    /// The learning rate of step `step` (from 0) of `steps` in epoch `epoch` (from 0), for
    /// `workers` workers.
    pub fn lr_at(&self, workers: usize, epoch: usize, step: usize, steps: usize) -> f64 {
        let peak = match self.lr_scaling {
            LrScaling::Linear => self.lr * workers as f64,
            LrScaling::None => self.lr,
        };
        let t = epoch as f64 + step as f64 / steps.max(1) as f64;
        let warmup = self.warmup_epochs.min(self.epochs.saturating_sub(1)) as f64;
        if t < warmup {
            return self.lr + (peak - self.lr) * t / warmup;
        }
        match self.decay {
            Decay::Constant => peak,
            Decay::Cosine => {
                let span = (self.epochs as f64 - warmup).max(1e-9);
                let done = ((t - warmup) / span).clamp(0.0, 1.0);
                peak * 0.5 * (1.0 + (std::f64::consts::PI * done).cos())
            }
        }
    }
}

/// The epoch whose weights a run keeps, by the early-stopping rule: the highest validation
/// accuracy, the lower validation loss between equals, the earlier epoch between those. `None`
/// without validation figures.
pub fn best_epoch(metrics: &[EpochMetrics]) -> Option<&EpochMetrics> {
    metrics
        .iter()
        .filter(|m| m.validation_accuracy.is_finite())
        .fold(None, |best: Option<&EpochMetrics>, m| match best {
            Some(b)
                if b.validation_accuracy > m.validation_accuracy
                    || (b.validation_accuracy == m.validation_accuracy
                        && b.validation_loss <= m.validation_loss) =>
            {
                Some(b)
            }
            _ => Some(m),
        })
}

/// Which epoch's weights a trained model holds, and why: written into its lineage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    /// The 1-based epoch whose weights the model holds.
    pub epoch: usize,
    /// Epochs run.
    pub epochs_run: usize,
    /// Why this epoch.
    pub reason: String,
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
    /// The learning rate at the epoch's last step.
    #[serde(default)]
    pub lr: f64,
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
        .map(|&i| channel.shards[i].clone())
        .collect();
    let mut reader = Prefetcher::spawn_shuffled(
        channel.store.clone(),
        urls,
        normalise.clone(),
        batch * 2,
        0,
        0,
        0,
        plan.part(comm.rank()),
    );
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
    /// The parameters of the best epoch so far, when early stopping keeps it.
    pub best: Option<crate::sync::Parameters>,
}

/// Called on rank 0 after each epoch with the metrics, the model, the best epoch's parameters
/// (when early stopping keeps them) and the optimizer's state, to write a checkpoint.
pub type EpochEnd<'a> =
    &'a dyn Fn(&EpochMetrics, &Model, Option<&crate::sync::Parameters>, &[u8]) -> Result<(), Error>;

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
    /// Which epoch's weights `model` holds, and why.
    pub kept: Kept,
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
    let model = crate::sync::seeded_as(
        model_config.init(&autodiff),
        config.seed,
        model_config.init_scheme(),
    )?;
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
    let keep_best = config.patience.is_some() && validation.is_some();
    let mut best = resume.and_then(|r| r.best.clone());
    let mut first_loss: Option<f64> = None;
    let mut lr = config.lr_at(comm.size(), first_epoch, 0, 1);
    for epoch in first_epoch..config.epochs {
        if let (Some(patience), Some(b)) = (config.patience, best_epoch(&metrics))
            && keep_best
            && epoch - b.epoch >= patience
        {
            break;
        }
        let plan = plan_epoch(
            &train.shards,
            comm.size(),
            config.batch,
            config.seed,
            epoch as u64,
        )?;
        let urls = plan.shards[comm.rank()]
            .iter()
            .map(|&i| train.shards[i].clone())
            .collect();
        // Shards are written in key order, one class after another, so batches drawn in that
        // order hold one or two classes (which ruins batch norm's statistics and slows
        // learning). The shuffle buffer holds up to SHUFFLE_BYTES of raw samples, which covers a
        // whole rank's share of small-image datasets; at least 32 batches or 1,000 samples.
        let shuffle = (config.batch * 32)
            .max(1000)
            .max(SHUFFLE_BYTES / normalise.len().max(1));
        let seed = config.seed ^ ((epoch as u64) << 32) ^ comm.rank() as u64;
        let mut reader = Prefetcher::spawn_shuffled(
            train.store.clone(),
            urls,
            normalise.clone(),
            config.batch * 4,
            shuffle,
            config.shift_pixels(normalise.shape[0], normalise.shape[1]),
            seed,
            plan.part(comm.rank()),
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
            lr = config.lr_at(comm.size(), epoch, done - 1, plan.steps);
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
        model = crate::sync::average_running_stats(comm, model)?;
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
            lr,
        };
        metrics.push(m.clone());
        if keep_best && best_epoch(&metrics).is_some_and(|b| b.epoch == m.epoch) {
            best = Some(crate::sync::parameters(&model.valid()));
        }
        if comm.rank() == 0 {
            let state = optimizer
                .into_bytes()
                .map_err(|e| Error::Weights(format!("saving the optimizer state: {e:?}")))?;
            let best = if keep_best { best.as_ref() } else { None };
            (hooks.on_epoch)(&m, &model.valid(), best, &state)?;
        }
    }
    let last = metrics.last().map_or(0, |m| m.epoch);
    let kept = match (keep_best, best_epoch(&metrics), best) {
        (true, Some(b), Some(parameters)) if b.epoch != last => {
            model = crate::sync::load_parameters(model, parameters)?;
            Kept {
                epoch: b.epoch,
                epochs_run: last,
                reason: format!(
                    "the best validation accuracy ({:.4}, epoch {} of {last} run{})",
                    b.validation_accuracy,
                    b.epoch,
                    if last < config.epochs {
                        format!("; stopped early: no better in {} epochs", last - b.epoch)
                    } else {
                        String::new()
                    }
                ),
            }
        }
        (true, Some(b), _) if b.epoch == last => Kept {
            epoch: last,
            epochs_run: last,
            reason: format!(
                "the best validation accuracy ({:.4}) was the last epoch's",
                b.validation_accuracy
            ),
        },
        (true, Some(b), None) => Kept {
            epoch: last,
            epochs_run: last,
            reason: format!(
                "the last epoch: the best one ({}) was before a resume from a checkpoint that did not keep its weights",
                b.epoch
            ),
        },
        _ => Kept {
            epoch: last,
            epochs_run: last,
            reason: if validation.is_none() {
                "the last epoch: no validation channel to choose another by".into()
            } else {
                "the last epoch: early stopping is off".into()
            },
        },
    };
    Ok(Trained {
        model: model.valid(),
        metrics,
        kept,
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
    let mut reader = Prefetcher::spawn(
        channel.store.clone(),
        channel.shards.clone(),
        normalise.clone(),
        128,
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(epochs: usize, warmup_epochs: usize, decay: Decay) -> Schedule {
        Schedule {
            epochs,
            batch: 32,
            lr: 1e-3,
            lr_scaling: LrScaling::Linear,
            seed: 0,
            bucket_bytes: 1 << 20,
            warmup_epochs,
            decay,
            shift: Some(0),
            patience: None,
        }
    }

    #[test]
    fn the_rate_warms_up_to_the_scaled_rate_then_falls_as_a_cosine() {
        let s = schedule(10, 2, Decay::Cosine);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        // Warm-up: from lr to lr x workers over two epochs, linearly.
        assert!(close(s.lr_at(4, 0, 0, 100), 1e-3));
        assert!(close(s.lr_at(4, 1, 0, 100), 2.5e-3));
        // The peak at the end of the warm-up, half of it midway through the decay, zero at the end.
        assert!(close(s.lr_at(4, 2, 0, 100), 4e-3));
        assert!(close(s.lr_at(4, 6, 0, 100), 2e-3));
        assert!(s.lr_at(4, 9, 99, 100) < 1e-5);
        // Constant decay keeps the peak; no scaling keeps lr; one worker needs no warm-up.
        assert!(close(
            schedule(10, 2, Decay::Constant).lr_at(4, 8, 0, 10),
            4e-3
        ));
        let unscaled = Schedule {
            lr_scaling: LrScaling::None,
            ..schedule(10, 0, Decay::Constant)
        };
        assert!(close(unscaled.lr_at(4, 3, 0, 10), 1e-3));
        assert!(close(s.lr_at(1, 0, 5, 10), 1e-3));
        // A warm-up longer than the run ends an epoch before it, so that the peak is reached.
        let short = schedule(2, 5, Decay::Constant);
        assert!(close(short.lr_at(2, 1, 0, 10), 2e-3));
    }

    fn epoch(epoch: usize, accuracy: f64, loss: f64) -> EpochMetrics {
        EpochMetrics {
            epoch,
            validation_accuracy: accuracy,
            validation_loss: loss,
            ..EpochMetrics::default()
        }
    }

    #[test]
    fn the_best_epoch_has_the_highest_validation_accuracy_then_the_lowest_loss() {
        let metrics = [
            epoch(1, 0.8, 0.5),
            epoch(2, 0.9, 0.4),
            epoch(3, 0.9, 0.3),
            epoch(4, 0.9, 0.3),
            epoch(5, 0.85, 0.2),
        ];
        assert_eq!(best_epoch(&metrics).map(|m| m.epoch), Some(3));
        assert_eq!(best_epoch(&metrics[..2]).map(|m| m.epoch), Some(2));
        // Without validation figures (NaN) there is no best epoch.
        assert!(best_epoch(&[epoch(1, f64::NAN, f64::NAN)]).is_none());
    }
}
