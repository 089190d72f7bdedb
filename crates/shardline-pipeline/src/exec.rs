//! The executor: runs a validated definition step by step, steps whose inputs are ready at
//! once (up to `max_parallel`), each through its stage's library call, with its retry policy,
//! its cache, its logs, its lineage edges and OpenLineage events, all recorded in the store.
//!
//! [`plan`] walks the same steps without running any: which will come from the cache, which
//! will run, and why.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::json;
use shardline_process::launch::Launcher;

use crate::db::{CacheEntry, Db, DbError, Execution, StepRow, unix_now};
use crate::def::{Definition, Step};
use crate::digest::{self, Tree};
use crate::openlineage::{self, Sink};
use crate::run::{self, Class, Context, Done, Resolved, StepError, StepLog};
use crate::spec::{Kind, Role};
use crate::value::{Ref, Ty, Value};

/// The Shardline version that is part of every cache key.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why an execution could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The definition is invalid.
    #[error(transparent)]
    Invalid(#[from] crate::def::Invalid),
    /// The store failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A parameter or an execution was wrong.
    #[error("pipeline: {0}")]
    Usage(String),
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The state directory (the store, logs, OpenLineage events).
    pub state_dir: PathBuf,
    /// Run every step, using no cached result.
    pub no_cache: bool,
    /// Steps at once, at most (default: the definition's `max_parallel`).
    pub max_parallel: Option<usize>,
    /// The model registry `register` steps use when they name none.
    pub registry: String,
    /// Also post OpenLineage events here.
    pub openlineage_url: Option<String>,
    /// Where the steps run: this process (the default) or a cluster scheduler.
    pub engine: crate::slurm::Engine,
    /// Inside a scheduler's job: how a training step's ranks are started as processes.
    pub ranks: Option<run::RankLauncher>,
}

impl Options {
    /// Defaults with the state in `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>, registry: impl Into<String>) -> Options {
        Options {
            state_dir: state_dir.into(),
            no_cache: false,
            max_parallel: None,
            registry: registry.into(),
            openlineage_url: None,
            engine: crate::slurm::Engine::Local,
            ranks: None,
        }
    }
}

/// What the executor reports as it goes.
#[derive(Debug, Clone)]
pub enum Event {
    /// A step starts an attempt.
    Started {
        /// The step.
        step: String,
        /// Its kind.
        kind: Kind,
        /// The attempt (1-based, counting earlier runs of the execution).
        attempt: i64,
    },
    /// A line of a step's log.
    Line {
        /// The step.
        step: String,
        /// The line.
        text: String,
    },
    /// A step has its final status in this run.
    Finished {
        /// The step.
        step: String,
        /// succeeded, cached, failed, skipped, not-run, stopped.
        status: String,
        /// Why (the miss, the error, the skip).
        reason: Option<String>,
        /// Seconds it took.
        seconds: f64,
    },
}

/// A step's state during a run.
#[derive(Debug, Clone)]
pub(crate) struct State {
    pub(crate) status: String,
    pub(crate) reason: Option<String>,
    pub(crate) report: serde_json::Value,
    pub(crate) outputs: BTreeMap<String, String>,
}

impl State {
    pub(crate) fn pending() -> State {
        State {
            status: "pending".into(),
            reason: None,
            report: serde_json::Value::Null,
            outputs: BTreeMap::new(),
        }
    }
    pub(crate) fn ok(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "cached")
    }
    pub(crate) fn done(&self) -> bool {
        self.status != "pending" && self.status != "running"
    }
}

/// The end of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The execution.
    pub execution: Execution,
    /// Its steps.
    pub steps: Vec<StepRow>,
    /// Seconds the run took.
    pub seconds: f64,
}

impl Summary {
    /// Whether it succeeded.
    pub fn succeeded(&self) -> bool {
        self.execution.status == "succeeded"
    }
}

/// What preparing a step found: its resolved settings, key and whether the cache has it.
struct Prepared {
    settings: Resolved,
    outputs: BTreeMap<String, String>,
    inputs: Vec<(String, String)>,
    components: serde_json::Value,
    key: String,
    hit: Option<CacheEntry>,
    cache: &'static str,
    why: String,
    /// The cache had this key, but its outputs were changed or deleted since: the stage must
    /// redo its work rather than trust its own record of a finished job.
    damaged: bool,
}

/// One line of a plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanLine {
    /// The step.
    pub step: String,
    /// Its kind.
    pub kind: String,
    /// cached, run, skip, decide.
    pub action: String,
    /// Why.
    pub why: String,
}

fn canonical(value: &serde_json::Value) -> String {
    // serde_json's maps are sorted (no preserve_order), so this text is canonical.
    value.to_string()
}

fn key_of(components: &serde_json::Value) -> String {
    shardline_lineage::Digest::of(canonical(components).as_bytes())
        .as_str()
        .to_string()
}

/// Explains a miss against the previous key's components, component by component.
fn explain(previous: &serde_json::Value, now: &serde_json::Value) -> String {
    let mut why = Vec::new();
    let get = |v: &serde_json::Value, a: &str| v.get(a).cloned().unwrap_or_default();
    if get(previous, "version") != get(now, "version") {
        why.push(format!(
            "Shardline version {} → {}",
            get(previous, "version"),
            get(now, "version")
        ));
    }
    if get(previous, "defaults") != get(now, "defaults") {
        why.push("the step kind's defaults changed (another Shardline build)".to_string());
    }
    if get(previous, "kind") != get(now, "kind") {
        why.push(format!(
            "kind {} → {}",
            get(previous, "kind"),
            get(now, "kind")
        ));
    }
    for (part, label) in [("settings", "setting"), ("inputs", "input")] {
        let (a, b) = (get(previous, part), get(now, part));
        let empty = serde_json::Map::new();
        let (a, b) = (
            a.as_object().unwrap_or(&empty),
            b.as_object().unwrap_or(&empty),
        );
        let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for name in names {
            match (a.get(name), b.get(name)) {
                (Some(x), Some(y)) if x == y => {}
                (Some(x), Some(y)) if part == "settings" => {
                    why.push(format!("{label} {name} {x} → {y}"))
                }
                (Some(_), Some(_)) => why.push(format!("{label} {name} content changed")),
                (None, Some(y)) if part == "settings" => {
                    why.push(format!("{label} {name} set to {y}"))
                }
                (Some(x), None) if part == "settings" => {
                    why.push(format!("{label} {name} {x} removed"))
                }
                (None, Some(_)) => why.push(format!("{label} {name} added")),
                (Some(_), None) => why.push(format!("{label} {name} removed")),
                (None, None) => {}
            }
        }
    }
    if why.is_empty() {
        "miss: the key changed".to_string()
    } else {
        format!("miss: {}", why.join(", "))
    }
}

