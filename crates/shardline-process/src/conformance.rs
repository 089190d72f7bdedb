//! The conformance suite every [`Launcher`] passes: each instance started once and logged, a
//! killed instance started again on exactly its share (and no other), an instance that keeps
//! failing named with its attempts and its log. It runs on the OS-process launcher (the CLI's
//! tests), on the in-process launcher and on [`Fake`] (this crate's tests); a new implementation
//! (a cluster scheduler, say) runs it too.
//!
//! The suite drives a real job — a user script over a small generated lake — so that an
//! implementation that runs instances for real is checked end to end (every instance's result
//! gathered); [`Fake`] only plays the messages and exits of instances.

use std::path::Path;
use std::sync::{Arc, Mutex};

use shardline_contract::instance::host;

use crate::Error;
use crate::finalize;
use crate::job::{self, Settings};
use crate::launch::{self, InstanceJob, Launcher, Message, Running};
use crate::stage::ProcessConfig;

/// Wraps a launcher: records every start, and kills chosen attempts of one instance as soon as
/// it reports progress (as `kill -9` would stop it mid-share).
pub struct Watched<'a> {
    inner: &'a dyn Launcher,
    /// (rank, attempt) of every start, in order.
    pub starts: Mutex<Vec<(usize, usize)>>,
    /// Kill instance `.0` on its attempts up to `.1`.
    kill: Option<(usize, usize)>,
}

impl<'a> Watched<'a> {
    /// Wraps `inner`, killing instance `rank` on its attempts `1..=attempts` if `kill` is given.
    pub fn new(inner: &'a dyn Launcher, kill: Option<(usize, usize)>) -> Watched<'a> {
        Watched {
            inner,
            starts: Mutex::new(Vec::new()),
            kill,
        }
    }

    fn starts(&self) -> Vec<(usize, usize)> {
        self.starts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Launcher for Watched<'_> {
    fn shares_memory(&self) -> bool {
        self.inner.shares_memory()
    }

    fn start(&self, job: &InstanceJob) -> Result<Running, Error> {
        self.starts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((job.rank, job.attempt));
        let mut running = self.inner.start(job)?;
        let doomed = self
            .kill
            .is_some_and(|(rank, attempts)| job.rank == rank && job.attempt <= attempts);
        if !doomed {
            return Ok(running);
        }
        let (tx, messages) = tokio::sync::mpsc::unbounded_channel();
        let kill = running.kill.clone();
        let mut inner = std::mem::replace(&mut running.messages, messages);
        tokio::spawn(async move {
            let mut killed = false;
            while let Some(message) = inner.recv().await {
                if !killed && matches!(message, Message::Progress(_)) {
                    kill();
                    killed = true;
                }
                if tx.send(message).is_err() {
                    break;
                }
            }
        });
        Ok(running)
    }
}

/// A launcher that starts nothing: each instance reports progress, writes two log lines, and
/// ends well after a moment, unless killed. For testing supervisors and this suite itself.
pub struct Fake;

impl Launcher for Fake {
    fn shares_memory(&self) -> bool {
        true
    }

    fn start(&self, job: &InstanceJob) -> Result<Running, Error> {
        let (tx, messages) = tokio::sync::mpsc::unbounded_channel();
        let rank = job.rank;
        let task = tokio::spawn(async move {
            let _ = tx.send(Message::Line(format!("{} working", host(rank))));
            let _ = tx.send(Message::Progress(crate::instance::Tick {
                done: 1,
                total: 2,
                errors: 0,
            }));
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let _ = tx.send(Message::Line(format!("{} done", host(rank))));
        });
        let abort = task.abort_handle();
        Ok(Running {
            messages,
            exit: Box::pin(async move { task.await.map_err(|_| "was killed".to_string()) }),
            kill: Arc::new(move || abort.abort()),
        })
    }
}

/// A job for the suite in `dir`: a lake of `objects` small objects in two classes, processed by
/// a script that copies its share after a pause (so that a kill lands mid-work).
pub fn job(dir: &Path, instances: usize, objects: usize) -> Result<ProcessConfig, Error> {
    let lake = dir.join("lake");
    for i in 0..objects {
        let class = lake.join(if i % 2 == 0 { "even" } else { "odd" });
        std::fs::create_dir_all(&class).map_err(|e| Error::io(&class, e))?;
        let path = class.join(format!("{i:04}.bin"));
        std::fs::write(&path, format!("object {i}")).map_err(|e| Error::io(&path, e))?;
    }
    let uri = |p: &Path| p.display().to_string();
    Ok(ProcessConfig {
        inputs: vec![("train".into(), format!("{}/", uri(&lake)))],
        out: uri(&dir.join("out")),
        settings: Settings {
            instances,
            script: Some(
                "sleep 1 && mkdir -p {root}/processing/output/train && \
                 cp -r {root}/processing/input/train/. {root}/processing/output/train/"
                    .into(),
            ),
            ..Settings::default()
        },
        max_attempts: 2,
        ..ProcessConfig::default()
    })
}

fn check(ok: bool, case: &str, what: String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("{case}: {what}"))
    }
}

