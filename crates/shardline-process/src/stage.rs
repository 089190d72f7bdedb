//! The process stage as one call: [`run`] takes a [`ProcessConfig`] and a [`Role`] and does the
//! whole job — load and validate the inputs, claim the output, start and supervise the instances
//! (or be one of an external launcher's), gather their results on rank 0, write the indexes, the
//! report and the lineage record — and returns a [`ProcessReport`]. [`run_instance`] is what one
//! instance does with the [`InstanceJob`] its launcher gave it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use shardline_contract::distribute::Distribution;
use shardline_contract::owner::{self, Stage};
use shardline_contract::recipe::{Mode, Recipe};
use shardline_store::Store;

use crate::Error;
use crate::identity::{self, Identity};
use crate::instance::{self, InstanceResult, Tick};
use crate::job::{self, Job, Settings};
use crate::launch::{self, Event, InstanceJob, Launcher};
use crate::{finalize, script};

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            instances: 1,
            distribution: Distribution::ShardedByKey,
            recipe: Recipe::new(64, 64, Mode::Rgb),
            seed: 0,
            augment_channels: Vec::new(),
            shard_bytes: 64 << 20,
            script: None,
            error_budget: 0.001,
        }
    }
}

/// Everything a processing job is given. [`Default`] holds the defaults; `inputs` and `out` have
/// none.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessConfig {
    /// The channels and their objects: (channel, URL of a SageMaker manifest or a store prefix).
    pub inputs: Vec<(String, String)>,
    /// Where the shards, indexes, recipe, report, lineage and logs go.
    pub out: String,
    /// The settings that decide the outputs (instances, distribution, recipe, ...).
    pub settings: Settings,
    /// Attempts per instance (a failed instance is started again on its share only).
    pub max_attempts: usize,
    /// Redo a job that already finished, and replace another finished job in `out`.
    pub force: bool,
    /// The root of the processing container layout for a script (default: a temporary folder
    /// per instance); several instances on one machine each get `root/algo-<i>`.
    pub root: Option<PathBuf>,
    /// Under an external launcher, how long rank 0 waits for the other instances, in seconds.
    pub wait_timeout_s: u64,
    /// Instances the local launcher runs at once (0: one per core); the others wait their turn.
    #[serde(default)]
    pub max_parallel: usize,
}

/// The most instances a job may have.
pub const MAX_INSTANCES: usize = 4096;

impl Default for ProcessConfig {
    fn default() -> ProcessConfig {
        ProcessConfig {
            inputs: Vec::new(),
            out: String::new(),
            settings: Settings::default(),
            max_attempts: 3,
            force: false,
            root: None,
            wait_timeout_s: 3600,
            max_parallel: 0,
        }
    }
}

