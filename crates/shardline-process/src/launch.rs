//! Launchers start the instances of a job; the supervisor watches them, writes one log per
//! instance while it runs, and retries an instance that dies, on exactly its share.
//!
//! The seam is [`Launcher`]: given an [`InstanceJob`] (one serialised value: the job's config, the
//! rank, the attempt), start one instance and hand back a [`Running`] — its messages, its exit and
//! a way to kill it. Two implementations ship: [`LocalProcesses`] (OS processes, each in its own
//! process group, dying with the launcher) and [`InProcess`] (a thread and runtime per instance).
//! External launchers (mpirun, srun, a Kubernetes Indexed Job, SageMaker) need no code here: they
//! start the processes themselves and each reads its identity from their variables (see
//! [`crate::identity`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use futures::StreamExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::Error;
use crate::instance::Tick;
use crate::stage::ProcessConfig;
use shardline_contract::instance::host;

/// The line prefix an OS-process instance prints on stdout to report progress to its supervisor.
pub const PROGRESS_PREFIX: &str = "shardline-progress ";

/// What one instance is given: everything it needs, as one value (an OS process reads it as JSON
/// on its standard input).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceJob {
    /// The job's config, as the launcher resolved it.
    pub config: ProcessConfig,
    /// The job's digest as the launcher computed it: an instance whose inputs read differently
    /// (the lake changed under the job) refuses to run.
    pub job: String,
    /// This instance's 0-based rank.
    pub rank: usize,
    /// The attempt, counted from 1.
    pub attempt: usize,
}

/// What an instance reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Objects done so far.
    Progress(Tick),
    /// A line of its log.
    Line(String),
}

/// How an instance ended, when it failed.
pub type Failure = String;

/// A started instance.
pub struct Running {
    /// Its progress and log lines; closed when it ends.
    pub messages: UnboundedReceiver<Message>,
    /// Resolves when it has ended: `Ok` on success, or how it failed.
    pub exit: BoxFuture<'static, Result<(), Failure>>,
    /// Stops it now, and everything it started, as a kill would (no clean-up).
    pub kill: Arc<dyn Fn() + Send + Sync>,
}

/// Starts one instance.
pub trait Launcher: Send + Sync {
    /// Starts `job` (its rank and attempt inside).
    fn start(&self, job: &InstanceJob) -> Result<Running, Error>;

    /// Whether the instances run inside this process (and so share its `memory://` stores);
    /// OS processes do not.
    fn shares_memory(&self) -> bool {
        false
    }
}

/// Starts instances as OS processes of this machine: `program args...`, the job as JSON on
/// standard input. Each instance leads its own process group (its user scripts in it), is sent
/// SIGTERM if this process dies (and then kills its group, see [`kill_group_on_termination`]),
/// and the whole group is killed when it ends or if its [`Running`] is dropped before: killing
/// the launcher, however, leaves no instance or script running.
pub struct LocalProcesses {
    /// The program (this binary).
    pub program: PathBuf,
    /// Its arguments (the subcommand that reads an [`InstanceJob`] on stdin).
    pub args: Vec<OsString>,
    /// Extra environment for the instances.
    pub env: Vec<(String, String)>,
}

/// Kills a process group when dropped, unless told the group is done.
struct GroupGuard {
    pgid: i32,
    done: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if !self.done {
            kill_group(self.pgid);
        }
    }
}

#[allow(unsafe_code)]
fn kill_group(pgid: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) with a negative pid signals a process group; it touches no memory.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// For an instance that leads its own process group (as [`LocalProcesses`] starts it): on
/// SIGTERM or SIGINT — which it is sent when its launcher dies — kill the whole group, so that
/// the user programs it started die with it. Runs until a signal comes; spawn it.
pub async fn kill_group_on_termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    kill_own_group();
}

#[allow(unsafe_code)]
fn kill_own_group() {
    // SAFETY: kill(2) of process group 0 (this process's own group); it touches no memory.
    unsafe {
        libc::kill(0, libc::SIGKILL);
    }
}