/// Checks that a cache entry's output files are still there with their digests; the first
/// difference, said as a miss.
async fn verify(db: &Db, entry: &CacheEntry) -> Result<(), String> {
    for (uri, files) in &entry.files {
        let now = digest::location(db, uri).await?;
        for (key, digest) in files {
            let shown = if key.is_empty() {
                uri.clone()
            } else {
                format!("{}/{key}", uri.trim_end_matches('/'))
            };
            match now.files.get(key) {
                None => return Err(format!("miss: output {shown} was deleted")),
                Some(d) if d != digest => return Err(format!("miss: output {shown} was changed")),
                Some(_) => {}
            }
        }
    }
    Ok(())
}

fn report_value(report: &serde_json::Value, path: &[String]) -> Option<serde_json::Value> {
    let mut at = report;
    for part in path {
        at = match at {
            serde_json::Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            other => other.get(part)?,
        };
    }
    Some(at.clone())
}

/// A new execution id: the time, then random hex.
fn new_id() -> String {
    let secs = unix_now() as i64;
    let when = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", when.format("%Y%m%d-%H%M%S"), &random[..6])
}

/// The digest of a definition's text.
pub fn definition_digest(text: &str) -> String {
    shardline_lineage::Digest::of(text.as_bytes())
        .as_str()
        .to_string()
}

pub(crate) struct Run<'a> {
    pub(crate) db: Arc<Db>,
    pub(crate) def: &'a Definition,
    pub(crate) opts: &'a Options,
    pub(crate) params: BTreeMap<String, Value>,
    pub(crate) launcher: &'a dyn Launcher,
    pub(crate) on_event: &'a (dyn Fn(&Event) + Send + Sync),
    pub(crate) exec_id: String,
    pub(crate) exec_run_id: String,
    /// On resume: the steps of the execution as they were.
    pub(crate) earlier: BTreeMap<String, StepRow>,
    pub(crate) sink: Sink,
}

/// What the executor can do with a pending step now.
pub(crate) enum Decision {
    /// Its dependencies have not all finished.
    Wait,
    /// Decided without running: skipped, not run, a condition's outcome, a fail step.
    Settle(State),
    /// Ready to run.
    Run,
}

type StepFuture<'a> = Pin<Box<dyn Future<Output = (String, State, f64)> + 'a>>;

impl<'a> Run<'a> {
    pub(crate) fn emit(&self, e: Event) {
        (self.on_event)(&e);
    }

    fn lookup(&self, states: &BTreeMap<String, State>, r: &Ref) -> Result<Value, String> {
        match r {
            Ref::Param(p) => self
                .params
                .get(p)
                .cloned()
                .ok_or_else(|| format!("parameter {p} has no value")),
            Ref::Output { step, name } => states
                .get(step)
                .and_then(|s| s.outputs.get(name))
                .map(|u| Value::Str(u.clone()))
                .ok_or_else(|| format!("step `{step}` has no output `{name}` (it did not run)")),
            Ref::Report { step, path } => {
                let report = states
                    .get(step)
                    .map(|s| &s.report)
                    .ok_or_else(|| format!("step `{step}` has no report"))?;
                report_value(report, path)
                    .and_then(|v| Value::from_json(&v))
                    .ok_or_else(|| {
                        format!(
                            "the report of step `{step}` has no value at {}",
                            path.join(".")
                        )
                    })
            }
        }
    }

    /// Resolves a step's settings, digests its inputs and looks its key up.
    async fn prepare(
        &self,
        step: &Step,
        states: &BTreeMap<String, State>,
    ) -> Result<Prepared, StepError> {
        let invalid = |message: String| StepError {
            class: Class::Invalid,
            message,
        };
        let mut settings = Resolved::default();
        for (name, setting) in &step.settings {
            let field = step.kind.field(name).copied();
            let value = setting
                .template
                .resolve(&|r| self.lookup(states, r))
                .map_err(|e| {
                    invalid(format!(
                        "`{name}` ({}:{}:{}): {e}",
                        self.def.file, setting.at.line, setting.at.col
                    ))
                })?;
            let ty = field.map_or(Ty::Any, |f| f.ty);
            let value = value.coerce(ty).ok_or_else(|| {
                invalid(format!(
                    "`{name}` ({}:{}:{}) must be {}, but resolved to {} ({})",
                    self.def.file,
                    setting.at.line,
                    setting.at.col,
                    ty.a(),
                    value.ty().a(),
                    value
                ))
            })?;
            settings.0.insert(name.clone(), value);
        }
        let outputs = run::output_uris(step.kind, &settings, &step.outputs);
        let mut key_settings = serde_json::Map::new();
        let mut inputs = Vec::new();
        let mut input_digests = serde_json::Map::new();
        for (name, value) in &settings.0 {
            let role = step.kind.field(name).map_or(Role::Setting, |f| f.role);
            match role {
                Role::Runtime => {}
                Role::Setting | Role::Output => {
                    key_settings.insert(name.clone(), value.to_json());
                }
                Role::Input => {
                    let uris: Vec<(String, String)> = match value {
                        Value::Table(t) => t
                            .iter()
                            .map(|(k, v)| (format!("{name}.{k}"), v.to_string()))
                            .collect(),
                        other => vec![(name.clone(), other.to_string())],
                    };
                    for (label, uri) in uris {
                        let tree = self.input_tree(&uri).await.map_err(|e| StepError {
                            class: Class::Invalid,
                            message: format!("input `{label}` {uri}: {e}"),
                        })?;
                        let d = tree.digest();
                        input_digests.insert(label, json!(d));
                        inputs.push((crate::trace::normal(&uri), d));
                    }
                }
            }
        }
        let components = json!({
            "kind": step.kind.name(),
            "version": VERSION,
            // A setting left out takes the library's default: a build whose defaults differ
            // must not reuse what another build computed with its own.
            "defaults": run::defaults_digest(step.kind),
            "settings": key_settings,
            "inputs": input_digests,
        });
        let key = key_of(&components);
        let mut prepared = Prepared {
            settings,
            outputs,
            inputs,
            components,
            key,
            hit: None,
            cache: "miss",
            why: String::new(),
            damaged: false,
        };
        self.look_up(step, &mut prepared).await;
        Ok(prepared)
    }

