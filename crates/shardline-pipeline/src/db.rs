//! The execution store: one SQLite database (`state.db`) in the state directory.
//!
//! It holds pipelines, executions, steps, attempts, instances' logs, cache entries with their
//! key components, artifacts with content digests, metrics, lineage edges (artifact → step run
//! → artifact) and the memo of content digests. Several processes may use one state directory
//! at once: the database is in WAL mode, every write is one short transaction, and a writer
//! waits for another (busy timeout) rather than failing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[error("pipeline state {path}: {message}")]
pub struct DbError {
    /// The database file.
    pub path: String,
    /// What failed.
    pub message: String,
}

/// `Result` with the store's error.
pub type Result<T> = std::result::Result<T, DbError>;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS pipelines (
    name TEXT NOT NULL, digest TEXT NOT NULL, definition TEXT NOT NULL, file TEXT NOT NULL,
    created TEXT NOT NULL, PRIMARY KEY (name, digest));
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, digest TEXT NOT NULL, file TEXT NOT NULL,
    params TEXT NOT NULL, status TEXT NOT NULL, message TEXT, pid INTEGER NOT NULL,
    started REAL NOT NULL, finished REAL, runs INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS steps (
    execution TEXT NOT NULL, step TEXT NOT NULL, kind TEXT NOT NULL, position INTEGER NOT NULL,
    status TEXT NOT NULL, reason TEXT, cache TEXT, cache_key TEXT, components TEXT,
    settings TEXT, report TEXT, outputs TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    instances INTEGER NOT NULL DEFAULT 0, run_id TEXT, started REAL, finished REAL,
    PRIMARY KEY (execution, step));
CREATE TABLE IF NOT EXISTS attempts (
    execution TEXT NOT NULL, step TEXT NOT NULL, attempt INTEGER NOT NULL, status TEXT NOT NULL,
    error TEXT, started REAL NOT NULL, finished REAL, PRIMARY KEY (execution, step, attempt));
CREATE TABLE IF NOT EXISTS logs (
    execution TEXT NOT NULL, step TEXT NOT NULL, attempt INTEGER NOT NULL, instance TEXT NOT NULL,
    path TEXT NOT NULL, PRIMARY KEY (execution, step, attempt, instance));
CREATE TABLE IF NOT EXISTS cache (
    key TEXT NOT NULL, execution TEXT NOT NULL, step TEXT NOT NULL, pipeline TEXT NOT NULL,
    components TEXT NOT NULL, report TEXT NOT NULL, outputs TEXT NOT NULL, files TEXT NOT NULL,
    created REAL NOT NULL, PRIMARY KEY (key, execution, step));
CREATE INDEX IF NOT EXISTS cache_by_step ON cache (pipeline, step, created);
CREATE TABLE IF NOT EXISTS artifacts (
    uri TEXT NOT NULL, digest TEXT NOT NULL, first_seen REAL NOT NULL, PRIMARY KEY (uri, digest));
CREATE INDEX IF NOT EXISTS artifacts_by_digest ON artifacts (digest);
CREATE TABLE IF NOT EXISTS edges (
    execution TEXT NOT NULL, step TEXT NOT NULL, direction TEXT NOT NULL, uri TEXT NOT NULL,
    digest TEXT NOT NULL, PRIMARY KEY (execution, step, direction, uri));
CREATE INDEX IF NOT EXISTS edges_by_uri ON edges (uri);
CREATE INDEX IF NOT EXISTS edges_by_digest ON edges (digest);
CREATE TABLE IF NOT EXISTS metrics (
    execution TEXT NOT NULL, step TEXT NOT NULL, name TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (execution, step, name));
CREATE TABLE IF NOT EXISTS digests (
    uri TEXT PRIMARY KEY, size INTEGER NOT NULL, stamp TEXT NOT NULL, digest TEXT NOT NULL);
"#;

