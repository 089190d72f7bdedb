//! Launchers start the instances of a job; the supervisor watches them, keeps one log per
//! instance, and retries an instance that dies, on exactly its share.
//!
//! The seam is [`Launcher`]: given a rank, start one instance as an OS process. The local
//! launcher starts this same binary with `SHARDLINE_RANK` / `SHARDLINE_WORLD_SIZE` set. External
//! launchers (mpirun, srun, a Kubernetes Indexed Job, SageMaker) need no code here: they start
//! the processes themselves and each reads its identity from their variables (see
//! [`crate::identity`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::Error;
use crate::instance::Tick;
use shardline_contract::instance::host;

/// The line prefix an instance prints on stdout to report progress to its supervisor.
pub const PROGRESS_PREFIX: &str = "shardline-progress ";

/// Starts one instance as an OS process.
pub trait Launcher: Send + Sync {
    /// Starts attempt `attempt` (1-based) of instance `rank` of `size`, with stdout and stderr
    /// piped.
    fn start(&self, rank: usize, size: usize, attempt: usize) -> std::io::Result<Child>;
}

/// Starts instances as child processes of this machine.
pub struct LocalProcesses {
    /// The program (this binary).
    pub program: PathBuf,
    /// Its arguments (the same command line as the supervisor's).
    pub args: Vec<OsString>,
}

impl Launcher for LocalProcesses {
    fn start(&self, rank: usize, size: usize, attempt: usize) -> std::io::Result<Child> {
        Command::new(&self.program)
            .args(&self.args)
            .env("SHARDLINE_RANK", rank.to_string())
            .env("SHARDLINE_WORLD_SIZE", size.to_string())
            .env("SHARDLINE_SUPERVISED", "1")
            .env("SHARDLINE_ATTEMPT", attempt.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
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
    rank: usize,
    size: usize,
    attempt: usize,
    log: &Path,
    on_event: &(dyn Fn(Event) + Send + Sync),
) -> Result<Result<(), String>, Error> {
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .await
        .map_err(|e| Error::io(log, e))?;
    file.write_all(format!("==== {} attempt {attempt} ====\n", host(rank)).as_bytes())
        .await
        .map_err(|e| Error::io(log, e))?;
    let mut child = launcher
        .start(rank, size, attempt)
        .map_err(|e| Error::io("instance process", e))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let forward = |stream: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>,
                   tx: tokio::sync::mpsc::UnboundedSender<String>| async move {
        if let Some(stream) = stream {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        }
    };
    let out_task = tokio::spawn(forward(stdout.map(|s| Box::new(s) as _), tx.clone()));
    let err_task = tokio::spawn(forward(stderr.map(|s| Box::new(s) as _), tx));
    // The instance's own error message, to repeat in the supervisor's error.
    let mut last_error = None;
    while let Some(line) = rx.recv().await {
        if line.starts_with("error: ") {
            last_error = Some(line.trim_start_matches("error: ").to_string());
        }
        if let Some(rest) = line.strip_prefix(PROGRESS_PREFIX) {
            let numbers: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            if let [done, total, errors] = numbers[..] {
                on_event(Event::Progress(
                    rank,
                    Tick {
                        done,
                        total,
                        errors,
                    },
                ));
            }
            continue;
        }
        file.write_all(line.as_bytes())
            .await
            .map_err(|e| Error::io(log, e))?;
        file.write_all(b"\n").await.map_err(|e| Error::io(log, e))?;
    }
    let _ = (out_task.await, err_task.await);
    let status = child
        .wait()
        .await
        .map_err(|e| Error::io("instance process", e))?;
    file.flush().await.map_err(|e| Error::io(log, e))?;
    if status.success() {
        Ok(Ok(()))
    } else {
        let mut reason = match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => {
                use std::os::unix::process::ExitStatusExt;
                format!("was killed by signal {}", status.signal().unwrap_or(0))
            }
        };
        if let Some(message) = last_error {
            reason = format!("{reason} ({message})");
        }
        file.write_all(format!("==== {} attempt {attempt} {reason} ====\n", host(rank)).as_bytes())
            .await
            .map_err(|e| Error::io(log, e))?;
        Ok(Err(reason))
    }
}

/// Runs instances `0..size` to completion, each in its own process, retrying a failed instance up
/// to `max_attempts` times in all. Logs go to `log_dir/algo-<i>.log`, one file per instance
/// across attempts. Fails naming the first instance that used up its attempts.
pub async fn supervise(
    launcher: &dyn Launcher,
    size: usize,
    max_attempts: usize,
    log_dir: &Path,
    on_event: &(dyn Fn(Event) + Send + Sync),
) -> Result<(), Error> {
    std::fs::create_dir_all(log_dir).map_err(|e| Error::io(log_dir, e))?;
    let runs = (0..size).map(|rank| async move {
        let log = log_path(log_dir, rank);
        let mut attempt = 1;
        loop {
            match run_once(launcher, rank, size, attempt, &log, on_event).await? {
                Ok(()) => {
                    on_event(Event::Done(rank));
                    return Ok(());
                }
                Err(reason) if attempt < max_attempts.max(1) => {
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
    let results = futures::future::join_all(runs).await;
    results
        .into_iter()
        .collect::<Result<Vec<()>, Error>>()
        .map(|_| ())
}
