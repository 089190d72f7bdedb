//! The Slurm engine: an execution's steps as Slurm jobs.
//!
//! The coordinator (`shardline pipeline run --engine slurm`) submits every step at once, in
//! dependency order, as one batch job each (`sbatch --parsable`), with
//! `--dependency=afterok:<the jobs of the steps it depends on>` and `--kill-on-invalid-dep=yes`,
//! so that Slurm holds a step until its inputs exist and cancels it when one of them failed. A
//! processing step's job has one task per instance, a training step's one task per rank (when
//! this binary has MPI), every other step's one task.
//!
//! Each job runs `shardline pipeline step EXECUTION STEP` ([`Runner::step_job`]), which runs
//! that one step with exactly the local engine's code: the same cache key, the same look-up
//! and verification of cached outputs, the same attempts and retry policy, the same records
//! (logs, lineage edges, metrics, OpenLineage events) in the same execution store, which must
//! therefore be on a file system every node shares (as the data is, unless it is on S3). Inside
//! the job a processing step's instances are started with `srun --ntasks=1 --exact` each (the
//! supervisor retries a failed instance alone, as it does locally), a training step's ranks
//! with `srun --mpi=pmix` ([`crate::run::RankLauncher`]).
//!
//! The coordinator polls `squeue` and reports each step as its job starts and ends; a job that
//! ends without its step having recorded an end (cancelled because a dependency failed, killed
//! by a time limit or a node failure) is recorded by the coordinator, naming the job and
//! Slurm's state and reason. Stopping the coordinator (Ctrl-C, SIGTERM) cancels every job of
//! the execution with `scancel` and leaves it resumable, as locally.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::db::{Db, StepRow};
use crate::def::Step;
use crate::exec::{Decision, Error, Event, Run, Runner, State, load, settled_failure};
use crate::spec::Kind;
use crate::value::{Ref, Value};

/// Where an execution's steps run.
#[derive(Debug, Clone, Default)]
pub enum Engine {
    /// In this process (processing instances and training workers as its children).
    #[default]
    Local,
    /// As Slurm jobs.
    Slurm(SlurmEngine),
}

/// How steps are submitted to Slurm.
#[derive(Debug, Clone)]
pub struct SlurmEngine {
    /// The `shardline` executable every job runs (on a path every node sees).
    pub program: PathBuf,
    /// More `sbatch` arguments for every job (`--partition=gpu`, `--time=60`, ...).
    pub sbatch_args: Vec<String>,
    /// Whether `program` trains as MPI ranks (built with MPI): then a training step's job has a
    /// task per rank; otherwise one task trains with in-process workers.
    pub mpi: bool,
    /// How often `squeue` is asked.
    pub poll: Duration,
}

/// What a step's job needs besides the store: written by the coordinator for each run of an
/// execution (`<state>/slurm/<execution>/<run>/run.json`).
#[derive(Debug, Serialize, Deserialize)]
pub struct RunFile {
    /// The OpenLineage run of the execution's run (the parent of every step's run).
    pub exec_run_id: String,
    /// On resume: the steps as they were before this run.
    pub earlier: BTreeMap<String, StepRow>,
}

/// A job's state as `squeue` shows it.
#[derive(Debug, Clone)]
struct JobState {
    state: String,
    reason: String,
}