    async fn input_tree(&self, uri: &str) -> Result<Tree, String> {
        let tree = if digest::is_manifest(uri) {
            digest::manifest(&self.db, uri).await?
        } else {
            digest::location(&self.db, uri).await?
        };
        if tree.files.is_empty() {
            return Err("does not exist (or is empty)".into());
        }
        Ok(tree)
    }

    async fn look_up(&self, step: &Step, p: &mut Prepared) {
        // On resume, a step that finished with the same key is kept whatever the cache says.
        if let Some(row) = self.earlier.get(&step.name)
            && matches!(row.status.as_str(), "succeeded" | "cached")
            && row.cache_key.as_deref() == Some(p.key.as_str())
            && let Ok(entries) = self.db.cache_entries(&p.key)
            && let Some(entry) = entries.into_iter().next()
        {
            match verify(&self.db, &entry).await {
                Ok(()) => {
                    p.cache = "hit";
                    p.why = format!("kept from the earlier run (key {})", short(&p.key));
                    p.hit = Some(entry);
                    return;
                }
                Err(why) => {
                    p.damaged = true;
                    p.why = why;
                }
            }
        }
        if !step.kind.cacheable() {
            p.cache = "off";
            p.why = format!("a {} step is decided on every run", step.kind);
            return;
        }
        if self.opts.no_cache || !step.cache {
            p.cache = "off";
            p.why = if self.opts.no_cache {
                "cache off (--no-cache)".into()
            } else {
                "cache off for this step (cache = false)".into()
            };
            return;
        }
        if !p.why.is_empty() {
            return;
        }
        let entries = self.db.cache_entries(&p.key).unwrap_or_default();
        let mut first_failure = None;
        for entry in entries {
            match verify(&self.db, &entry).await {
                Ok(()) => {
                    p.cache = "hit";
                    p.why = format!(
                        "hit: key {} from execution {}",
                        short(&p.key),
                        entry.execution
                    );
                    p.hit = Some(entry);
                    return;
                }
                Err(why) => {
                    first_failure.get_or_insert(why);
                }
            }
        }
        p.why = match first_failure {
            Some(why) => {
                p.damaged = true;
                why
            }
            None => match self.db.previous_entry(&self.def.name, &step.name) {
                Ok(Some(previous)) => explain(&previous.components, &p.components),
                _ => "miss: never run before".into(),
            },
        };
    }

    pub(crate) fn row(&self, step: &Step, position: usize, state: &State) -> StepRow {
        StepRow {
            execution: self.exec_id.clone(),
            step: step.name.clone(),
            kind: step.kind.name().into(),
            position: position as i64,
            status: state.status.clone(),
            reason: state.reason.clone(),
            ..StepRow::default()
        }
    }

    fn attempt_dir(&self, step: &str, attempt: i64) -> PathBuf {
        self.opts
            .state_dir
            .join("logs")
            .join(&self.exec_id)
            .join(step)
            .join(format!("attempt-{attempt}"))
    }

    /// Runs one step to its end: cache, attempts, records.
    pub(crate) async fn step(
        &self,
        step: &Step,
        position: usize,
        states: BTreeMap<String, State>,
    ) -> (String, State, f64) {
        let started = Instant::now();
        let mut row = self.row(step, position, &State::pending());
        row.started = Some(unix_now());
        let state = self.step_inner(step, &states, &mut row).await;
        row.status = state.status.clone();
        row.reason = state.reason.clone();
        row.finished = Some(unix_now());
        if !state.report.is_null() {
            row.report = Some(state.report.clone());
        }
        row.outputs = Some(json!(state.outputs));
        let _ = self.db.put_step(&row);
        let seconds = started.elapsed().as_secs_f64();
        self.emit(Event::Finished {
            step: step.name.clone(),
            status: state.status.clone(),
            reason: state.reason.clone(),
            seconds,
        });
        (step.name.clone(), state, seconds)
    }

