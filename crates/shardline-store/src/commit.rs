//! Atomic publication of a set of objects under one output prefix.
//!
//! Object stores make single objects atomic, not groups of them. A step that writes several files
//! (manifests and their lineage record, say) stages every file under
//! `.shardline/staging/<id>/`, then writes one small commit record `.shardline/commit.json`
//! naming them, then moves them into place in the order given (the lineage record last) and
//! deletes the record. The record is the point of no return:
//!
//! - a crash before it is written leaves only staged files, which the next run deletes;
//! - a crash after it is written is rolled forward by the next writer or reader that calls
//!   [`recover`], which finishes the moves.
//!
//! So a reader that calls [`recover`] first never sees a mix of old and new files.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{Error, Result, Store};

/// The folder under an output prefix where Shardline keeps its bookkeeping.
pub const CONTROL_DIR: &str = ".shardline";

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    id: String,
    files: Vec<String>,
}

/// A set of files being staged for atomic publication under a store's prefix.
#[derive(Debug)]
pub struct Commit<'a> {
    store: &'a Store,
    control: String,
    id: String,
    files: Vec<String>,
}

/// The bookkeeping folder of a commit scope: writers that publish independently under the same
/// prefix at the same time (the instances of a job) each use their own scope. A commit tidies
/// only its own scope's folders: pruning another scope's empty folders would race with that
/// writer creating them.
fn control(scope: Option<&str>) -> String {
    match scope {
        None => CONTROL_DIR.to_string(),
        Some(scope) => format!("{CONTROL_DIR}/scopes/{scope}"),
    }
}

fn staging_key(control: &str, id: &str, name: &str) -> String {
    format!("{control}/staging/{id}/{name}")
}

fn record_key(control: &str) -> String {
    format!("{control}/commit.json")
}

/// A fresh identifier for a commit: unique per process and moment, so that two writers never
/// share a staging folder.
fn commit_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let seed = format!("{nanos}-{}", std::process::id());
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(seed.as_bytes()))
}

/// A file of a commit being streamed; see [`Commit::stage_writer`].
#[derive(Debug)]
pub struct StagedWriter {
    name: String,
    writer: crate::ObjectWriter,
}

impl StagedWriter {
    /// Appends `bytes`.
    pub async fn write(&mut self, bytes: Bytes) -> Result<()> {
        self.writer.write(bytes).await
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.writer.written()
    }
}