fn terminal(state: &str) -> bool {
    !matches!(
        state,
        "PENDING"
            | "RUNNING"
            | "CONFIGURING"
            | "COMPLETING"
            | "SUSPENDED"
            | "REQUEUED"
            | "REQUEUE_HOLD"
            | "REQUEUE_FED"
            | "RESIZING"
            | "SIGNALING"
            | "STAGE_OUT"
            | "STOPPED"
    )
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs a Slurm client; its error names the command and what it printed.
async fn client(program: &str, args: &[String]) -> Result<String, String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| {
            format!("cannot run {program} ({e}); is Slurm's client installed and SLURM_CONF set?")
        })?;
    if !out.status.success() {
        return Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The states of `jobs` (those Slurm still knows).
async fn states(jobs: &[String]) -> Result<BTreeMap<String, JobState>, String> {
    let format = ["-h", "-t", "all", "-o", "%i|%T|%r"].map(String::from);
    let mut args: Vec<String> = format.to_vec();
    args.push(format!("--jobs={}", jobs.join(",")));
    // squeue refuses the whole list when one job has been purged; then all jobs are listed.
    let text = match client("squeue", &args).await {
        Ok(text) => text,
        Err(_) => client("squeue", &format).await?,
    };
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, '|');
            let id = parts.next()?.trim().to_string();
            let state = parts.next()?.trim().to_string();
            let reason = parts.next().unwrap_or("").trim().to_string();
            Some((id, JobState { state, reason }))
        })
        .collect())
}

/// A step's state from its row in the store.
fn state_of(row: &StepRow) -> State {
    State {
        status: row.status.clone(),
        reason: row.reason.clone(),
        report: row.report.clone().unwrap_or(serde_json::Value::Null),
        outputs: row
            .outputs
            .as_ref()
            .and_then(|o| serde_json::from_value(o.clone()).ok())
            .unwrap_or_default(),
    }
}

fn finished(row: &StepRow) -> bool {
    row.finished.is_some()
        && matches!(
            row.status.as_str(),
            "succeeded" | "cached" | "failed" | "skipped" | "not-run" | "stopped"
        )
}