/// An execution as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Execution {
    /// Its id.
    pub id: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// The digest of the definition it ran.
    pub digest: String,
    /// The definition file.
    pub file: String,
    /// The parameters' values (JSON object).
    pub params: serde_json::Value,
    /// running, succeeded, failed, stopped.
    pub status: String,
    /// Why it ended as it did.
    pub message: Option<String>,
    /// The process that runs (or ran) it.
    pub pid: i64,
    /// Unix seconds.
    pub started: f64,
    /// Unix seconds.
    pub finished: Option<f64>,
    /// How many times it was run (1 + resumes).
    pub runs: i64,
}

impl Execution {
    /// The status as shown: a `running` execution whose process is gone was interrupted.
    pub fn shown_status(&self) -> &str {
        if self.status == "running" && !process_alive(self.pid) {
            "interrupted"
        } else {
            &self.status
        }
    }
}

/// Whether a process of this machine is alive.
#[allow(unsafe_code)]
pub fn process_alive(pid: i64) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// One step of an execution as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepRow {
    /// The execution.
    pub execution: String,
    /// The step's name.
    pub step: String,
    /// Its kind.
    pub kind: String,
    /// Its place in the definition's order.
    pub position: i64,
    /// pending, running, succeeded, cached, failed, skipped, not-run, stopped.
    pub status: String,
    /// Why it has that status (the error, the skip, the miss).
    pub reason: Option<String>,
    /// hit, miss, off.
    pub cache: Option<String>,
    /// The cache key.
    pub cache_key: Option<String>,
    /// The key's components.
    pub components: Option<serde_json::Value>,
    /// The resolved settings.
    pub settings: Option<serde_json::Value>,
    /// Its JSON report.
    pub report: Option<serde_json::Value>,
    /// Its outputs by name (URIs).
    pub outputs: Option<serde_json::Value>,
    /// Attempts made.
    pub attempts: i64,
    /// Instances it ran.
    pub instances: i64,
    /// The OpenLineage run id of its latest run.
    pub run_id: Option<String>,
    /// Unix seconds.
    pub started: Option<f64>,
    /// Unix seconds.
    pub finished: Option<f64>,
}

/// A cache entry: what a successful step run with this key produced.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    /// The execution that produced it.
    pub execution: String,
    /// The step.
    pub step: String,
    /// The key's components.
    pub components: serde_json::Value,
    /// The report.
    pub report: serde_json::Value,
    /// The outputs by name.
    pub outputs: BTreeMap<String, String>,
    /// Every output file: location → (relative key → digest).
    pub files: BTreeMap<String, BTreeMap<String, String>>,
}

/// An edge of the lineage graph: a step run read or wrote an artifact.
#[derive(Debug, Clone, Serialize)]
pub struct Edge {
    /// The execution.
    pub execution: String,
    /// The step.
    pub step: String,
    /// `in` or `out`.
    pub direction: String,
    /// The artifact's URI.
    pub uri: String,
    /// Its content digest.
    pub digest: String,
}

/// The store.
pub struct Db {
    conn: Mutex<Connection>,
    path: PathBuf,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn json(text: Option<String>) -> Option<serde_json::Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

/// The file whose presence in a state directory makes its store use SQLite's rollback journal
/// instead of WAL: WAL's shared memory only works for processes on one machine, and the Slurm
/// engine's jobs open the store from every node (over a shared file system).
pub const SHARED_MARKER: &str = "state.db.shared";

impl Db {
    /// Marks `state_dir`'s store as opened from several machines (see [`SHARED_MARKER`]); from
    /// then on every open uses the rollback journal.
    pub fn share(state_dir: &Path) -> Result<()> {
        let marker = state_dir.join(SHARED_MARKER);
        std::fs::create_dir_all(state_dir)
            .and_then(|()| {
                std::fs::write(
                    &marker,
                    "Jobs on several machines open this store (shardline pipeline run --engine slurm): it uses SQLite's rollback journal, not WAL.\n",
                )
            })
            .map_err(|e| DbError {
                path: marker.display().to_string(),
                message: format!("cannot mark the store as shared: {e}"),
            })
    }