/// One case's job in `dir/name`, supervised through a fresh launcher from `make` that kills
/// `kill` (see [`Watched`]): the job's config, the starts, and how the job ended.
async fn run_case(
    make: &dyn Fn() -> Box<dyn Launcher>,
    dir: &Path,
    name: &str,
    kill: Option<(usize, usize)>,
) -> Result<(ProcessConfig, Vec<(usize, usize)>, Result<(), Error>), String> {
    let config = job(&dir.join(name), 3, 9).map_err(|e| e.to_string())?;
    let inner = make();
    let watched = Watched::new(inner.as_ref(), kill);
    let job = job::load(&config.inputs, config.settings.clone())
        .await
        .map_err(|e| e.to_string())?;
    let logs = Path::new(&config.out).join("logs");
    let result = launch::supervise(&watched, &config, job.digest().as_str(), &logs, &|_| {}).await;
    let mut starts = watched.starts();
    starts.sort();
    Ok((config, starts, result))
}

fn log(config: &ProcessConfig, rank: usize) -> String {
    let path = launch::log_path(&Path::new(&config.out).join("logs"), rank);
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Runs every case on launchers from `make`, in fresh folders below `dir`. `real`: the
/// launcher runs the instances for real, so their results must be there at the end.
pub async fn suite(
    make: &dyn Fn() -> Box<dyn Launcher>,
    dir: &Path,
    real: bool,
) -> Result<(), String> {
    let instances = 3;
    let gathered = async |config: &ProcessConfig, case: &str| -> Result<(), String> {
        if !real {
            return Ok(());
        }
        let job = job::load(&config.inputs, config.settings.clone())
            .await
            .map_err(|e| e.to_string())?;
        let out = shardline_store::Store::open(&config.out).map_err(|e| e.to_string())?;
        let results = finalize::gather(&job, &out)
            .await
            .map_err(|e| e.to_string())?;
        let assigned: u64 = results
            .iter()
            .flatten()
            .flat_map(|r| r.channels.values().map(|c| c.assigned))
            .sum();
        check(
            results.iter().all(Option::is_some) && assigned == 9,
            case,
            format!("every instance's result, 9 objects in all (got {results:?})"),
        )
    };

    // 1. Every instance started once, each with its own log.
    let case = "every instance runs once with its own log";
    let (config, starts, result) = run_case(make, dir, "once", None).await?;
    check(
        result.is_ok(),
        case,
        format!("the job succeeds ({result:?})"),
    )?;
    let expected: Vec<_> = (0..instances).map(|r| (r, 1)).collect();
    check(
        starts == expected,
        case,
        format!(
            "starts {starts:?}; logs {:?}",
            (0..instances).map(|r| log(&config, r)).collect::<Vec<_>>()
        ),
    )?;
    for rank in 0..instances {
        let text = log(&config, rank);
        check(
            text.contains(&format!("==== {} attempt 1 ====", host(rank))),
            case,
            format!("{}'s log holds its attempt ({text:?})", host(rank)),
        )?;
    }
    gathered(&config, case).await?;

    // 2. A killed instance is started again, and only it.
    let case = "a killed instance is retried on exactly its share";
    let (config, starts, result) = run_case(make, dir, "retry", Some((1, 1))).await?;
    check(
        result.is_ok(),
        case,
        format!("the job succeeds ({result:?})"),
    )?;
    check(
        starts == vec![(0, 1), (1, 1), (1, 2), (2, 1)],
        case,
        format!("algo-2 started twice, the others once (starts {starts:?})"),
    )?;
    let text = log(&config, 1);
    check(
        text.contains("==== algo-2 attempt 1 ====") && text.contains("==== algo-2 attempt 2 ===="),
        case,
        format!("algo-2's log holds both attempts ({text:?})"),
    )?;
    gathered(&config, case).await?;

    // 3. An instance that keeps failing is named, with its attempts and its log.
    let case = "an instance that keeps failing is named";
    let (_, _, result) = run_case(make, dir, "fail", Some((2, 2))).await?;
    match result {
        Err(Error::InstanceFailed {
            host,
            attempts,
            log,
            ..
        }) => {
            check(
                host == "algo-3",
                case,
                format!("the failed instance is algo-3, not {host}"),
            )?;
            check(attempts == 2, case, format!("2 attempts, not {attempts}"))?;
            check(
                log.ends_with("algo-3.log") && Path::new(&log).exists(),
                case,
                format!("its log {log} exists"),
            )?;
        }
        other => return Err(format!("{case}: expected algo-3 to fail, got {other:?}")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_fake_launcher_conforms() {
        let dir = tempfile::tempdir().expect("temp dir");
        suite(&|| Box::new(Fake), dir.path(), false)
            .await
            .expect("conformance");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_in_process_launcher_conforms() {
        let dir = tempfile::tempdir().expect("temp dir");
        suite(&|| Box::new(launch::InProcess), dir.path(), true)
            .await
            .expect("conformance");
    }
}