impl Run<'_> {
    /// The tasks a step's job asks for.
    fn tasks(&self, step: &Step, engine: &SlurmEngine) -> usize {
        let field = match step.kind {
            Kind::Process => "instances",
            Kind::Command if step.literal_str("contract") == Some("processing") => "instances",
            Kind::Train if engine.mpi => "workers",
            // The same rank launcher starts a transform's instances (it comes with the binary's
            // MPI feature).
            Kind::Transform if engine.mpi => "instances",
            _ => return 1,
        };
        let params_only = |r: &Ref| match r {
            Ref::Param(p) => self
                .params
                .get(p)
                .cloned()
                .ok_or_else(|| format!("parameter {p} has no value")),
            _ => Err("known only when the step runs".to_string()),
        };
        let given = step
            .settings
            .get(field)
            .and_then(|s| s.template.resolve(&params_only).ok());
        match given {
            Some(Value::Int(n)) if n > 0 => n as usize,
            Some(_) => 1,
            None if step.kind == Kind::Transform => 1,
            None if step.kind == Kind::Train => {
                crate::run::train_workers(&crate::run::Resolved::default()).unwrap_or(1)
            }
            None => shardline_process::ProcessConfig::default()
                .settings
                .instances
                .max(1),
        }
    }

    /// The main loop of the Slurm engine: submit every step, follow the jobs, record what they
    /// could not.
    pub(crate) async fn go_slurm(
        &self,
        engine: &SlurmEngine,
        stop: Pin<&mut (dyn Future<Output = ()> + Send)>,
    ) -> Result<String, Error> {
        let mut stop = stop;
        let def = self.def;
        for (i, step) in def.steps.iter().enumerate() {
            self.db.put_step(&self.row(step, i, &State::pending()))?;
        }
        let state_dir = std::path::absolute(&self.opts.state_dir)
            .map_err(|e| Error::Usage(format!("the state directory: {e}")))?;
        let run_dir = state_dir
            .join("slurm")
            .join(&self.exec_id)
            .join(&self.exec_run_id);
        std::fs::create_dir_all(&run_dir)
            .map_err(|e| Error::Usage(format!("{}: {e}", run_dir.display())))?;
        let run_file = run_dir.join("run.json");
        let body = RunFile {
            exec_run_id: self.exec_run_id.clone(),
            earlier: self.earlier.clone(),
        };
        std::fs::write(
            &run_file,
            serde_json::to_vec_pretty(&body).unwrap_or_default(),
        )
        .map_err(|e| Error::Usage(format!("{}: {e}", run_file.display())))?;
        let cwd = std::env::current_dir()
            .map_err(|e| Error::Usage(format!("the working directory: {e}")))?;

        // Submit in dependency order: every job names its dependencies' jobs. With fewer
        // `max_parallel` than steps, the jobs are dealt round-robin to that many slots, each a
        // job name Slurm runs one job of at a time (`--dependency=singleton`): at most
        // `max_parallel` of the execution's jobs run at once, held by Slurm itself.
        let max = self.opts.max_parallel.unwrap_or(def.max_parallel).max(1);
        let slots = (max < def.steps.len()).then_some(max);
        let mut jobs: BTreeMap<String, String> = BTreeMap::new();
        let mut submitted: Vec<String> = Vec::new();
        for (position, step) in def.steps.iter().enumerate() {
            let script = run_dir.join(format!("{}.sh", step.name));
            let text = format!(
                "#!/bin/sh\n# Step `{step}` of execution {exec} of pipeline {pipeline}, submitted by `shardline pipeline run --engine slurm`.\nexec {program} pipeline step --state {state} --run {run} {exec} {step_q}\n",
                step = step.name,
                exec = self.exec_id,
                pipeline = def.name,
                program = shell_quote(&engine.program.display().to_string()),
                state = shell_quote(&state_dir.display().to_string()),
                run = shell_quote(&run_file.display().to_string()),
                step_q = shell_quote(&step.name),
            );
            std::fs::write(&script, text)
                .map_err(|e| Error::Usage(format!("{}: {e}", script.display())))?;
            let log_dir = state_dir.join("logs").join(&self.exec_id).join(&step.name);
            std::fs::create_dir_all(&log_dir)
                .map_err(|e| Error::Usage(format!("{}: {e}", log_dir.display())))?;
            let job_name = match slots {
                None => format!("shardline.{}.{}", def.name, step.name),
                Some(n) => format!(
                    "shardline.{}.{}.slot{}",
                    def.name,
                    &self.exec_id[..self.exec_id.len().min(8)],
                    position % n
                ),
            };
            let mut args = vec![
                "--parsable".to_string(),
                format!("--job-name={job_name}"),
                format!("--comment=step {}", step.name),
                format!("--output={}/slurm-%j.out", log_dir.display()),
                format!("--chdir={}", cwd.display()),
                format!("--ntasks={}", self.tasks(step, engine)),
                "--kill-on-invalid-dep=yes".to_string(),
            ];
            let deps: Vec<&str> = step
                .deps
                .iter()
                .filter_map(|d| jobs.get(d).map(String::as_str))
                .collect();
            let mut dependency = Vec::new();
            if !deps.is_empty() {
                dependency.push(format!("afterok:{}", deps.join(":")));
            }
            if slots.is_some() {
                dependency.push("singleton".to_string());
            }
            if !dependency.is_empty() {
                args.push(format!("--dependency={}", dependency.join(",")));
            }
            args.extend(engine.sbatch_args.iter().cloned());
            args.push(script.display().to_string());
            let id = match client("sbatch", &args).await {
                Ok(out) => out.trim().split(';').next().unwrap_or("").to_string(),
                Err(e) => {
                    self.cancel(&submitted).await;
                    let message = format!(
                        "submitting step `{}`: {e}; is a Slurm cluster reachable from here (`sinfo` answers), with SLURM_CONF set if its configuration is not the default?",
                        step.name
                    );
                    self.db
                        .set_execution_status(&self.exec_id, "failed", Some(&message))?;
                    return Err(Error::Usage(message));
                }
            };
            self.emit(Event::Line {
                step: step.name.clone(),
                text: if deps.is_empty() {
                    format!("submitted as Slurm job {id}")
                } else {
                    format!("submitted as Slurm job {id}, after {}", deps.join(", "))
                },
            });
            self.db.put_log(
                &self.exec_id,
                &step.name,
                0,
                "slurm",
                &log_dir.join(format!("slurm-{id}.out")),
            )?;
            submitted.push(id.clone());
            jobs.insert(step.name.clone(), id);
        }

        // Follow the jobs.
        let mut announced: BTreeMap<String, i64> = BTreeMap::new();
        // How far each step's current attempt log has been relayed: (attempt, bytes).
        let mut relayed: BTreeMap<String, (i64, u64)> = BTreeMap::new();
        let mut ended: BTreeMap<String, State> = BTreeMap::new();
        let mut failed: Option<String> = None;
        let mut gone_polls: BTreeMap<String, u32> = BTreeMap::new();
        let mut unreachable: Option<String> = None;
        while ended.len() < def.steps.len() {
            let known = tokio::select! {
                s = states(&submitted) => s,
                () = &mut stop => {
                    self.cancel(&submitted).await;
                    return self.stopped(&jobs, &ended).await;
                }
            };
            // A controller that cannot be asked says nothing about the jobs: they are neither
            // gone nor ended, and are asked about again (Ctrl-C cancels them).
            let (known, answered) = match known {
                Ok(k) => {
                    if unreachable.take().is_some() {
                        self.emit(Event::Line {
                            step: String::new(),
                            text: "squeue answers again".into(),
                        });
                    }
                    (k, true)
                }
                Err(e) => {
                    if unreachable.is_none() {
                        self.emit(Event::Line {
                            step: String::new(),
                            text: format!("squeue: {e}; asking again until it answers"),
                        });
                    }
                    unreachable.get_or_insert(e);
                    (BTreeMap::new(), false)
                }
            };
            let rows = self.rows()?;
            for (i, step) in def.steps.iter().enumerate() {
                if ended.contains_key(&step.name) {
                    continue;
                }
                let Some(row) = rows.get(&step.name) else {
                    continue;
                };
                if row.status == "running" && announced.get(&step.name) != Some(&row.attempts) {
                    announced.insert(step.name.clone(), row.attempts);
                    self.emit(Event::Started {
                        step: step.name.clone(),
                        kind: step.kind,
                        attempt: row.attempts,
                    });
                }
                if row.attempts > 0 {
                    self.relay(step, row.attempts, &mut relayed);
                }
                let job = &jobs[&step.name];
                let job_state = known.get(job);
                let job_over = match job_state {
                    Some(j) => terminal(&j.state),
                    // Purged from the controller (or not yet visible): over after a few polls
                    // that the controller answered.
                    None if answered => {
                        let n = gone_polls.entry(job.clone()).or_default();
                        *n += 1;
                        *n > 5
                    }
                    None => false,
                };
                let state = if finished(row) {
                    state_of(row)
                } else if job_over {
                    let (slurm_state, reason) = job_state
                        .map(|j| (j.state.clone(), j.reason.clone()))
                        .unwrap_or_else(|| ("gone".into(), "no longer known to Slurm".into()));
                    let state = if reason.contains("DependencyNeverSatisfied") {
                        let dep = step
                            .deps
                            .iter()
                            .find(|d| {
                                ended.get(*d).is_some_and(|s| {
                                    !matches!(s.status.as_str(), "succeeded" | "cached" | "skipped")
                                })
                            })
                            .cloned()
                            .unwrap_or_else(|| {
                                step.deps.iter().cloned().collect::<Vec<_>>().join(", ")
                            });
                        let status = ended
                            .get(&dep)
                            .map_or("failed".to_string(), |s| s.status.clone());
                        State {
                            status: "not-run".into(),
                            reason: Some(format!(
                                "`{dep}` {status} (Slurm cancelled job {job}: its dependency can never be satisfied)"
                            )),
                            ..State::pending()
                        }
                    } else {
                        State {
                            status: "failed".into(),
                            reason: Some(format!(
                                "Slurm job {job} ended {slurm_state} ({reason}) before the step recorded an end; its log: `shardline logs {} {} --instance slurm`",
                                self.exec_id, step.name
                            )),
                            ..State::pending()
                        }
                    };
                    let mut row = self.row(step, i, &state);
                    row.attempts = self.db.last_attempt(&self.exec_id, &step.name).unwrap_or(0);
                    row.finished = Some(crate::db::unix_now());
                    if row.attempts > 0 {
                        let _ = self.db.finish_attempt(
                            &self.exec_id,
                            &step.name,
                            row.attempts,
                            &state.status,
                            state.reason.as_deref(),
                        );
                    }
                    self.db.put_step(&row)?;
                    state
                } else {
                    continue;
                };
                if state.status == "failed" {
                    failed.get_or_insert(match step.kind {
                        Kind::Fail | Kind::Condition => settled_failure(step, &state),
                        _ => format!(
                            "step `{}` failed: {}",
                            step.name,
                            state.reason.clone().unwrap_or_default()
                        ),
                    });
                }
                let seconds = match (row.started, row.finished) {
                    (Some(a), Some(b)) if b >= a => b - a,
                    _ => 0.0,
                };
                self.emit(Event::Finished {
                    step: step.name.clone(),
                    status: state.status.clone(),
                    reason: state.reason.clone(),
                    seconds,
                });
                ended.insert(step.name.clone(), state);
            }
            if ended.len() < def.steps.len() {
                tokio::select! {
                    () = tokio::time::sleep(engine.poll) => {}
                    () = &mut stop => {
                        self.cancel(&submitted).await;
                        return self.stopped(&jobs, &ended).await;
                    }
                }
            }
        }
        let (status, message) = match &failed {
            Some(m) => ("failed", Some(m.clone())),
            None => ("succeeded", None),
        };
        self.db
            .set_execution_status(&self.exec_id, status, message.as_deref())?;
        Ok(status.into())
    }

    /// Relays the new complete lines of a step's attempt log (the job writes it on the shared file
    /// system) as events, as the local engine echoes them.
    fn relay(&self, step: &Step, attempt: i64, relayed: &mut BTreeMap<String, (i64, u64)>) {
        let path = self
            .opts
            .state_dir
            .join("logs")
            .join(&self.exec_id)
            .join(&step.name)
            .join(format!("attempt-{attempt}"))
            .join("main.log");
        let entry = relayed.entry(step.name.clone()).or_insert((attempt, 0));
        if entry.0 != attempt {
            *entry = (attempt, 0);
        }
        // Only what was written since the last poll is read.
        let mut fresh = Vec::new();
        let read = std::fs::File::open(&path).and_then(|mut file| {
            use std::io::{Read as _, Seek as _};
            file.seek(std::io::SeekFrom::Start(entry.1))?;
            file.read_to_end(&mut fresh)
        });
        if read.is_err() {
            return;
        }
        let Some(end) = fresh.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        for line in String::from_utf8_lossy(&fresh[..end]).lines() {
            self.emit(Event::Line {
                step: step.name.clone(),
                text: line.to_string(),
            });
        }
        entry.1 += (end + 1) as u64;
    }

    /// The execution's steps as stored, by name.
    fn rows(&self) -> Result<BTreeMap<String, StepRow>, Error> {
        Ok(self.db.steps_by_name(&self.exec_id)?)
    }

    async fn cancel(&self, jobs: &[String]) {
        if jobs.is_empty() {
            return;
        }
        if let Err(e) = client("scancel", jobs).await {
            self.emit(Event::Line {
                step: String::new(),
                text: format!("scancel: {e}"),
            });
        }
    }

    /// After the jobs were cancelled: waits for them to end, then records the steps that had not
    /// ended as stopped (those running) or not run, and the execution as stopped.
    async fn stopped(
        &self,
        jobs: &BTreeMap<String, String>,
        ended: &BTreeMap<String, State>,
    ) -> Result<String, Error> {
        let ids: Vec<String> = jobs.values().cloned().collect();
        for _ in 0..60 {
            match states(&ids).await {
                Ok(known) if known.values().all(|j| terminal(&j.state)) => break,
                Err(_) => break,
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        let rows = self.rows()?;
        for (i, step) in self.def.steps.iter().enumerate() {
            if ended.contains_key(&step.name) || rows.get(&step.name).is_some_and(finished) {
                continue;
            }
            let was_running = rows.get(&step.name).is_some_and(|r| r.status == "running");
            self.record_stopped(
                step,
                i,
                was_running,
                &format!(
                    "the execution was stopped (Slurm job {} cancelled)",
                    jobs[&step.name]
                ),
            )?;
        }
        self.db.set_execution_status(
            &self.exec_id,
            "stopped",
            Some("stopped by a signal, its Slurm jobs cancelled; `shardline pipeline resume` continues it"),
        )?;
        Ok("stopped".into())
    }
}

impl Runner<'_> {
    /// Runs one step of an execution inside its Slurm job (`shardline pipeline step`): the step's
    /// dependencies have ended (Slurm saw to it); their records in the store give the values the
    /// step's settings reference. Returns the step's status: succeeded, cached or skipped
    /// mean the job succeeds.
    pub async fn step_job(
        &self,
        execution: &str,
        step_name: &str,
        run_file: &Path,
    ) -> Result<String, Error> {
        let db = std::sync::Arc::new(Db::open(&self.options.state_dir)?);
        let (def, exec) = load(&db, execution)?;
        let text = std::fs::read(run_file)
            .map_err(|e| Error::Usage(format!("{}: {e}", run_file.display())))?;
        let body: RunFile = serde_json::from_slice(&text)
            .map_err(|e| Error::Usage(format!("{} is not a run file: {e}", run_file.display())))?;
        let params: BTreeMap<String, Value> =
            serde_json::from_value(exec.params.clone()).unwrap_or_default();
        let (position, step) = def
            .steps
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == step_name)
            .ok_or_else(|| {
                Error::Usage(format!("execution {execution} has no step `{step_name}`"))
            })?;
        let rows = db.steps_by_name(execution)?;
        let states: BTreeMap<String, State> = def
            .steps
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    rows.get(&s.name).map_or_else(State::pending, state_of),
                )
            })
            .collect();
        let run = Run {
            db: db.clone(),
            def: &def,
            opts: self.options,
            params,
            launcher: self.launcher,
            on_event: self.on_event,
            exec_id: execution.to_string(),
            exec_run_id: body.exec_run_id,
            earlier: body.earlier,
            sink: crate::openlineage::Sink::new(
                &self.options.state_dir,
                self.options.openlineage_url.clone(),
            ),
        };
        let mut states = states;
        let status = match run.decide(step, &states) {
            Decision::Settle(state) => {
                let status = state.status.clone();
                run.settle(step, position, state, &mut states)?;
                status
            }
            Decision::Wait => {
                let waiting: Vec<String> = step
                    .deps
                    .iter()
                    .filter(|d| !states[*d].ok())
                    .map(|d| format!("`{d}` is {}", states[d].status))
                    .collect();
                let state = State {
                    status: "failed".into(),
                    reason: Some(format!(
                        "its job started before its dependencies ended ({}); were the jobs submitted without their dependencies?",
                        waiting.join(", ")
                    )),
                    ..State::pending()
                };
                run.settle(step, position, state, &mut states)?;
                "failed".into()
            }
            Decision::Run => run.step(step, position, states.clone()).await.1.status,
        };
        Ok(status)
    }
}
