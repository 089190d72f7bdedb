//! Dynamic batching: requests wait in a bounded queue; a model thread takes the first, gathers
//! more until it holds `max_batch` or `max_delay` has passed since the first arrived (then it
//! still takes whatever is already waiting, up to `max_batch`), runs one `predict` and answers
//! each request. A full queue refuses at once (the caller answers 429) instead of growing memory.
//! This is the scheme of Triton's dynamic batcher and TF Serving's batching session, with one
//! change (`adaptive`, the default): a thread waits for company only while some request is on
//! its way to the queue (its body read, its image being decoded: an [`Arrival`]). A lone
//! request, or a burst that is already queued, runs at once; the delay is spent only when there
//! is someone to wait for.
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
    /// Wait for company only while requests are arriving (see the module's documentation);
    /// `false` always waits up to `max_delay`, as Triton's dynamic batcher does.
    pub adaptive: bool,
}

impl Default for BatchConfig {
    fn default() -> BatchConfig {
        BatchConfig {
            max_batch: 32,
            max_delay: Duration::from_millis(2),
            queue: 1024,
            workers: 1,
            adaptive: true,
        }
    }
}

impl BatchConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_batch == 0 || self.queue == 0 || self.workers == 0 {
            return Err(Error::BadConfig(
                "`max_batch`, `queue` and `workers` must be at least 1".into(),
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
    arriving: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

/// A request on its way to the queue (being read or decoded). While any exists, a gathering
/// model thread has someone to wait for; drop it once the request is submitted or has failed.
#[derive(Debug)]
pub struct Arrival(Arc<AtomicUsize>);

impl Drop for Arrival {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
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
        let arriving = Arc::new(AtomicUsize::new(0));
        let (loaded_tx, loaded_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        for worker in 0..config.workers {
            let handler = handler.clone();
            let jobs = jobs.clone();
            let alive = alive.clone();
            let arriving = arriving.clone();
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
                    run(&*handler, &mut model, &jobs, config, &arriving, &metrics);
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
            arriving,
            metrics,
        })
    }

    /// Whether a model thread is running (the readiness of `/ping` and the v2 health checks;
    /// it never waits on the model).
    pub fn ready(&self) -> bool {
        self.alive.load(Ordering::SeqCst) > 0
    }

    /// Announces a request that will be submitted soon (see [`Arrival`]).
    pub fn arrival(&self) -> Arrival {
        self.arriving.fetch_add(1, Ordering::SeqCst);
        Arrival(self.arriving.clone())
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
                        "the server is overloaded: {} requests are already queued; retry later or raise `queue`",
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
    arriving: &AtomicUsize,
    metrics: &Metrics,
) {
    loop {
        let batch = {
            // One thread gathers at a time; the others are predicting meanwhile.
            let jobs = jobs.lock().unwrap_or_else(|e| e.into_inner());
            match gather(&jobs, config, config.adaptive.then_some(arriving)) {
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
/// empty. With `arriving` (adaptive), it waits for more only while that count is above zero.
fn gather<I: Inference>(
    jobs: &Receiver<Job<I>>,
    config: BatchConfig,
    arriving: Option<&AtomicUsize>,
) -> Option<Vec<Job<I>>> {
    let first = jobs.recv().ok()?;
    let deadline = first.arrived + config.max_delay;
    let mut batch = vec![first];
    while batch.len() < config.max_batch {
        let now = Instant::now();
        let nobody_coming = arriving.is_some_and(|a| a.load(Ordering::SeqCst) == 0);
        let next = if nobody_coming || now >= deadline {
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{Receiver, Sender, channel};

    use super::*;
    use crate::inference::{Answer, Reply, Request};

    /// Echoes its inputs. Each `predict` reports its batch size on `entered` and then waits for
    /// a token on `gate`, so the test decides when a batch ends and what queues meanwhile.
    struct Gated {
        entered: Mutex<Sender<usize>>,
        gate: Mutex<Receiver<()>>,
    }

    impl Inference for Gated {
        type Model = ();
        type Input = u32;
        type Output = u32;

        fn load(&self) -> Result<(), String> {
            Ok(())
        }

        fn input(&self, _request: Request<'_>) -> Result<u32, InferenceError> {
            Err(InferenceError::bad_request("not used"))
        }

        fn predict(&self, _model: &mut (), inputs: Vec<u32>) -> Result<Vec<u32>, InferenceError> {
            let _ = self.entered.lock().expect("lock").send(inputs.len());
            let _ = self.gate.lock().expect("lock").recv();
            Ok(inputs)
        }

        fn output(&self, output: u32, _answer: &Answer) -> Result<Reply, InferenceError> {
            Ok(Reply {
                content_type: "text/plain".into(),
                body: output.to_string().into_bytes(),
            })
        }
    }

    #[test]
    fn a_request_waits_for_company_only_when_some_is_on_its_way() {
        let (entered_tx, entered) = channel();
        let (gate, gate_rx) = channel();
        let handler = Arc::new(Gated {
            entered: Mutex::new(entered_tx),
            gate: Mutex::new(gate_rx),
        });
        // An hour of delay: a batch that waited for it would never finish within the test.
        let config = BatchConfig {
            max_batch: 4,
            max_delay: Duration::from_secs(3600),
            queue: 64,
            workers: 1,
            adaptive: true,
        };
        let batcher = Batcher::start(handler, config, Arc::new(Metrics::new())).expect("start");
        let answer = |pending: Pending<u32>| pending.blocking_recv().expect("reply").expect("ok");

        // A lone request runs at once.
        let a = batcher.submit(1).expect("submit");
        assert_eq!(entered.recv().expect("entered"), 1);
        // Four more queue while it runs: they go as one batch, without waiting for a fifth.
        let queued: Vec<_> = (2..6).map(|i| batcher.submit(i).expect("submit")).collect();
        gate.send(()).expect("gate");
        assert_eq!(answer(a), 1);
        assert_eq!(entered.recv().expect("entered"), 4);
        gate.send(()).expect("gate");
        let values: Vec<u32> = queued.into_iter().map(answer).collect();
        assert_eq!(values, [2, 3, 4, 5]);

        // Requests on their way (three announced): the first waits for them.
        let mut coming: Vec<_> = (0..3).map(|_| batcher.arrival()).collect();
        let mut burst = vec![batcher.submit(6).expect("submit")];
        for i in 7..10 {
            burst.push(batcher.submit(i).expect("submit"));
            coming.pop();
        }
        assert_eq!(entered.recv().expect("entered"), 4);
        gate.send(()).expect("gate");
        let values: Vec<u32> = burst.into_iter().map(answer).collect();
        assert_eq!(values, [6, 7, 8, 9]);
    }
}