impl ProcessConfig {
    /// Checks the settings before any work; the error names the setting.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |setting: &'static str, reason: String| Error::Setting { setting, reason };
        let s = &self.settings;
        if self.inputs.is_empty() {
            return Err(bad("inputs", "give at least one CHANNEL=URL".into()));
        }
        if self.out.is_empty() {
            return Err(bad("out", "give where the outputs go".into()));
        }
        if s.instances == 0 {
            return Err(bad("instances", "must be at least 1".into()));
        }
        if s.instances > MAX_INSTANCES {
            return Err(bad(
                "instances",
                format!(
                    "{} is more than the {MAX_INSTANCES} a job may have; each instance is a process with its own shards and log: use fewer",
                    s.instances
                ),
            ));
        }
        if !(0.0..=1.0).contains(&s.error_budget) {
            return Err(bad(
                "error_budget",
                format!("{} must be a fraction from 0 to 1", s.error_budget),
            ));
        }
        if self.max_attempts == 0 {
            return Err(bad("max_attempts", "must be at least 1".into()));
        }
        if s.shard_bytes == 0 {
            return Err(bad("shard_size", "must be above 0".into()));
        }
        let (w, h) = (s.recipe.width, s.recipe.height);
        if !(1..=8192).contains(&w) || !(1..=8192).contains(&h) {
            return Err(bad(
                "size",
                format!("{w}x{h} is out of range; each side must be 1 to 8192"),
            ));
        }
        let channels: Vec<&str> = self.inputs.iter().map(|(c, _)| c.as_str()).collect();
        for channel in &s.augment_channels {
            if !channels.contains(&channel.as_str()) {
                return Err(bad(
                    "augment_channels",
                    format!(
                        "the augmentations apply to channel {channel:?}, which is not an input \
                         (the inputs are {}); name the channels to augment",
                        channels.join(", ")
                    ),
                ));
            }
        }
        if !s.recipe.augment.is_empty() && s.augment_channels.is_empty() {
            return Err(bad(
                "augment_channels",
                "augmentations are set but apply to no channel; name the channels to augment"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// What a process run reports while it works.
pub trait Progress: Send + Sync {
    /// A line worth telling the user.
    fn message(&self, _line: &str) {}
    /// Instance `rank` reported progress.
    fn instance(&self, _rank: usize, _tick: Tick) {}
    /// Instance `rank` failed on `attempt` and is started again on its share.
    fn retried(&self, _rank: usize, _attempt: usize, _reason: &str) {}
    /// Instance `rank` finished (or, when the run ends, stopped).
    fn instance_done(&self, _rank: usize) {}
}

/// A progress sink that reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// How this call takes part in the job.
pub enum Role<'a> {
    /// Start every instance through this launcher, supervise them and finalise.
    Launch(&'a dyn Launcher),
    /// Be one instance started by an external launcher (mpirun, srun, a Kubernetes Indexed Job,
    /// SageMaker); rank 0 waits for the others and finalises.
    External {
        /// Who this instance is.
        identity: Identity,
        /// This instance's log so far, kept under the output as `logs/algo-<i>.log` while it
        /// runs and at its end.
        log: Option<&'a (dyn Fn() -> Vec<u8> + Send + Sync)>,
    },
}

/// What the run did.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The built-in processor wrote shards; the job's report.
    Processed(finalize::Report),
    /// The user's script ran on every instance.
    Script {
        /// Instances that ran.
        instances: usize,
    },
    /// `out` already held this job's finished output; nothing was done.
    Unchanged,
    /// This instance of an external launcher finished its share; rank 0 finalises.
    Follower {
        /// Its host name.
        host: String,
    },
}

/// What [`run`] returns.
#[derive(Debug, Clone)]
pub struct ProcessReport {
    /// The output's URI.
    pub out: String,
    /// The job's digest.
    pub job: String,
    /// What happened.
    pub outcome: Outcome,
    /// Failed attempts that were retried: (host, attempt, how it ended).
    pub retries: Vec<(String, usize, String)>,
    /// Instances that received no object (fewer objects than instances).
    pub empty_instances: Vec<String>,
}

impl ProcessReport {
    /// What the run did, as lines for a person (the CLI prints them; a pipeline shows them).
    pub fn summary(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .retries
            .iter()
            .map(|(host, attempt, reason)| {
                format!("process: retried {host} attempt {attempt} {reason}")
            })
            .collect();
        match &self.outcome {
            Outcome::Unchanged => lines.push(format!(
                "process: {} already holds this job's output; nothing to do (`force` to redo)",
                self.out
            )),
            Outcome::Follower { host } => lines.push(format!(
                "process: {host} finished; rank 0 finalises the job"
            )),
            Outcome::Script { instances } => lines.push(format!(
                "process: the script ran on {instances} instance(s); outputs under {}",
                self.out
            )),
            Outcome::Processed(summary) => {
                lines.push(format!(
                    "process: {} objects → {} samples in {} instance(s), {} quarantined; outputs under {}",
                    summary.assigned,
                    summary.written,
                    summary.instances.len(),
                    summary.quarantined,
                    self.out
                ));
                for line in &summary.instances {
                    let counts: Vec<String> = line
                        .channels
                        .iter()
                        .map(|(c, [a, w, q])| format!("{c}: {w}/{a} ({q} quarantined)"))
                        .collect();
                    lines.push(format!(
                        "  {}: {} — {:.0} objects/s",
                        line.host,
                        counts.join(", "),
                        line.records_per_second
                    ));
                }
                if !summary.empty_instances.is_empty() {
                    lines.push(format!(
                        "  note: {} received no object (fewer objects than instances) and wrote empty outputs",
                        summary.empty_instances.join(", ")
                    ));
                }
            }
        }
        lines
    }
}

/// Runs a processing job in `role`.
pub async fn run(
    config: &ProcessConfig,
    role: Role<'_>,
    progress: &dyn Progress,
) -> Result<ProcessReport, Error> {
    config.validate()?;
    // Instances that are processes of their own (OS processes, an external launcher's) do not
    // see this process's memory:// stores.
    if !matches!(&role, Role::Launch(launcher) if launcher.shares_memory()) {
        let memory = std::iter::once(("out", config.out.as_str()))
            .chain(
                config
                    .inputs
                    .iter()
                    .map(|(_, url)| ("inputs", url.as_str())),
            )
            .find(|(_, url)| url.starts_with("memory://"));
        if let Some((setting, url)) = memory {
            return Err(Error::Setting {
                setting,
                reason: format!(
                    "{url} is a memory:// store, which lives inside one process, and every instance is a process of its own; give a local path or an s3:// URL"
                ),
            });
        }
    }
    let out = Store::open(&config.out)?;
    job::check_out(&config.inputs, out.location())?;
    let job = job::load(&config.inputs, config.settings.clone()).await?;
    job::check_out_roots(&job, out.location())?;
    let digest = job.digest();
    owner::claim(&out, Stage::Process, digest.as_str(), config.force).await?;
    let report = |outcome: Outcome, retries| ProcessReport {
        out: out.uri(),
        job: digest.as_str().to_string(),
        empty_instances: match &outcome {
            Outcome::Processed(r) => r.empty_instances.clone(),
            _ => Vec::new(),
        },
        outcome,
        retries,
    };
    if already_done(&job, config, &out).await? {
        return Ok(report(Outcome::Unchanged, Vec::new()));
    }
    match role {
        Role::Launch(launcher) => {
            let (outcome, retries) = launch(config, &job, &out, launcher, progress).await?;
            Ok(report(outcome, retries))
        }
        Role::External { identity, log } => {
            let outcome = external(config, &job, &out, &identity, log, progress).await?;
            Ok(report(outcome, Vec::new()))
        }
    }
}

/// Whether `out` already holds this job's finished output (its lineage record names the job),
/// for the built-in processor and scripts alike; then a rerun touches nothing, unless `force`.
async fn already_done(job: &Job, config: &ProcessConfig, out: &Store) -> Result<bool, Error> {
    if config.force {
        return Ok(false);
    }
    let Some(bytes) = out.get_opt("lineage.json").await? else {
        return Ok(false);
    };
    let record: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(record) => record,
        Err(_) => return Ok(false),
    };
    Ok(record["step"].as_str() == Some("process")
        && record["job"].as_str() == Some(job.digest().as_str()))
}

/// One instance's work, for the built-in processor or the user's script.
async fn work(
    job: &Job,
    config: &ProcessConfig,
    rank: usize,
    out: &Store,
    several_here: bool,
    progress: &(dyn Fn(Tick) + Send + Sync),
) -> Result<InstanceResult, Error> {
    let host = identity::host(rank);
    tracing::info!(%host, rank, size = job.settings.instances, "instance starting");
    let result = if job.settings.script.is_some() {
        let root = config.root.as_ref().map(|root| {
            if several_here && job.settings.instances > 1 {
                root.join(&host)
            } else {
                root.clone()
            }
        });
        script::run(job, rank, out, root.as_deref(), config.force, progress).await?
    } else {
        instance::run(job, rank, out, config.force, progress).await?
    };
    tracing::info!(
        %host,
        seconds = result.seconds,
        records_per_second = result.records_per_second,
        quarantined = result.quarantine.len(),
        "instance finished"
    );
    Ok(result)
}

/// What one instance does with its job: load the inputs (refusing them if they no longer read
/// as the launcher read them), then process its share. The launcher has claimed the output.
pub async fn run_instance(
    instance: &InstanceJob,
    progress: &(dyn Fn(Tick) + Send + Sync),
) -> Result<(), Error> {
    let config = &instance.config;
    let out = Store::open(&config.out)?;
    let job = job::load(&config.inputs, config.settings.clone()).await?;
    if job.digest().as_str() != instance.job {
        return Err(Error::BadConfig(format!(
            "the inputs changed while the job ran (the launcher read job {}, this instance reads \
             {}); rerun the job",
            instance.job,
            job.digest()
        )));
    }
    work(&job, config, instance.rank, &out, true, progress)
        .await
        .map(|_| ())
}

/// Runs `work`, calling `upload` every 5 seconds while it runs (logs followed from a store that
/// is not local); a failed upload is retried at the next one.
async fn while_uploading<T, U>(work: impl Future<Output = T>, upload: impl Fn() -> U) -> T
where
    U: Future<Output = Result<(), Error>>,
{
    let uploads = async {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if let Err(e) = upload().await {
                tracing::warn!(error = %e, "could not upload the instance logs; will retry");
            }
        }
    };
    tokio::select! {
        result = work => result,
        () = uploads => unreachable!("the upload loop never ends"),
    }
}

/// Uploads the logs in `dir` under `out/logs/` (those that exist).
async fn upload_logs(dir: &std::path::Path, out: &Store, instances: usize) -> Result<(), Error> {
    for rank in 0..instances {
        let path = launch::log_path(dir, rank);
        if let Ok(bytes) = std::fs::read(&path) {
            out.put(
                &format!("logs/{}.log", identity::host(rank)),
                Bytes::from(bytes),
            )
            .await?;
        }
    }
    Ok(())
}

async fn launch(
    config: &ProcessConfig,
    job: &Job,
    out: &Store,
    launcher: &dyn Launcher,
    progress: &dyn Progress,
) -> Result<(Outcome, Vec<(String, usize, String)>), Error> {
    let n = job.settings.instances;
    // A local output gets its logs written in place, as the instances run; any other store gets
    // them from a local folder every few seconds and at the end.
    let temp;
    let (log_dir, in_place) = match out.location().local_path() {
        Some(path) => (path.join("logs"), true),
        None => {
            temp = tempfile::tempdir().map_err(|e| Error::io("a temporary folder for logs", e))?;
            (temp.path().to_path_buf(), false)
        }
    };
    let retries = std::sync::Mutex::new(Vec::new());
    let on_event = |event: Event| match event {
        Event::Progress(rank, tick) => progress.instance(rank, tick),
        Event::Retry {
            rank,
            attempt,
            reason,
        } => {
            tracing::warn!(host = %identity::host(rank), attempt, %reason, "instance failed; retrying its share");
            progress.retried(rank, attempt, &reason);
            retries.lock().unwrap_or_else(|e| e.into_inner()).push((
                identity::host(rank),
                attempt,
                reason,
            ));
        }
        Event::Done(rank) => progress.instance_done(rank),
    };
    let digest = job.digest();
    let supervised = launch::supervise(launcher, config, digest.as_str(), &log_dir, &on_event);
    let supervised = if in_place {
        supervised.await
    } else {
        while_uploading(supervised, || upload_logs(&log_dir, out, n)).await
    };
    for rank in 0..n {
        progress.instance_done(rank);
    }
    // Logs are kept under the output whatever happened, a dead instance's included.
    if !in_place {
        upload_logs(&log_dir, out, n).await?;
    }
    let retries = retries.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Err(Error::InstanceFailed {
        host,
        attempts,
        reason,
        ..
    }) = supervised
    {
        let log = out.uri_of(&format!("logs/{host}.log"));
        return Err(Error::InstanceFailed {
            host,
            attempts,
            reason,
            log,
        });
    }
    supervised?;
    let results: Vec<_> = finalize::gather(job, out)
        .await?
        .into_iter()
        .flatten()
        .collect();
    if results.len() != n {
        return Err(Error::BadConfig(format!(
            "an instance exited successfully without its result record; see the logs under {}",
            out.uri_of("logs/")
        )));
    }
    Ok((summarise(job, out, &results).await?, retries))
}

async fn external(
    config: &ProcessConfig,
    job: &Job,
    out: &Store,
    id: &Identity,
    log: Option<&(dyn Fn() -> Vec<u8> + Send + Sync)>,
    progress: &dyn Progress,
) -> Result<Outcome, Error> {
    let host = id.host();
    let key = format!("logs/{host}.log");
    let upload = async || -> Result<(), Error> {
        if let Some(log) = log {
            out.put(&key, Bytes::from(log())).await?;
        }
        Ok(())
    };
    let tick = |tick: Tick| progress.instance(id.rank, tick);
    let worked = while_uploading(work(job, config, id.rank, out, false, &tick), upload).await;
    progress.instance_done(id.rank);
    // The instance's own log, kept under the output whatever happened.
    upload().await?;
    worked?;
    if id.rank != 0 {
        return Ok(Outcome::Follower { host });
    }
    progress.message(&format!("{host} finished; waiting for the other instances"));
    let deadline = Instant::now() + Duration::from_secs(config.wait_timeout_s);
    let results = loop {
        let results = finalize::gather(job, out).await?;
        if results.iter().all(Option::is_some) {
            break results.into_iter().flatten().collect::<Vec<_>>();
        }
        if Instant::now() > deadline {
            let missing: Vec<String> = results
                .iter()
                .enumerate()
                .filter(|(_, r)| r.is_none())
                .map(|(rank, _)| identity::host(rank))
                .collect();
            return Err(Error::Timeout {
                seconds: config.wait_timeout_s,
                missing: missing.join(", "),
                logs: out.uri_of("logs/"),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    summarise(job, out, &results).await
}

async fn summarise(job: &Job, out: &Store, results: &[InstanceResult]) -> Result<Outcome, Error> {
    if job.settings.script.is_some() {
        let report = script::finalize(job, out, results).await?;
        return Ok(Outcome::Script {
            instances: report.instances,
        });
    }
    Ok(Outcome::Processed(
        finalize::finalize(job, out, results).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::InProcess;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_program_runs_the_stage_with_instances_as_threads() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = crate::conformance::job(dir.path(), 2, 6).expect("job");
        let report = run(&config, Role::Launch(&InProcess), &NoProgress)
            .await
            .expect("the job runs");
        assert!(
            matches!(report.outcome, Outcome::Script { instances: 2 }),
            "{report:?}"
        );
        for host in ["algo-1", "algo-2"] {
            assert!(dir.path().join(format!("out/logs/{host}.log")).exists());
        }
        let again = run(&config, Role::Launch(&InProcess), &NoProgress)
            .await
            .expect("the rerun");
        assert!(matches!(again.outcome, Outcome::Unchanged), "{again:?}");
    }

    #[tokio::test]
    async fn memory_stores_are_only_for_instances_inside_this_process() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = crate::conformance::job(dir.path(), 2, 6).expect("job");
        config.out = "memory://elsewhere/out".into();
        let processes = crate::launch::LocalProcesses {
            program: "/bin/true".into(),
            args: Vec::new(),
            env: Vec::new(),
        };
        let err = run(&config, Role::Launch(&processes), &NoProgress)
            .await
            .expect_err("OS processes do not share this process's memory");
        assert!(
            matches!(&err, Error::Setting { setting: "out", .. })
                && err.to_string().contains("process of its own"),
            "{err}"
        );
    }

    #[test]
    fn settings_are_checked_before_any_work_and_named() {
        let config = ProcessConfig {
            inputs: vec![("train".into(), "lake/".into())],
            out: "out".into(),
            max_attempts: 0,
            ..ProcessConfig::default()
        };
        match config.validate() {
            Err(Error::Setting { setting, .. }) => assert_eq!(setting, "max_attempts"),
            other => panic!("expected max_attempts to be refused, got {other:?}"),
        }
        let mut augmented = ProcessConfig {
            max_attempts: 1,
            ..config
        };
        augmented.settings.recipe.augment = vec![shardline_contract::recipe::Augment::Flip];
        augmented.settings.augment_channels = vec!["validation".into()];
        match augmented.validate() {
            Err(Error::Setting { setting, reason }) => {
                assert_eq!(setting, "augment_channels");
                assert!(reason.contains("not an input"), "{reason}");
            }
            other => panic!("expected augment_channels to be refused, got {other:?}"),
        }
    }
}