impl Launcher for LocalProcesses {
    fn start(&self, job: &InstanceJob) -> Result<Running, Error> {
        let encoded = serde_json::to_vec(job).map_err(|e| {
            Error::BadConfig(format!("the instance's job cannot be serialised: {e}"))
        })?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("SHARDLINE_RANK", job.rank.to_string())
            .env(
                "SHARDLINE_WORLD_SIZE",
                job.config.settings.instances.to_string(),
            )
            .env("SHARDLINE_ATTEMPT", job.attempt.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // SIGTERM, so that the instance kills its group (its scripts) as it goes.
        shardline_container::program::die_with_parent(&mut command, libc::SIGTERM);
        let mut child = command.spawn().map_err(|e| Error::io(&self.program, e))?;
        let pgid = child.id().map_or(0, |id| id as i32);
        let guard = GroupGuard { pgid, done: false };
        let (tx, messages) = unbounded_channel();
        let forward = |stream: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>,
                       tx: UnboundedSender<Message>| async move {
            if let Some(stream) = stream {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let message = match line.strip_prefix(PROGRESS_PREFIX).map(parse_tick) {
                        Some(Some(tick)) => Message::Progress(tick),
                        _ => Message::Line(line),
                    };
                    if tx.send(message).is_err() {
                        break;
                    }
                }
            }
        };
        let out_task = tokio::spawn(forward(
            child.stdout.take().map(|s| Box::new(s) as _),
            tx.clone(),
        ));
        let err_task = tokio::spawn(forward(child.stderr.take().map(|s| Box::new(s) as _), tx));
        // The job goes in while the supervisor reads the instance's output. An instance that died
        // at once has closed its stdin: its exit says why.
        if let Some(mut stdin) = child.stdin.take() {
            tokio::spawn(async move {
                let _ = stdin.write_all(&encoded).await;
                let _ = stdin.shutdown().await;
            });
        }
        let exit = Box::pin(async move {
            let mut guard = guard;
            let status = child.wait().await;
            // Whatever the instance left in its group (a script's children) goes with it.
            kill_group(pgid);
            guard.done = true;
            let _ = (out_task.await, err_task.await);
            match status {
                Err(e) => Err(format!("could not be waited for: {e}")),
                Ok(status) if status.success() => Ok(()),
                Ok(status) => Err(match status.code() {
                    Some(code) => format!("exited with status {code}"),
                    None => {
                        use std::os::unix::process::ExitStatusExt;
                        format!("was killed by signal {}", status.signal().unwrap_or(0))
                    }
                }),
            }
        });
        Ok(Running {
            messages,
            exit,
            kill: Arc::new(move || kill_group(pgid)),
        })
    }
}

fn parse_tick(rest: &str) -> Option<Tick> {
    let numbers: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    match numbers[..] {
        [done, total, errors] => Some(Tick {
            done,
            total,
            errors,
        }),
        _ => None,
    }
}

/// The progress line an OS-process instance prints for its supervisor.
pub fn progress_line(tick: Tick) -> String {
    format!(
        "{PROGRESS_PREFIX}{} {} {}",
        tick.done, tick.total, tick.errors
    )
}

/// Starts instances as threads of this process (for programs that embed the stage, and for
/// tests). Killing one drops its work at its next await. The instance's tracing output goes to
/// this process's subscriber; its log holds its start, its end and its error.
pub struct InProcess;

impl Launcher for InProcess {
    fn shares_memory(&self) -> bool {
        true
    }

    fn start(&self, job: &InstanceJob) -> Result<Running, Error> {
        let (tx, messages) = unbounded_channel();
        let (kill_tx, mut kill_rx) = tokio::sync::watch::channel(false);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let job = job.clone();
        // Each instance is a thread with its own single-threaded runtime: one core's worth of
        // work, as an OS-process instance is.
        std::thread::Builder::new()
            .name(host(job.rank))
            .spawn(move || {
                let progress_tx = tx.clone();
                let progress = move |tick: Tick| {
                    let _ = progress_tx.send(Message::Progress(tick));
                };
                let _ = tx.send(Message::Line(format!(
                    "{} attempt {} started in this process",
                    host(job.rank),
                    job.attempt
                )));
                let result = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Err(e) => Err(format!("could not start its runtime: {e}")),
                    Ok(runtime) => runtime.block_on(async {
                        tokio::select! {
                            result = crate::stage::run_instance(&job, &progress) => {
                                result.map_err(|e| {
                                    let _ = tx.send(Message::Line(format!("error: {e}")));
                                    "failed".to_string()
                                })
                            }
                            _ = kill_rx.wait_for(|killed| *killed) => Err("was killed".to_string()),
                        }
                    }),
                };
                if result.is_ok() {
                    let _ = tx.send(Message::Line(format!("{} finished", host(job.rank))));
                }
                drop(tx);
                let _ = done_tx.send(result);
            })
            .map_err(|e| Error::io("an instance thread", e))?;
        let exit = Box::pin(async move {
            done_rx
                .await
                .unwrap_or_else(|_| Err("panicked".to_string()))
        });
        Ok(Running {
            messages,
            exit,
            kill: Arc::new(move || {
                let _ = kill_tx.send(true);
            }),
        })
    }
}