    async fn step_inner(
        &self,
        step: &Step,
        states: &BTreeMap<String, State>,
        row: &mut StepRow,
    ) -> State {
        let fail = |reason: String| State {
            status: "failed".into(),
            reason: Some(reason),
            ..State::pending()
        };
        let prepared = match self.prepare(step, states).await {
            Ok(p) => p,
            Err(e) => return fail(e.message),
        };
        row.cache = Some(prepared.cache.into());
        row.cache_key = Some(prepared.key.clone());
        row.components = Some(prepared.components.clone());
        row.settings = Some(Value::Table(prepared.settings.0.clone()).to_json());
        row.attempts = self.db.last_attempt(&self.exec_id, &step.name).unwrap_or(0);
        if let Some(entry) = &prepared.hit {
            let mut outputs = prepared.outputs.clone();
            outputs.extend(entry.outputs.clone());
            let edges = self
                .db
                .edges_of_step(&entry.execution, &entry.step)
                .unwrap_or_default()
                .into_iter()
                .map(|e| (e.direction, e.uri, e.digest))
                .collect::<Vec<_>>();
            let _ = self.db.put_edges(&self.exec_id, &step.name, &edges);
            return State {
                status: "cached".into(),
                reason: Some(prepared.why.clone()),
                report: entry.report.clone(),
                outputs,
            };
        }
        let _ = self.db.put_step(row);
        let first = row.attempts + 1;
        let last = row.attempts + step.retry.attempts as i64;
        let mut attempt = first;
        loop {
            row.attempts = attempt;
            row.status = "running".into();
            row.reason = Some(prepared.why.clone());
            let _ = self.db.put_step(row);
            let _ = self.db.start_attempt(&self.exec_id, &step.name, attempt);
            self.emit(Event::Started {
                step: step.name.clone(),
                kind: step.kind,
                attempt,
            });
            let result = self.attempt(step, &prepared, attempt, row).await;
            match result {
                Ok(done) => {
                    let _ = self.db.finish_attempt(
                        &self.exec_id,
                        &step.name,
                        attempt,
                        "succeeded",
                        None,
                    );
                    row.instances = done.instances as i64;
                    let run_id = row.run_id.clone().unwrap_or_default();
                    return match self.record(step, &prepared, done, &run_id).await {
                        Ok(state) => state,
                        Err(e) => fail(format!(
                            "the step ran, but its outputs could not be recorded: {e}"
                        )),
                    };
                }
                Err(e) => {
                    let _ = self.db.finish_attempt(
                        &self.exec_id,
                        &step.name,
                        attempt,
                        "failed",
                        Some(&e.message),
                    );
                    let retried = match e.class {
                        Class::Invalid => false,
                        Class::Program => step.retry.program,
                        Class::Infrastructure => true,
                    };
                    if attempt < last && retried {
                        // Doubling from `backoff_s`, at most an hour (many attempts would
                        // otherwise overflow to an infinite wait).
                        let wait = (step.retry.backoff_s * 2f64.powi((attempt - first) as i32))
                            .min(3600.0);
                        self.emit(Event::Line {
                            step: step.name.clone(),
                            text: format!(
                                "attempt {attempt} failed ({}); retrying in {wait:.1} s",
                                e.message
                            ),
                        });
                        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
                        attempt += 1;
                        continue;
                    }
                    let why = match (e.class, attempt - first + 1) {
                        (Class::Program, _) if !step.retry.program && last > attempt => {
                            " (a program's failure is not retried unless retry.on lists \"program\")"
                        }
                        _ => "",
                    };
                    return fail(format!("attempt {attempt}: {}{why}", e.message));
                }
            }
        }
    }

