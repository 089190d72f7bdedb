//! Dynamic batching: requests wait in a bounded queue; a model thread takes the first, gathers
//! more until it holds `max_batch` or `max_delay` has passed since the first arrived (then it
//! still takes whatever is already waiting, up to `max_batch`), runs one `predict` and answers
//! each request. A full queue refuses at once (the caller answers 429) instead of growing memory.
//! This is the scheme of Triton's dynamic batcher and TF Serving's batching session.
//!
//! The model lives on its threads (`workers` of them, each with its own copy built by
//! [`Inference::load`]), so it never has to be `Sync`; nothing on the HTTP side waits on it
//! except the requests that need a prediction.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::inference::Inference;
use crate::metrics::Metrics;
use crate::{Error, InferenceError};

/// Settings of the batcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// The most requests in one model call (1: no batching).
    pub max_batch: usize,
    /// How long the first request of a batch may wait for others.
    pub max_delay: Duration,
    /// Requests that may wait in the queue; one more is refused.
    pub queue: usize,
    /// Model threads, each with its own copy of the model.
    pub workers: usize,
}

impl Default for BatchConfig {
    fn default() -> BatchConfig {
        BatchConfig {
            max_batch: 32,
            max_delay: Duration::from_millis(2),
            queue: 1024,
            workers: 1,
        }
    }
}

impl BatchConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_batch == 0 || self.queue == 0 || self.workers == 0 {
            return Err(Error::BadConfig(
                "--max-batch, --queue and --workers must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// What a request waits on: its output or why there is none.
pub type Pending<O> = oneshot::Receiver<Result<O, InferenceError>>;

struct Job<I: Inference> {
    input: I::Input,
    arrived: Instant,
    reply: oneshot::Sender<Result<I::Output, InferenceError>>,
}

/// The queue in front of the model threads.
pub struct Batcher<I: Inference> {
    queue: SyncSender<Job<I>>,
    capacity: usize,
    alive: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl<I: Inference> Batcher<I> {
    /// Starts the model threads and waits until each has built its model.
    pub fn start(
        handler: Arc<I>,
        config: BatchConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Batcher<I>, Error> {
        config.validate()?;
        let (queue, jobs) = std::sync::mpsc::sync_channel::<Job<I>>(config.queue);
        let jobs = Arc::new(Mutex::new(jobs));
        let alive = Arc::new(AtomicUsize::new(0));
        let (loaded_tx, loaded_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        for worker in 0..config.workers {
            let handler = handler.clone();
            let jobs = jobs.clone();
            let alive = alive.clone();
            let metrics = metrics.clone();
            let loaded = loaded_tx.clone();
            std::thread::Builder::new()
                .name(format!("shardline-model-{worker}"))
                .spawn(move || {
                    let mut model = match handler.load() {
                        Ok(model) => model,
                        Err(e) => {
                            let _ = loaded.send(Err(e));
                            return;
                        }
                    };
                    alive.fetch_add(1, Ordering::SeqCst);
                    let _ = loaded.send(Ok(()));
                    drop(loaded);
                    run(&*handler, &mut model, &jobs, config, &metrics);
                    alive.fetch_sub(1, Ordering::SeqCst);
                })
                .map_err(|source| Error::Io {
                    what: "starting a model thread".into(),
                    source,
                })?;
        }
        drop(loaded_tx);
        for _ in 0..config.workers {
            match loaded_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(Error::Load(e)),
                Err(_) => return Err(Error::Load("a model thread ended while loading".into())),
            }
        }
        Ok(Batcher {
            queue,
            capacity: config.queue,
            alive,
            metrics,
        })
    }

    /// Whether a model thread is running (the readiness of `/ping` and the v2 health checks;
    /// it never waits on the model).
    pub fn ready(&self) -> bool {
        self.alive.load(Ordering::SeqCst) > 0
    }

    /// Queues one input; refused at once with 429 when the queue is full, 503 when the model
    /// threads are gone.
    pub fn submit(&self, input: I::Input) -> Result<Pending<I::Output>, InferenceError> {
        let (reply, pending) = oneshot::channel();
        let job = Job {
            input,
            arrived: Instant::now(),
            reply,
        };
        self.metrics.queue_depth.inc();
        match self.queue.try_send(job) {
            Ok(()) => Ok(pending),
            Err(TrySendError::Full(_)) => {
                self.metrics.queue_depth.dec();
                Err(InferenceError {
                    status: 429,
                    message: format!(
                        "the server is overloaded: {} requests are already queued; retry later or raise --queue",
                        self.capacity
                    ),
                })
            }
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.queue_depth.dec();
                Err(InferenceError {
                    status: 503,
                    message: "the model is not running".into(),
                })
            }
        }
    }
}

/// One model thread: gather a batch, predict, answer; until the queue closes.
fn run<I: Inference>(
    handler: &I,
    model: &mut I::Model,
    jobs: &Mutex<Receiver<Job<I>>>,
    config: BatchConfig,
    metrics: &Metrics,
) {
    loop {
        let batch = {
            // One thread gathers at a time; the others are predicting meanwhile.
            let jobs = jobs.lock().unwrap_or_else(|e| e.into_inner());
            match gather(&jobs, config) {
                Some(batch) => batch,
                None => return,
            }
        };
        let started = Instant::now();
        metrics.queue_depth.dec_by(batch.len() as i64);
        // A request whose client gave up (timeout, closed connection) is not computed.
        let (inputs, replies): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .filter(|job| !job.reply.is_closed())
            .map(|job| {
                metrics
                    .queue_time
                    .observe(started.duration_since(job.arrived).as_secs_f64());
                (job.input, job.reply)
            })
            .unzip();
        if inputs.is_empty() {
            continue;
        }
        metrics.batch_size.observe(inputs.len() as f64);
        let n = inputs.len();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| handler.predict(model, inputs)));
        metrics
            .predict_time
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(outputs)) if outputs.len() == n => {
                for (reply, output) in replies.into_iter().zip(outputs) {
                    let _ = reply.send(Ok(output));
                }
            }
            Ok(Ok(outputs)) => answer_all(
                replies,
                InferenceError::internal(format!(
                    "predict returned {} outputs for {n} inputs",
                    outputs.len()
                )),
            ),
            Ok(Err(e)) => answer_all(replies, e),
            Err(_) => answer_all(
                replies,
                InferenceError::internal("the model failed (panicked) on this batch"),
            ),
        }
    }
}

fn answer_all<O>(replies: Vec<oneshot::Sender<Result<O, InferenceError>>>, e: InferenceError) {
    for reply in replies {
        let _ = reply.send(Err(e.clone()));
    }
}

/// Waits for a first job, then gathers up to `max_batch`; `None` once the queue is closed and
/// empty.
fn gather<I: Inference>(jobs: &Receiver<Job<I>>, config: BatchConfig) -> Option<Vec<Job<I>>> {
    let first = jobs.recv().ok()?;
    let deadline = first.arrived + config.max_delay;
    let mut batch = vec![first];
    while batch.len() < config.max_batch {
        let now = Instant::now();
        let next = if now >= deadline {
            match jobs.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        } else {
            match jobs.recv_timeout(deadline - now) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        };
        batch.push(next);
    }
    Some(batch)
}