    /// Opens (or creates) the store in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Db> {
        let path = state_dir.join("state.db");
        let fail = |message: String| DbError {
            path: path.display().to_string(),
            message,
        };
        std::fs::create_dir_all(state_dir).map_err(|e| {
            fail(format!(
                "cannot create the state directory: {e}; give a writable --state"
            ))
        })?;
        let conn = Connection::open(&path).map_err(|e| fail(e.to_string()))?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(|e| fail(e.to_string()))?;
        // Switching a new database to WAL and creating its tables take locks that SQLite does
        // not wait for (it answers "database is locked" at once when two processes open a new
        // state directory together): try again for as long as the busy timeout would wait.
        let journal = if state_dir.join(SHARED_MARKER).exists() {
            "DELETE"
        } else {
            "WAL"
        };
        let started = std::time::Instant::now();
        loop {
            let init = conn
                .pragma_update(None, "journal_mode", journal)
                .and_then(|()| conn.pragma_update(None, "synchronous", "NORMAL"))
                .and_then(|()| conn.execute_batch(SCHEMA));
            match init {
                Ok(()) => break,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if matches!(
                        e.code,
                        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                    ) && started.elapsed() < Duration::from_secs(30) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(fail(format!("cannot create the tables: {e}"))),
            }
        }
        Ok(Db {
            conn: Mutex::new(conn),
            path,
        })
    }