    async fn attempt(
        &self,
        step: &Step,
        p: &Prepared,
        attempt: i64,
        row: &mut StepRow,
    ) -> Result<Done, StepError> {
        let dir = self.attempt_dir(&step.name, attempt);
        let name = step.name.clone();
        let on_event = self.on_event;
        let echo: Box<dyn Fn(&str) + Send + Sync + '_> = Box::new(move |line: &str| {
            on_event(&Event::Line {
                step: name.clone(),
                text: line.to_string(),
            })
        });
        let log_path = dir.join("main.log");
        let log = StepLog::create(&log_path, echo).map_err(|e| StepError {
            class: Class::Infrastructure,
            message: format!("cannot write the step's log {}: {e}", log_path.display()),
        })?;
        let _ = self
            .db
            .put_log(&self.exec_id, &step.name, attempt, "main", &log_path);
        let run_id = uuid::Uuid::new_v4().to_string();
        row.run_id = Some(run_id.clone());
        let _ = self.db.put_step(row);
        let ol = self.ol_run(step, &run_id);
        let inputs = datasets(&p.inputs);
        if let Err(e) = self
            .sink
            .emit(&openlineage::event("START", &ol, &inputs, &[], None))
            .await
        {
            log.line(&e);
        }
        // A processing job's instances write their logs live under its output: recorded now so
        // that `shardline logs --follow` follows them; replaced by this attempt's copies at its end.
        let processing = step.kind == Kind::Process
            || (step.kind == Kind::Command && step.literal_str("contract") == Some("processing"));
        if processing && let Some(Value::Str(out)) = p.settings.0.get("out") {
            let instances = match p.settings.0.get("instances") {
                Some(Value::Int(n)) => (*n).max(1) as usize,
                _ => 1,
            };
            for (host, live) in run::live_instance_logs(out, instances) {
                let _ = self
                    .db
                    .put_log(&self.exec_id, &step.name, attempt, &host, &live);
            }
        }
        let cx = Context {
            launcher: self.launcher,
            registry: &self.opts.registry,
            log: &log,
            attempt_dir: &dir,
            ranks: self.opts.ranks.as_ref(),
        };
        let mut settings = p.settings.clone();
        if step.kind.field("force").is_some() && !settings.0.contains_key("force") {
            // The step owns its outputs: an earlier run of this step of this pipeline wrote them
            // (the store says so), so replacing them destroys nothing another command wrote.
            let owned = self
                .db
                .previous_entry(&self.def.name, &step.name)
                .ok()
                .flatten()
                .is_some_and(|e| {
                    self.output_locations(step, p)
                        .iter()
                        .any(|u| e.files.contains_key(u))
                });
            if p.damaged {
                log.line("its outputs were changed or deleted since they were recorded: the step redoes its work (force)");
                settings.0.insert("force".into(), Value::Bool(true));
            } else if owned {
                log.line("its output holds this step's earlier run: replaced when this run succeeds (force)");
                settings.0.insert("force".into(), Value::Bool(true));
            }
        }
        let result = run::run(step.kind, &settings, &cx).await;
        if let Ok(done) = &result {
            for (instance, path) in &done.instance_logs {
                let _ = self
                    .db
                    .put_log(&self.exec_id, &step.name, attempt, instance, path);
            }
        } else if let Ok(entries) = std::fs::read_dir(&dir) {
            // A failed process step's instances' logs were kept too (the stage wrote them).
            for entry in entries.flatten() {
                let path = entry.path();
                if let Some(stem) = path.file_stem().and_then(|s| s.to_str())
                    && stem.starts_with("algo-")
                {
                    let _ = self
                        .db
                        .put_log(&self.exec_id, &step.name, attempt, stem, &path);
                }
            }
        }
        // COMPLETE is emitted by `record`, once the outputs are digested.
        if let Err(e) = &result {
            let event = openlineage::event("FAIL", &ol, &inputs, &[], Some(&e.message));
            if let Err(why) = self.sink.emit(&event).await {
                log.line(&why);
            }
            log.line(&format!("error: {}", e.message));
        }
        result
    }

    /// The OpenLineage run of one step run.
    fn ol_run<'r>(&'r self, step: &Step, run_id: &'r str) -> openlineage::Run<'r> {
        openlineage::Run {
            run_id,
            job: format!("{}.{}", self.def.name, step.name),
            parent: (&self.exec_run_id, &self.def.name),
        }
    }

    /// The locations a step writes (its `out`-like settings).
    fn output_locations(&self, step: &Step, p: &Prepared) -> Vec<String> {
        step.kind
            .fields()
            .iter()
            .filter(|f| f.role == Role::Output)
            .filter_map(|f| match p.settings.0.get(f.name) {
                Some(Value::Str(uri)) => Some(uri.clone()),
                _ => None,
            })
            .collect()
    }

    /// Records a successful run: output digests, the cache entry, lineage edges, metrics.
    /// Its OpenLineage COMPLETE event carries the same output digests.
    async fn record(
        &self,
        step: &Step,
        p: &Prepared,
        done: Done,
        run_id: &str,
    ) -> Result<State, String> {
        let mut files = BTreeMap::new();
        let mut written = Vec::new();
        let mut locations = self.output_locations(step, p);
        locations.extend(done.outputs.values().cloned());
        for uri in locations {
            let tree = digest::location(&self.db, &uri).await?;
            written.push((crate::trace::normal(&uri), tree.digest()));
            files.insert(uri, tree.files);
        }
        let event = openlineage::event(
            "COMPLETE",
            &self.ol_run(step, run_id),
            &datasets(&p.inputs),
            &datasets(&written),
            None,
        );
        if let Err(e) = self.sink.emit(&event).await {
            self.emit(Event::Line {
                step: step.name.clone(),
                text: e,
            });
        }
        let edges: Vec<(String, String, String)> = p
            .inputs
            .iter()
            .map(|(u, d)| ("in".to_string(), u.clone(), d.clone()))
            .chain(written.into_iter().map(|(u, d)| ("out".to_string(), u, d)))
            .collect();
        let mut outputs = p.outputs.clone();
        outputs.extend(done.outputs.clone());
        let report_file = self
            .opts
            .state_dir
            .join("reports")
            .join(&self.exec_id)
            .join(format!("{}.json", step.name));
        if step.kind == Kind::Evaluate {
            outputs.insert("report".into(), report_file.display().to_string());
        }
        write_report(&report_file, &done.report)?;
        let entry = CacheEntry {
            execution: self.exec_id.clone(),
            step: step.name.clone(),
            components: p.components.clone(),
            report: done.report.clone(),
            outputs: done.outputs.clone(),
            files,
        };
        self.db
            .put_cache(&p.key, &self.def.name, &entry)
            .map_err(|e| e.to_string())?;
        self.db
            .put_edges(&self.exec_id, &step.name, &edges)
            .map_err(|e| e.to_string())?;
        self.db
            .put_metrics(&self.exec_id, &step.name, &done.metrics)
            .map_err(|e| e.to_string())?;
        Ok(State {
            status: "succeeded".into(),
            reason: Some(p.why.clone()),
            report: done.report,
            outputs,
        })
    }

    /// A condition as text, each side with its value: `accuracy 0.91 >= 0.8`.
    fn describe_condition(&self, step: &Step, states: &BTreeMap<String, State>) -> String {
        let show = |name: &str| {
            let Some(setting) = step.settings.get(name) else {
                return String::new();
            };
            let value = setting
                .template
                .resolve(&|r| self.lookup(states, r))
                .map(|v| v.to_string())
                .unwrap_or_else(|_| "?".into());
            match &setting.template {
                crate::value::Template::Ref(r) => format!("{r} ({value})"),
                _ => value,
            }
        };
        format!(
            "{} {} {}",
            show("left"),
            step.literal_str("op").unwrap_or("=="),
            show("right")
        )
    }

    /// Decides a condition step.
    fn condition(&self, step: &Step, states: &BTreeMap<String, State>) -> Result<bool, String> {
        let side = |name: &str| -> Result<Value, String> {
            let setting = step
                .settings
                .get(name)
                .ok_or_else(|| format!("`{name}` is missing"))?;
            setting.template.resolve(&|r| self.lookup(states, r))
        };
        let (left, right) = (side("left")?, side("right")?);
        let op = step.literal_str("op").unwrap_or("==");
        let ordering = match (left.as_f64(), right.as_f64()) {
            (Some(a), Some(b)) => a.partial_cmp(&b),
            _ => match (&left, &right) {
                (Value::Str(a), Value::Str(b)) => Some(a.cmp(b)),
                _ => None,
            },
        };
        use std::cmp::Ordering::*;
        Ok(match op {
            "==" => ordering == Some(Equal) || left == right,
            "!=" => !(ordering == Some(Equal) || left == right),
            _ => {
                let o = ordering.ok_or_else(|| {
                    format!(
                        "cannot compare {left} ({}) with {right} ({})",
                        left.ty().name(),
                        right.ty().name()
                    )
                })?;
                match op {
                    ">" => o == Greater,
                    ">=" => o != Less,
                    "<" => o == Less,
                    "<=" => o != Greater,
                    other => return Err(format!("unknown operator {other}")),
                }
            }
        })
    }

    /// Records a step that was decided without running (skipped, not run, a condition, a
    /// fail step).
    pub(crate) fn settle(
        &self,
        step: &Step,
        position: usize,
        state: State,
        states: &mut BTreeMap<String, State>,
    ) -> Result<(), Error> {
        let mut row = self.row(step, position, &state);
        row.report = (!state.report.is_null()).then(|| state.report.clone());
        row.finished = Some(unix_now());
        self.db.put_step(&row)?;
        self.emit(Event::Finished {
            step: step.name.clone(),
            status: state.status.clone(),
            reason: state.reason.clone(),
            seconds: 0.0,
        });
        states.insert(step.name.clone(), state);
        Ok(())
    }

    /// Records a step that had not ended when the execution was stopped: `stopped` (its attempt
    /// too) when it was running, `not-run` otherwise.
    pub(crate) fn record_stopped(
        &self,
        step: &Step,
        position: usize,
        was_running: bool,
        reason: &str,
    ) -> Result<(), Error> {
        let state = State {
            status: if was_running { "stopped" } else { "not-run" }.into(),
            reason: Some(reason.to_string()),
            ..State::pending()
        };
        let mut row = self.row(step, position, &state);
        row.attempts = self.db.last_attempt(&self.exec_id, &step.name).unwrap_or(0);
        if was_running && row.attempts > 0 {
            let _ = self.db.finish_attempt(
                &self.exec_id,
                &step.name,
                row.attempts,
                "stopped",
                Some("the execution was stopped"),
            );
        }
        self.db.put_step(&row)?;
        Ok(())
    }

    /// What can be done with a pending step given the states of the others.
    pub(crate) fn decide(&self, step: &Step, states: &BTreeMap<String, State>) -> Decision {
        let blocked = step.deps.iter().find_map(|d| {
            let s = &states[d];
            (s.done() && !s.ok()).then(|| (d.clone(), s.status.clone()))
        });
        let gated = step.gate.as_ref().and_then(|(cond, branch)| {
            let s = &states[cond];
            (s.ok() && s.report.get("outcome").and_then(|o| o.as_bool()) != Some(*branch))
                .then(|| cond.clone())
        });
        if let Some(cond) = gated {
            return Decision::Settle(State {
                status: "skipped".into(),
                reason: Some(format!("condition `{cond}` chose the other branch")),
                ..State::pending()
            });
        }
        if let Some((dep, status)) = blocked {
            let (status, reason) = match status.as_str() {
                "skipped" => ("skipped", format!("`{dep}` was skipped")),
                _ => ("not-run", format!("`{dep}` {status}")),
            };
            return Decision::Settle(State {
                status: status.into(),
                reason: Some(reason),
                ..State::pending()
            });
        }
        if !step.deps.iter().all(|d| states[d].ok()) {
            return Decision::Wait;
        }
        match step.kind {
            Kind::Condition => Decision::Settle(match self.condition(step, states) {
                Ok(outcome) => State {
                    status: "succeeded".into(),
                    reason: Some(format!(
                        "{} → {}",
                        self.describe_condition(step, states),
                        if outcome { "if_steps" } else { "else_steps" }
                    )),
                    report: json!({"outcome": outcome}),
                    outputs: BTreeMap::new(),
                },
                Err(e) => State {
                    status: "failed".into(),
                    reason: Some(e),
                    ..State::pending()
                },
            }),
            Kind::Fail => {
                let message = step
                    .settings
                    .get("message")
                    .map(|s| s.template.resolve(&|r| self.lookup(states, r)))
                    .unwrap_or(Ok(Value::Str("failed".into())))
                    .unwrap_or_else(Value::Str);
                Decision::Settle(State {
                    status: "failed".into(),
                    reason: Some(message.to_string()),
                    ..State::pending()
                })
            }
            _ => Decision::Run,
        }
    }

    /// The main loop.
    async fn go(&self, stop: Pin<&mut (dyn Future<Output = ()> + Send)>) -> Result<String, Error> {
        if let crate::slurm::Engine::Slurm(engine) = &self.opts.engine {
            return self.go_slurm(engine, stop).await;
        }
        let mut stop = stop;
        let def = self.def;
        let mut states: BTreeMap<String, State> = def
            .steps
            .iter()
            .map(|s| (s.name.clone(), State::pending()))
            .collect();
        for (i, step) in def.steps.iter().enumerate() {
            self.db.put_step(&self.row(step, i, &State::pending()))?;
        }
        let max = self.opts.max_parallel.unwrap_or(def.max_parallel).max(1);
        let mut running: FuturesUnordered<StepFuture<'_>> = FuturesUnordered::new();
        let mut failed: Option<String> = None;
        loop {
            // Settle what can be settled without running: skips, conditions, fail steps.
            let mut changed = true;
            while changed {
                changed = false;
                for (i, step) in def.steps.iter().enumerate() {
                    if states[&step.name].status != "pending" {
                        continue;
                    }
                    if let Decision::Settle(state) = self.decide(step, &states) {
                        if state.status == "failed" {
                            failed.get_or_insert(settled_failure(step, &state));
                        }
                        self.settle(step, i, state, &mut states)?;
                        changed = true;
                    }
                }
            }
            // Start what is ready.
            for (i, step) in def.steps.iter().enumerate() {
                if running.len() >= max {
                    break;
                }
                let state = &states[&step.name];
                if state.status != "pending" || !step.deps.iter().all(|d| states[d].ok()) {
                    continue;
                }
                if let Some(s) = states.get_mut(&step.name) {
                    s.status = "running".into();
                }
                let snapshot = states.clone();
                running.push(Box::pin(self.step(step, i, snapshot)));
            }
            if running.is_empty() {
                break;
            }
            tokio::select! {
                Some((name, state, _)) = running.next() => {
                    if state.status == "failed" {
                        failed.get_or_insert(format!("step `{name}` failed: {}", state.reason.clone().unwrap_or_default()));
                    }
                    states.insert(name, state);
                }
                () = &mut stop => {
                    drop(running);
                    for (i, step) in def.steps.iter().enumerate() {
                        let s = &states[&step.name];
                        if s.done() {
                            continue;
                        }
                        self.record_stopped(step, i, s.status == "running", "the execution was stopped")?;
                    }
                    self.db.set_execution_status(&self.exec_id, "stopped", Some("stopped by a signal; `shardline pipeline resume` continues it"))?;
                    return Ok("stopped".into());
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
}

/// Why an execution failed when a step decided without running failed (a fail step, a
/// condition that could not be decided).
pub(crate) fn settled_failure(step: &Step, state: &State) -> String {
    let reason = state.reason.clone().unwrap_or_default();
    match step.kind {
        Kind::Fail => format!("fail step `{}`: {reason}", step.name),
        _ => format!("step `{}` failed: {reason}", step.name),
    }
}

/// (URI, digest) pairs as OpenLineage datasets.
fn datasets(items: &[(String, String)]) -> Vec<(&str, &str)> {
    items
        .iter()
        .map(|(u, d)| (u.as_str(), d.as_str()))
        .collect()
}

fn write_report(path: &Path, report: &serde_json::Value) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(report).unwrap_or_default())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn short(key: &str) -> &str {
    let hex = key.strip_prefix("sha256:").unwrap_or(key);
    &hex[..hex.len().min(12)]
}

/// Everything a run needs besides the definition.
pub struct Runner<'a> {
    /// How to run.
    pub options: &'a Options,
    /// Starts processing instances.
    pub launcher: &'a dyn Launcher,
    /// Called with every event.
    pub on_event: &'a (dyn Fn(&Event) + Send + Sync),
}

impl Runner<'_> {
    /// Runs a definition as a new execution, until it ends or `stop` resolves (then its running
    /// steps are stopped and it is left resumable).
    pub async fn run(
        &self,
        def: &Definition,
        overrides: &[(String, String)],
        stop: impl Future<Output = ()> + Send,
    ) -> Result<Summary, Error> {
        let params = def.param_values(overrides).map_err(Error::Usage)?;
        self.share_store()?;
        let db = Arc::new(Db::open(&self.options.state_dir)?);
        let digest = definition_digest(&def.text);
        db.put_pipeline(&def.name, &digest, &def.text, &def.file)?;
        let execution = Execution {
            id: new_id(),
            pipeline: def.name.clone(),
            digest,
            file: def.file.clone(),
            params: Value::Table(params.clone()).to_json(),
            status: "running".into(),
            message: None,
            pid: std::process::id() as i64,
            started: unix_now(),
            finished: None,
            runs: 1,
        };
        db.put_execution(&execution)?;
        self.go(db, def, params, execution, BTreeMap::new(), stop)
            .await
    }

    /// Runs an earlier execution again: its failed, stopped and not-yet-run steps, and any step
    /// whose cache key no longer matches; `overrides` change its parameters.
    pub async fn resume(
        &self,
        id: &str,
        overrides: &[(String, String)],
        stop: impl Future<Output = ()> + Send,
    ) -> Result<Summary, Error> {
        self.share_store()?;
        let db = Arc::new(Db::open(&self.options.state_dir)?);
        let (def, mut execution) = load(&db, id)?;
        if execution.shown_status() == "running" {
            return Err(Error::Usage(format!(
                "execution {id} is still running (process {}); wait for it, or stop it first",
                execution.pid
            )));
        }
        if execution.status == "succeeded" && overrides.is_empty() {
            // Still resumable: steps whose inputs changed run again; the rest are kept.
        }
        let mut params: BTreeMap<String, Value> =
            serde_json::from_value::<BTreeMap<String, Value>>(execution.params.clone())
                .unwrap_or_default();
        for (k, v) in def.param_values(overrides).map_err(Error::Usage)? {
            if overrides.iter().any(|(o, _)| o == &k) || !params.contains_key(&k) {
                params.insert(k, v);
            }
        }
        let earlier = db.steps_by_name(id)?;
        execution.params = Value::Table(params.clone()).to_json();
        execution.status = "running".into();
        execution.message = None;
        execution.pid = std::process::id() as i64;
        execution.finished = None;
        execution.runs += 1;
        db.put_execution(&execution)?;
        self.go(db, &def, params, execution, earlier, stop).await
    }

    /// With a cluster engine, the store is opened from several machines: rollback journal.
    fn share_store(&self) -> Result<(), Error> {
        if matches!(self.options.engine, crate::slurm::Engine::Slurm(_)) {
            Db::share(&self.options.state_dir)?;
        }
        Ok(())
    }

    async fn go(
        &self,
        db: Arc<Db>,
        def: &Definition,
        params: BTreeMap<String, Value>,
        execution: Execution,
        earlier: BTreeMap<String, StepRow>,
        stop: impl Future<Output = ()> + Send,
    ) -> Result<Summary, Error> {
        let started = Instant::now();
        let run = Run {
            db: db.clone(),
            def,
            opts: self.options,
            params,
            launcher: self.launcher,
            on_event: self.on_event,
            exec_id: execution.id.clone(),
            exec_run_id: uuid::Uuid::new_v4().to_string(),
            earlier,
            sink: Sink::new(
                &self.options.state_dir,
                self.options.openlineage_url.clone(),
            ),
        };
        let stop = std::pin::pin!(stop);
        let outcome = run.go(stop).await;
        if let Err(e) = &outcome {
            let _ = db.set_execution_status(&execution.id, "failed", Some(&e.to_string()));
        }
        outcome?;
        let execution = db
            .execution(&execution.id)?
            .ok_or_else(|| Error::Usage("the execution vanished from the store".into()))?;
        Ok(Summary {
            steps: db.steps(&execution.id)?,
            execution,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// What running `def` (or resuming execution `resume`) would do, step by step, before
    /// anything runs.
    pub async fn plan(
        &self,
        def: &Definition,
        overrides: &[(String, String)],
        resume: Option<&str>,
    ) -> Result<Vec<PlanLine>, Error> {
        let db = Arc::new(Db::open(&self.options.state_dir)?);
        let mut params = def.param_values(overrides).map_err(Error::Usage)?;
        let mut earlier = BTreeMap::new();
        if let Some(id) = resume {
            let (_, execution) = load(&db, id)?;
            if let Ok(old) = serde_json::from_value::<BTreeMap<String, Value>>(execution.params) {
                for (k, v) in old {
                    if !overrides.iter().any(|(o, _)| o == &k) {
                        params.insert(k, v);
                    }
                }
            }
            earlier = db.steps_by_name(id)?;
        }
        let noop = |_: &Event| {};
        let run = Run {
            db,
            def,
            opts: self.options,
            params,
            launcher: self.launcher,
            on_event: &noop,
            exec_id: String::new(),
            exec_run_id: String::new(),
            earlier,
            sink: Sink::new(&self.options.state_dir, None),
        };
        let mut states: BTreeMap<String, State> = def
            .steps
            .iter()
            .map(|s| (s.name.clone(), State::pending()))
            .collect();
        let mut lines = Vec::new();
        for step in &def.steps {
            let waits: Vec<&String> = step.deps.iter().filter(|d| !states[*d].ok()).collect();
            let (action, why, state) = if !waits.is_empty() {
                let names: Vec<String> = waits.iter().map(|d| format!("`{d}`")).collect();
                let verb = match step.gate.as_ref() {
                    Some((cond, _)) if waits.contains(&cond) => "decide",
                    _ => "run",
                };
                (
                    verb.to_string(),
                    format!(
                        "after {} {}",
                        names.join(", "),
                        if verb == "decide" {
                            "is decided"
                        } else {
                            "runs"
                        }
                    ),
                    None,
                )
            } else if let Some((cond, branch)) = &step.gate
                && states[cond].report.get("outcome").and_then(|o| o.as_bool()) != Some(*branch)
            {
                (
                    "skip".into(),
                    format!("condition `{cond}` chooses the other branch"),
                    Some(State {
                        status: "skipped".into(),
                        ..State::pending()
                    }),
                )
            } else {
                match step.kind {
                    Kind::Condition => match run.condition(step, &states) {
                        Ok(outcome) => (
                            "decide".into(),
                            format!("{} is {outcome} now", run.describe_condition(step, &states)),
                            Some(State {
                                status: "succeeded".into(),
                                report: json!({"outcome": outcome}),
                                ..State::pending()
                            }),
                        ),
                        Err(e) => ("decide".into(), e, None),
                    },
                    Kind::Fail => (
                        "fail".into(),
                        "fails the execution when reached".into(),
                        None,
                    ),
                    _ => match run.prepare(step, &states).await {
                        Ok(p) => match p.hit {
                            Some(entry) => {
                                let mut outputs = p.outputs.clone();
                                outputs.extend(entry.outputs.clone());
                                (
                                    "cached".into(),
                                    p.why,
                                    Some(State {
                                        status: "cached".into(),
                                        reason: None,
                                        report: entry.report,
                                        outputs,
                                    }),
                                )
                            }
                            None => ("run".into(), p.why, None),
                        },
                        Err(e) => (
                            "run".into(),
                            format!("cannot tell yet: {}", e.message),
                            None,
                        ),
                    },
                }
            };
            if let Some(state) = state {
                states.insert(step.name.clone(), state);
            }
            lines.push(PlanLine {
                step: step.name.clone(),
                kind: step.kind.name().into(),
                action,
                why,
            });
        }
        Ok(lines)
    }
}

/// An execution and the definition it ran, from the store.
pub fn load(db: &Db, id: &str) -> Result<(Definition, Execution), Error> {
    let execution = db.execution(id)?.ok_or_else(|| {
        Error::Usage(format!(
            "no execution {id} in {}; `shardline pipeline list` shows them",
            db.path().display()
        ))
    })?;
    let (text, file) = db
        .pipeline_text(&execution.pipeline, &execution.digest)?
        .ok_or_else(|| {
            Error::Usage(format!(
                "the definition of execution {id} is not in the store"
            ))
        })?;
    let def = crate::def::parse(&file, &text)?;
    Ok((def, execution))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_of_defaults_is_a_miss_that_says_so() {
        let before = json!({"kind": "train", "version": VERSION, "defaults": run::defaults_digest(Kind::Train), "settings": {}, "inputs": {}});
        let mut after = before.clone();
        after["defaults"] = json!("sha256:another-build");
        assert_ne!(key_of(&before), key_of(&after));
        assert!(explain(&before, &after).contains("defaults changed"));
        // Stable within a build, and distinct per kind.
        assert_eq!(
            run::defaults_digest(Kind::Train),
            run::defaults_digest(Kind::Train)
        );
        assert_ne!(
            run::defaults_digest(Kind::Train),
            run::defaults_digest(Kind::Process)
        );
    }
}