impl<'a> Commit<'a> {
    /// Starts a commit under `store`'s prefix.
    pub fn begin(store: &'a Store) -> Commit<'a> {
        Commit::begin_scoped(store, None)
    }

    /// Starts a commit in its own scope, independent of other writers' scopes.
    pub fn begin_scoped(store: &'a Store, scope: Option<&str>) -> Commit<'a> {
        Commit {
            store,
            control: control(scope),
            id: commit_id(),
            files: Vec::new(),
        }
    }

    /// Stages one file, to be published under `name` (relative to the store's prefix). If it
    /// cannot be (a full disk), what this commit staged is deleted before the error returns:
    /// a failed commit leaves nothing behind.
    pub async fn stage(&mut self, name: &str, bytes: Bytes) -> Result<()> {
        let staged = self
            .store
            .put(&staging_key(&self.control, &self.id, name), bytes)
            .await;
        if let Err(e) = staged {
            // The staging error is the one to report; discarding is best effort.
            let _ = self.discard().await;
            return Err(e);
        }
        self.files.push(name.to_string());
        Ok(())
    }

    /// Deletes what this commit staged (finished files and unfinished uploads), as far as the
    /// store lets it; the first failure to delete is returned after the rest was tried.
    async fn discard(&self) -> Result<()> {
        let staging = format!("{}/staging/{}", self.control, self.id);
        let deleted = self.store.delete_prefix(&staging).await;
        self.store.remove_interrupted_uploads(&staging);
        self.store.remove_empty_dirs(&self.control);
        deleted
    }

    /// Starts streaming one file, to be published under `name`: write to it, then hand it to
    /// [`Commit::finish_staged`]. Until then it is not part of the commit, and a crash leaves
    /// only an unfinished upload in the staging folder, which [`recover`] clears.
    pub fn stage_writer(&self, name: &str) -> StagedWriter {
        StagedWriter {
            name: name.to_string(),
            writer: self
                .store
                .writer(&staging_key(&self.control, &self.id, name)),
        }
    }

    /// Finishes a file started with [`Commit::stage_writer`] and adds it to the commit; if it
    /// cannot be finished, what this commit staged is deleted, as [`Commit::stage`] does.
    pub async fn finish_staged(&mut self, staged: StagedWriter) -> Result<()> {
        if let Err(e) = staged.writer.finish().await {
            // The upload's error is the one to report; discarding is best effort.
            let _ = self.discard().await;
            return Err(e);
        }
        self.files.push(staged.name);
        Ok(())
    }

    /// Abandons the commit, deleting what was staged.
    pub async fn abort(self) -> Result<()> {
        self.discard().await
    }

    /// Publishes the staged files in the order they were staged: stage the file that marks the
    /// output complete (its lineage record) last.
    pub async fn publish(self) -> Result<()> {
        let record = Record {
            id: self.id,
            files: self.files,
        };
        let key = record_key(&self.control);
        let bytes = serde_json::to_vec(&record).map_err(|e| Error::BadCommitRecord {
            url: self.store.uri_of(&key),
            reason: e.to_string(),
        })?;
        self.store.put(&key, Bytes::from(bytes)).await?;
        roll_forward(self.store, &self.control, &record).await
    }
}

async fn roll_forward(store: &Store, control: &str, record: &Record) -> Result<()> {
    for name in &record.files {
        let staged = staging_key(control, &record.id, name);
        // A staged file that is gone was already moved before an earlier crash.
        if store.exists(&staged).await? {
            store.rename(&staged, name).await?;
        }
    }
    store.delete(&record_key(control)).await?;
    store
        .delete_prefix(&format!("{control}/staging/{}", record.id))
        .await?;
    store.remove_empty_dirs(control);
    Ok(())
}

/// Finishes a commit that a crashed writer left under `store`'s prefix, and deletes staged files
/// that no commit record names. Returns whether a commit was rolled forward.
pub async fn recover(store: &Store) -> Result<bool> {
    recover_scoped(store, None).await
}

/// [`recover`] for one scope; other scopes are left alone.
pub async fn recover_scoped(store: &Store, scope: Option<&str>) -> Result<bool> {
    let control = control(scope);
    let key = record_key(&control);
    let rolled = match store.get_opt(&key).await? {
        Some(bytes) => {
            let record: Record =
                serde_json::from_slice(&bytes).map_err(|e| Error::BadCommitRecord {
                    url: store.uri_of(&key),
                    reason: e.to_string(),
                })?;
            tracing::warn!(url = %store.uri(), id = %record.id, "finishing an interrupted commit");
            roll_forward(store, &control, &record).await?;
            true
        }
        None => false,
    };
    store.delete_prefix(&format!("{control}/staging")).await?;
    store.remove_interrupted_uploads(&format!("{control}/staging"));
    store.remove_empty_dirs(&control);
    Ok(rolled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publish_moves_files_into_place() {
        let store = Store::open("memory://commit-publish/out").expect("open");
        let mut commit = Commit::begin(&store);
        commit
            .stage("a.txt", Bytes::from_static(b"a"))
            .await
            .expect("stage");
        commit
            .stage("lineage.json", Bytes::from_static(b"{}"))
            .await
            .expect("stage");
        assert!(!store.exists("a.txt").await.expect("exists"));
        commit.publish().await.expect("publish");
        assert_eq!(
            store.get("a.txt").await.expect("get"),
            Bytes::from_static(b"a")
        );
        assert!(store.exists("lineage.json").await.expect("exists"));
        assert!(store.list_all(CONTROL_DIR).await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn streamed_files_publish_whole_and_interrupted_ones_leave_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}/out", dir.path().display());
        let store = Store::open(&url).expect("open");
        // Several parts' worth (parts are 1 MiB on a local disk), written in uneven pieces.
        let payload: Vec<u8> = (0..3_500_000u32).map(|i| (i % 251) as u8).collect();
        let mut commit = Commit::begin_scoped(&store, Some("algo-1"));
        let mut staged = commit.stage_writer("train/algo-1-000000.tar");
        for piece in payload.chunks(150_000) {
            staged
                .write(Bytes::copy_from_slice(piece))
                .await
                .expect("write");
        }
        assert_eq!(staged.written(), payload.len() as u64);
        assert!(
            !store
                .exists("train/algo-1-000000.tar")
                .await
                .expect("exists")
        );
        commit.finish_staged(staged).await.expect("finish");
        commit.publish().await.expect("publish");
        assert_eq!(
            store.get("train/algo-1-000000.tar").await.expect("get"),
            Bytes::from(payload.clone())
        );

        // A writer given up mid-file (dropped, never finished) publishes nothing.
        let commit = Commit::begin_scoped(&store, Some("algo-2"));
        let mut staged = commit.stage_writer("train/algo-2-000000.tar");
        staged
            .write(Bytes::from(payload[..2_500_000].to_vec()))
            .await
            .expect("write");
        drop(staged);
        drop(commit);
        assert!(
            !store
                .exists("train/algo-2-000000.tar")
                .await
                .expect("exists")
        );
        // A killed writer leaves its upload's temporary file (`name#<n>`), which listings do not
        // show; recovery deletes it with the rest of the staging folder.
        let staging = dir
            .path()
            .join("out/.shardline/scopes/algo-2/staging/0123456789abcdef/train");
        std::fs::create_dir_all(&staging).expect("mkdir");
        std::fs::write(staging.join("algo-2-000000.tar#17"), &payload[..1000]).expect("write");
        let leftovers = || {
            walk(&dir.path().join("out/.shardline"))
                .into_iter()
                .filter(|p| p.contains("algo-2"))
                .collect::<Vec<_>>()
        };
        assert_eq!(leftovers().len(), 1);
        assert!(
            !recover_scoped(&store, Some("algo-2"))
                .await
                .expect("recover")
        );
        assert_eq!(leftovers(), Vec::<String>::new());
        assert!(!dir.path().join("out/.shardline/scopes/algo-2").exists());
    }

    fn walk(dir: &std::path::Path) -> Vec<String> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path.display().to_string());
            }
        }
        files
    }

    #[tokio::test]
    async fn recover_rolls_an_interrupted_commit_forward() {
        let store = Store::open("memory://commit-recover/out").expect("open");
        // Simulate a writer that wrote the record, moved one file and crashed.
        store
            .put(
                &staging_key(CONTROL_DIR, "x1", "b.txt"),
                Bytes::from_static(b"b"),
            )
            .await
            .expect("put");
        store
            .put("a.txt", Bytes::from_static(b"a"))
            .await
            .expect("put");
        let record = Record {
            id: "x1".into(),
            files: vec!["a.txt".into(), "b.txt".into()],
        };
        let bytes = serde_json::to_vec(&record).expect("json");
        store
            .put(&record_key(CONTROL_DIR), Bytes::from(bytes))
            .await
            .expect("put");
        assert!(recover(&store).await.expect("recover"));
        assert_eq!(
            store.get("b.txt").await.expect("get"),
            Bytes::from_static(b"b")
        );
        assert!(store.list_all(CONTROL_DIR).await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn scopes_recover_independently() {
        let store = Store::open("memory://commit-scopes/out").expect("open");
        let mut a = Commit::begin_scoped(&store, Some("algo-1"));
        a.stage("a.txt", Bytes::from_static(b"a"))
            .await
            .expect("stage");
        // Another writer's recovery must not touch algo-1's staging.
        assert!(
            !recover_scoped(&store, Some("algo-2"))
                .await
                .expect("recover")
        );
        assert!(!recover(&store).await.expect("recover"));
        a.publish().await.expect("publish");
        assert_eq!(
            store.get("a.txt").await.expect("get"),
            Bytes::from_static(b"a")
        );
    }

    #[tokio::test]
    async fn recover_discards_uncommitted_staging() {
        let store = Store::open("memory://commit-discard/out").expect("open");
        store
            .put(
                &staging_key(CONTROL_DIR, "x2", "a.txt"),
                Bytes::from_static(b"a"),
            )
            .await
            .expect("put");
        assert!(!recover(&store).await.expect("recover"));
        assert!(!store.exists("a.txt").await.expect("exists"));
        assert!(store.list_all("").await.expect("list").is_empty());
    }
}