    /// Opens the store in `state_dir` for reading only (the dashboard): SQLite refuses every
    /// write through it, and nothing is created, so a missing store is an error.
    pub fn open_read_only(state_dir: &Path) -> Result<Db> {
        let path = state_dir.join("state.db");
        let fail = |message: String| DbError {
            path: path.display().to_string(),
            message,
        };
        if !path.is_file() {
            return Err(fail(
                "there is no execution store here; run a pipeline first or give its --state".into(),
            ));
        }
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
            | rusqlite::OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(&path, flags).map_err(|e| fail(e.to_string()))?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(|e| fail(e.to_string()))?;
        Ok(Db {
            conn: Mutex::new(conn),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut conn).map_err(|e| DbError {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Records a pipeline definition (once per content).
    pub fn put_pipeline(&self, name: &str, digest: &str, text: &str, file: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO pipelines VALUES (?1, ?2, ?3, ?4, ?5)",
                params![name, digest, text, file, chrono_now()],
            )
            .map(|_| ())
        })
    }

    /// The text of a recorded definition.
    pub fn pipeline_text(&self, name: &str, digest: &str) -> Result<Option<(String, String)>> {
        self.with(|c| {
            c.query_row(
                "SELECT definition, file FROM pipelines WHERE name = ?1 AND digest = ?2",
                params![name, digest],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })
    }

    /// Records a new execution.
    pub fn put_execution(&self, e: &Execution) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO executions VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    e.id,
                    e.pipeline,
                    e.digest,
                    e.file,
                    e.params.to_string(),
                    e.status,
                    e.message,
                    e.pid,
                    e.started,
                    e.finished,
                    e.runs
                ],
            )
            .map(|_| ())
        })
    }

    /// Sets an execution's status (and its end, unless it is running).
    pub fn set_execution_status(
        &self,
        id: &str,
        status: &str,
        message: Option<&str>,
    ) -> Result<()> {
        let finished = (status != "running").then(now);
        self.with(|c| {
            c.execute(
                "UPDATE executions SET status = ?2, message = ?3, finished = ?4 WHERE id = ?1",
                params![id, status, message, finished],
            )
            .map(|_| ())
        })
    }

    fn execution_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<Execution> {
        Ok(Execution {
            id: r.get(0)?,
            pipeline: r.get(1)?,
            digest: r.get(2)?,
            file: r.get(3)?,
            params: json(r.get(4)?).unwrap_or_default(),
            status: r.get(5)?,
            message: r.get(6)?,
            pid: r.get(7)?,
            started: r.get(8)?,
            finished: r.get(9)?,
            runs: r.get(10)?,
        })
    }

    /// One execution.
    pub fn execution(&self, id: &str) -> Result<Option<Execution>> {
        self.with(|c| {
            c.query_row(
                "SELECT * FROM executions WHERE id = ?1",
                params![id],
                Self::execution_from,
            )
            .optional()
        })
    }

    /// Every execution, newest first.
    pub fn executions(&self) -> Result<Vec<Execution>> {
        self.with(|c| {
            let mut q = c.prepare("SELECT * FROM executions ORDER BY started DESC, id DESC")?;
            q.query_map([], Self::execution_from)?.collect()
        })
    }

    /// Writes a step's row.
    pub fn put_step(&self, s: &StepRow) -> Result<()> {
        let text = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string());
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO steps VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                params![
                    s.execution,
                    s.step,
                    s.kind,
                    s.position,
                    s.status,
                    s.reason,
                    s.cache,
                    s.cache_key,
                    text(&s.components),
                    text(&s.settings),
                    text(&s.report),
                    text(&s.outputs),
                    s.attempts,
                    s.instances,
                    s.run_id,
                    s.started,
                    s.finished
                ],
            )
            .map(|_| ())
        })
    }

    /// The steps of an execution by name.
    pub fn steps_by_name(&self, execution: &str) -> Result<BTreeMap<String, StepRow>> {
        Ok(self
            .steps(execution)?
            .into_iter()
            .map(|r| (r.step.clone(), r))
            .collect())
    }

    /// The steps of an execution, in the definition's order.
    pub fn steps(&self, execution: &str) -> Result<Vec<StepRow>> {
        self.with(|c| {
            let mut q = c.prepare("SELECT * FROM steps WHERE execution = ?1 ORDER BY position")?;
            q.query_map(params![execution], |r| {
                Ok(StepRow {
                    execution: r.get(0)?,
                    step: r.get(1)?,
                    kind: r.get(2)?,
                    position: r.get(3)?,
                    status: r.get(4)?,
                    reason: r.get(5)?,
                    cache: r.get(6)?,
                    cache_key: r.get(7)?,
                    components: json(r.get(8)?),
                    settings: json(r.get(9)?),
                    report: json(r.get(10)?),
                    outputs: json(r.get(11)?),
                    attempts: r.get(12)?,
                    instances: r.get(13)?,
                    run_id: r.get(14)?,
                    started: r.get(15)?,
                    finished: r.get(16)?,
                })
            })?
            .collect()
        })
    }

    /// Records the start of an attempt.
    pub fn start_attempt(&self, execution: &str, step: &str, attempt: i64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO attempts VALUES (?1, ?2, ?3, 'running', NULL, ?4, NULL)",
                params![execution, step, attempt, now()],
            )
            .map(|_| ())
        })
    }

    /// Records the end of an attempt.
    pub fn finish_attempt(
        &self,
        execution: &str,
        step: &str,
        attempt: i64,
        status: &str,
        error: Option<&str>,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE attempts SET status = ?4, error = ?5, finished = ?6 WHERE execution = ?1 AND step = ?2 AND attempt = ?3",
                params![execution, step, attempt, status, error, now()],
            )
            .map(|_| ())
        })
    }

    /// The attempts of a step: (attempt, status, error).
    pub fn attempts(
        &self,
        execution: &str,
        step: &str,
    ) -> Result<Vec<(i64, String, Option<String>)>> {
        self.with(|c| {
            let mut q = c.prepare(
                "SELECT attempt, status, error FROM attempts WHERE execution = ?1 AND step = ?2 ORDER BY attempt",
            )?;
            q.query_map(params![execution, step], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
    }

    /// The highest attempt number recorded for a step (0 if none).
    pub fn last_attempt(&self, execution: &str, step: &str) -> Result<i64> {
        self.with(|c| {
            c.query_row(
                "SELECT COALESCE(MAX(attempt), 0) FROM attempts WHERE execution = ?1 AND step = ?2",
                params![execution, step],
                |r| r.get(0),
            )
        })
    }

    /// Records where one instance's log of one attempt is.
    pub fn put_log(
        &self,
        execution: &str,
        step: &str,
        attempt: i64,
        instance: &str,
        path: &Path,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO logs VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    execution,
                    step,
                    attempt,
                    instance,
                    path.display().to_string()
                ],
            )
            .map(|_| ())
        })
    }

    /// The logs of a step: (attempt, instance, path), by attempt then instance.
    pub fn logs(&self, execution: &str, step: &str) -> Result<Vec<(i64, String, PathBuf)>> {
        self.with(|c| {
            let mut q = c.prepare(
                "SELECT attempt, instance, path FROM logs WHERE execution = ?1 AND step = ?2 ORDER BY attempt, instance",
            )?;
            q.query_map(params![execution, step], |r| {
                Ok((r.get(0)?, r.get(1)?, PathBuf::from(r.get::<_, String>(2)?)))
            })?
            .collect()
        })
    }

    /// Records a successful step run under its key.
    pub fn put_cache(&self, key: &str, pipeline: &str, e: &CacheEntry) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO cache VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    key,
                    e.execution,
                    e.step,
                    pipeline,
                    e.components.to_string(),
                    e.report.to_string(),
                    serde_json::to_string(&e.outputs).unwrap_or_default(),
                    serde_json::to_string(&e.files).unwrap_or_default(),
                    now()
                ],
            )
            .map(|_| ())
        })
    }

    fn entry_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<CacheEntry> {
        let text = |i: usize| -> rusqlite::Result<String> { r.get(i) };
        Ok(CacheEntry {
            execution: r.get(0)?,
            step: r.get(1)?,
            components: serde_json::from_str(&text(2)?).unwrap_or_default(),
            report: serde_json::from_str(&text(3)?).unwrap_or_default(),
            outputs: serde_json::from_str(&text(4)?).unwrap_or_default(),
            files: serde_json::from_str(&text(5)?).unwrap_or_default(),
        })
    }

    /// The newest entries under a key.
    pub fn cache_entries(&self, key: &str) -> Result<Vec<CacheEntry>> {
        self.with(|c| {
            let mut q = c.prepare(
                "SELECT execution, step, components, report, outputs, files FROM cache WHERE key = ?1 ORDER BY created DESC LIMIT 5",
            )?;
            q.query_map(params![key], Self::entry_from)?.collect()
        })
    }

    /// The newest entry of the same step of the same pipeline, whatever its key: what a miss is
    /// explained against.
    pub fn previous_entry(&self, pipeline: &str, step: &str) -> Result<Option<CacheEntry>> {
        self.with(|c| {
            c.query_row(
                "SELECT execution, step, components, report, outputs, files FROM cache WHERE pipeline = ?1 AND step = ?2 ORDER BY created DESC LIMIT 1",
                params![pipeline, step],
                Self::entry_from,
            )
            .optional()
        })
    }

    /// Records that a step run read (`in`) or wrote (`out`) an artifact.
    pub fn put_edges(
        &self,
        execution: &str,
        step: &str,
        edges: &[(String, String, String)],
    ) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                "DELETE FROM edges WHERE execution = ?1 AND step = ?2",
                params![execution, step],
            )?;
            for (direction, uri, digest) in edges {
                tx.execute(
                    "INSERT OR REPLACE INTO edges VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![execution, step, direction, uri, digest],
                )?;
                tx.execute(
                    "INSERT OR IGNORE INTO artifacts VALUES (?1, ?2, ?3)",
                    params![uri, digest, now()],
                )?;
            }
            tx.commit()
        })
    }

    /// The edges that touch an artifact, by URI or digest.
    pub fn edges_of(&self, artifact: &str) -> Result<Vec<Edge>> {
        self.with(|c| {
            let mut q = c.prepare(
                "SELECT execution, step, direction, uri, digest FROM edges WHERE uri = ?1 OR digest = ?1 ORDER BY execution, step",
            )?;
            q.query_map(params![artifact], edge_from)?.collect()
        })
    }

    /// Edges of `direction` whose artifact is a folder holding `uri` (the output folder a file
    /// came from), the most specific first.
    pub fn edges_containing(&self, uri: &str, direction: &str) -> Result<Vec<Edge>> {
        self.with(|c| {
            let mut q = c.prepare(
                "SELECT execution, step, direction, uri, digest FROM edges WHERE direction = ?2 AND ?1 LIKE uri || '/%' ORDER BY length(uri) DESC, execution",
            )?;
            q.query_map(params![uri, direction], edge_from)?.collect()
        })
    }

    /// Edges of `direction` whose artifact is inside the folder `uri`.
    pub fn edges_containing_inside(&self, uri: &str, direction: &str) -> Result<Vec<Edge>> {
        self.with(|c| {
            let mut q = c.prepare(
                "SELECT execution, step, direction, uri, digest FROM edges WHERE direction = ?2 AND uri LIKE ?1 || '/%' ORDER BY execution, step",
            )?;
            q.query_map(params![uri, direction], edge_from)?.collect()
        })
    }

    /// The edges of one step run.
    pub fn edges_of_step(&self, execution: &str, step: &str) -> Result<Vec<Edge>> {
        self.with(|c| {
            let mut q = c.prepare(
                "SELECT execution, step, direction, uri, digest FROM edges WHERE execution = ?1 AND step = ?2 ORDER BY direction, uri",
            )?;
            q.query_map(params![execution, step], edge_from)?.collect()
        })
    }

    /// Records a step's numeric metrics.
    pub fn put_metrics(
        &self,
        execution: &str,
        step: &str,
        metrics: &[(String, f64)],
    ) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for (name, value) in metrics {
                tx.execute(
                    "INSERT OR REPLACE INTO metrics VALUES (?1, ?2, ?3, ?4)",
                    params![execution, step, name, value],
                )?;
            }
            tx.commit()
        })
    }

    /// A step's metrics.
    pub fn metrics(&self, execution: &str, step: &str) -> Result<Vec<(String, f64)>> {
        self.with(|c| {
            let mut q = c.prepare(
                "SELECT name, value FROM metrics WHERE execution = ?1 AND step = ?2 ORDER BY name",
            )?;
            q.query_map(params![execution, step], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
    }

    /// The memoised digests of objects, by (URI, size, stamp).
    pub fn memo_get(&self, keys: &[(String, u64, String)]) -> Result<Vec<Option<String>>> {
        self.with(|c| {
            let mut q =
                c.prepare_cached("SELECT size, stamp, digest FROM digests WHERE uri = ?1")?;
            keys.iter()
                .map(|(uri, size, stamp)| {
                    let row: Option<(i64, String, String)> = q
                        .query_row(params![uri], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()?;
                    Ok(row.and_then(|(s, st, d)| (s as u64 == *size && &st == stamp).then_some(d)))
                })
                .collect()
        })
    }

    /// Memoises digests: (URI, size, stamp, digest).
    pub fn memo_put(&self, rows: &[(String, u64, String, String)]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut q =
                    tx.prepare_cached("INSERT OR REPLACE INTO digests VALUES (?1, ?2, ?3, ?4)")?;
                for (uri, size, stamp, digest) in rows {
                    q.execute(params![uri, *size as i64, stamp, digest])?;
                }
            }
            tx.commit()
        })
    }
}

fn edge_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<Edge> {
    Ok(Edge {
        execution: r.get(0)?,
        step: r.get(1)?,
        direction: r.get(2)?,
        uri: r.get(3)?,
        digest: r.get(4)?,
    })
}

/// The time as RFC 3339, UTC.
pub fn chrono_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Unix seconds now.
pub fn unix_now() -> f64 {
    now()
}