/// Events the supervisor reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// An instance reported progress.
    Progress(usize, Tick),
    /// An instance exited with failure and will be started again.
    Retry {
        /// Its rank.
        rank: usize,
        /// The attempt that failed (1-based).
        attempt: usize,
        /// How it ended.
        reason: String,
    },
    /// An instance finished.
    Done(usize),
}

/// The log file of an instance in `dir`.
pub fn log_path(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("{}.log", host(rank)))
}

async fn run_once(
    launcher: &dyn Launcher,
    job: &InstanceJob,
    log: &Path,
    on_event: &(dyn Fn(Event) + Send + Sync),
) -> Result<Result<(), String>, Error> {
    let (rank, attempt) = (job.rank, job.attempt);
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .await
        .map_err(|e| Error::io(log, e))?;
    let write = async |file: &mut tokio::fs::File, line: &str| -> Result<(), Error> {
        file.write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| Error::io(log, e))?;
        // Written through, so that the log can be followed while the instance runs.
        file.flush().await.map_err(|e| Error::io(log, e))
    };
    write(
        &mut file,
        &format!("==== {} attempt {attempt} ====", host(rank)),
    )
    .await?;
    let mut running = match launcher.start(job) {
        Ok(running) => running,
        Err(e) => {
            let reason = format!("could not be started: {e}");
            write(
                &mut file,
                &format!("==== {} attempt {attempt} {reason} ====", host(rank)),
            )
            .await?;
            return Ok(Err(reason));
        }
    };
    // The instance's own error message, to repeat in the supervisor's error.
    let mut last_error = None;
    while let Some(message) = running.messages.recv().await {
        match message {
            Message::Progress(tick) => on_event(Event::Progress(rank, tick)),
            Message::Line(line) => {
                if let Some(message) = line.strip_prefix("error: ") {
                    last_error = Some(message.to_string());
                }
                write(&mut file, &line).await?;
            }
        }
    }
    match running.exit.await {
        Ok(()) => Ok(Ok(())),
        Err(mut reason) => {
            if let Some(message) = last_error {
                reason = format!("{reason} ({message})");
            }
            write(
                &mut file,
                &format!("==== {} attempt {attempt} {reason} ====", host(rank)),
            )
            .await?;
            Ok(Err(reason))
        }
    }
}

/// Runs every instance of `config`'s job to completion through `launcher`, retrying a failed
/// instance up to `config.max_attempts` times in all, on its own share only. Logs go to
/// `log_dir/algo-<i>.log` as the instances write them, one file per instance across attempts
/// (emptied first). Fails naming the first instance that used up its attempts.
pub async fn supervise(
    launcher: &dyn Launcher,
    config: &ProcessConfig,
    job: &str,
    log_dir: &Path,
    on_event: &(dyn Fn(Event) + Send + Sync),
) -> Result<(), Error> {
    let size = config.settings.instances;
    std::fs::create_dir_all(log_dir).map_err(|e| Error::io(log_dir, e))?;
    for rank in 0..size {
        let log = log_path(log_dir, rank);
        std::fs::write(&log, b"").map_err(|e| Error::io(&log, e))?;
    }
    let runs = (0..size).map(|rank| async move {
        let log = log_path(log_dir, rank);
        let mut attempt = 1;
        loop {
            let instance = InstanceJob {
                config: config.clone(),
                job: job.to_string(),
                rank,
                attempt,
            };
            match run_once(launcher, &instance, &log, on_event).await? {
                Ok(()) => {
                    on_event(Event::Done(rank));
                    return Ok(());
                }
                Err(reason) if attempt < config.max_attempts.max(1) => {
                    on_event(Event::Retry {
                        rank,
                        attempt,
                        reason,
                    });
                    attempt += 1;
                }
                Err(reason) => {
                    return Err(Error::InstanceFailed {
                        host: host(rank),
                        attempts: attempt,
                        reason,
                        log: log.display().to_string(),
                    });
                }
            }
        }
    });
    // At most `max_parallel` at once (one per core by default): 300 instances on 2 cores run in
    // waves rather than as 300 processes fighting for them.
    let parallel = match config.max_parallel {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let results: Vec<Result<(), Error>> = futures::stream::iter(runs)
        .buffer_unordered(parallel)
        .collect()
        .await;
    results
        .into_iter()
        .collect::<Result<Vec<()>, Error>>()
        .map(|_| ())
}
