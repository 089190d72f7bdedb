//! Executions as lines for a person and as JSON for tools: the summary at the end of a run, the
//! step table, `pipeline show`. The CLI prints them; nothing here prints.

use std::collections::BTreeMap;

use serde_json::json;

use crate::db::{Db, DbError, Execution, StepRow};
use crate::exec::Summary;

fn seconds(row: &StepRow) -> String {
    match (row.started, row.finished) {
        (Some(a), Some(b)) if b >= a => format!("{:.1}s", b - a),
        _ => "-".into(),
    }
}

/// The table of an execution's steps: status, time, attempts, instances, cache hit or why not,
/// and key metrics.
pub fn step_table(db: &Db, steps: &[StepRow]) -> Vec<String> {
    let mut lines = vec![format!(
        "  {:<14} {:<10} {:<10} {:>7} {:>8} {:>9}  {}",
        "STEP", "KIND", "STATUS", "TIME", "ATTEMPTS", "INSTANCES", "CACHE / WHY"
    )];
    for row in steps {
        let metrics = db
            .metrics(&row.execution, &row.step)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| format!("{k} {v:.4}"))
            .collect::<Vec<_>>();
        let mut why = row.reason.clone().unwrap_or_default();
        if !metrics.is_empty() {
            why = format!("{why} [{}]", metrics.join(", "));
        }
        lines.push(format!(
            "  {:<14} {:<10} {:<10} {:>7} {:>8} {:>9}  {}",
            row.step,
            row.kind,
            row.status,
            seconds(row),
            row.attempts,
            row.instances,
            why
        ));
    }
    lines
}

/// The end of a run: its outcome, the step table, and why each step that did not run did not.
pub fn summary(db: &Db, summary: &Summary) -> Vec<String> {
    let e = &summary.execution;
    let mut lines = vec![format!(
        "execution {} of pipeline {}: {} in {:.1} s",
        e.id, e.pipeline, e.status, summary.seconds
    )];
    lines.extend(step_table(db, &summary.steps));
    let not_run: Vec<&StepRow> = summary
        .steps
        .iter()
        .filter(|s| matches!(s.status.as_str(), "not-run" | "skipped" | "stopped"))
        .collect();
    if !not_run.is_empty() {
        lines.push("  did not run:".into());
        for s in not_run {
            lines.push(format!(
                "    {} — {}",
                s.step,
                s.reason.as_deref().unwrap_or(&s.status)
            ));
        }
    }
    lines
}

/// `pipeline show`: the execution, its parameters, its steps and every failed attempt.
pub fn show(db: &Db, e: &Execution) -> Result<Vec<String>, DbError> {
    let steps = db.steps(&e.id)?;
    let mut lines = vec![
        format!(
            "execution {} of pipeline {} ({}): {}{}",
            e.id,
            e.pipeline,
            e.file,
            e.shown_status(),
            e.message
                .as_deref()
                .map(|m| format!(" — {m}"))
                .unwrap_or_default()
        ),
        format!("  parameters {}", e.params),
    ];
    lines.extend(step_table(db, &steps));
    for s in &steps {
        for (n, status, error) in db
            .attempts(&e.id, &s.step)?
            .iter()
            .filter(|(_, st, _)| st != "succeeded")
        {
            lines.push(format!(
                "  {} attempt {n} {status}: {}",
                s.step,
                error.as_deref().unwrap_or("")
            ));
        }
    }
    lines.push(format!(
        "  logs: shardline logs {} STEP [--instance algo-N]; lineage: shardline lineage PATH",
        e.id
    ));
    Ok(lines)
}

/// `pipeline show --json`: the execution and its steps, each with its attempts and metrics.
pub fn show_json(db: &Db, e: &Execution) -> Result<serde_json::Value, DbError> {
    let mut steps = Vec::new();
    for s in db.steps(&e.id)? {
        let mut v = serde_json::to_value(&s).unwrap_or_default();
        let attempts: Vec<serde_json::Value> = db
            .attempts(&e.id, &s.step)?
            .into_iter()
            .map(|(n, status, error)| json!({"attempt": n, "status": status, "error": error}))
            .collect();
        v["attempt_errors"] = json!(attempts);
        let metrics: BTreeMap<String, f64> = db.metrics(&e.id, &s.step)?.into_iter().collect();
        v["metrics"] = json!(metrics);
        steps.push(v);
    }
    let mut execution = serde_json::to_value(e).unwrap_or_default();
    execution["status"] = json!(e.shown_status());
    Ok(json!({"execution": execution, "steps": steps}))
}

/// Which log `shardline logs` shows: a step's instance (`main` unless named) at an attempt (the
/// last unless named).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChoice {
    /// The log file.
    pub path: std::path::PathBuf,
    /// The execution the step's cache hit came from, when the step was cached (its logs are
    /// that run's: a cached step did no work here).
    pub cached_from: Option<String>,
}

/// Why there is no such log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The store failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// No log matches; what to ask for instead.
    #[error("{0}")]
    Missing(String),
}

/// The log of `step`'s `instance` at `attempt` in `execution`, following a cached step to the
/// execution its result came from.
pub fn step_log(
    db: &Db,
    execution: &str,
    step: &str,
    instance: Option<&str>,
    attempt: Option<i64>,
) -> Result<LogChoice, LogError> {
    let mut logs = db.logs(execution, step)?;
    let rows = db.steps(execution)?;
    let row = rows.iter().find(|s| s.step == step);
    let mut cached_from = None;
    if !logs.iter().any(|(_, i, _)| i == "main")
        && let Some(row) = row
        && row.status == "cached"
        && let Some(key) = &row.cache_key
        && let Some(entry) = db.cache_entries(key)?.into_iter().next()
    {
        logs = db.logs(&entry.execution, step)?;
        cached_from = Some(entry.execution);
    }
    if logs.is_empty() {
        let steps: Vec<String> = rows.iter().map(|s| s.step.clone()).collect();
        return Err(LogError::Missing(if steps.iter().any(|s| s == step) {
            format!("step {step} of {execution} has no log yet (it has not started)")
        } else {
            format!(
                "execution {execution} has no step {step:?}; its steps are {}",
                steps.join(", ")
            )
        }));
    }
    let instance = instance.unwrap_or("main");
    let attempt = attempt.unwrap_or_else(|| {
        logs.iter()
            .filter(|(_, i, _)| i == instance)
            .map(|(a, _, _)| *a)
            .max()
            .unwrap_or(1)
    });
    match logs.iter().find(|(a, i, _)| *a == attempt && i == instance) {
        Some((_, _, path)) => Ok(LogChoice {
            path: path.clone(),
            cached_from,
        }),
        None => Err(LogError::Missing(format!(
            "no log of {instance} for attempt {attempt} of step {step}; there are: {}",
            logs.iter()
                .map(|(a, i, _)| format!("attempt {a} {i}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
