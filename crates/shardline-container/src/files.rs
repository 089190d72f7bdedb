//! The container layout on disk: folders emptied for a run, config files, inputs downloaded from
//! a store, outputs collected and packed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use shardline_lineage::FileRecord;
use shardline_store::Store;

use crate::Error;

/// Empties (or creates) a directory.
pub fn fresh_dir(path: &Path) -> Result<(), Error> {
    if path.exists() {
        std::fs::remove_dir_all(path).map_err(|e| Error::io(path, e))?;
    }
    std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))
}

/// Writes a config file as pretty JSON, creating its folder.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let text = serde_json::to_vec_pretty(value).map_err(|e| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })?;
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Every file below `dir`, recursively, sorted.
pub fn files_below(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).map_err(|e| Error::io(&current, e))? {
            let path = entry.map_err(|e| Error::io(&current, e))?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.is_file() {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Every file below `dir` with its `/`-separated name relative to `dir` and its bytes, sorted.
pub fn collect(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let mut contents = Vec::new();
    for path in files_below(dir)? {
        let name = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        contents.push((name, bytes));
    }
    Ok(contents)
}

/// Packs a directory as a `.tar.gz` (deterministic: sorted names, zero times); `None` when it
/// holds no file.
pub fn pack(dir: &Path) -> Result<Option<Vec<u8>>, Error> {
    let contents = collect(dir)?;
    if contents.is_empty() {
        return Ok(None);
    }
    Ok(Some(shardline_contract::model::pack(&contents)?))
}

/// Writes `bytes` at `dir/key` (an object of the input at `source`), refusing a key that would
/// escape `dir`.
pub fn place(dir: &Path, key: &str, bytes: &[u8], source: &str) -> Result<PathBuf, Error> {
    if key.split('/').any(|part| part == ".." || part.is_empty()) {
        return Err(Error::BadInput {
            stage: "script input",
            input: source.to_string(),
            reason: format!("the object {key:?} would escape its input folder; rename it"),
        });
    }
    let path = dir.join(key);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// Downloads every object of `store` below `dir` (Shardline's own records left out); returns
/// each file's record by key.
pub async fn materialise(store: &Store, dir: &Path) -> Result<BTreeMap<String, FileRecord>, Error> {
    let mut objects = store.list_all("").await?;
    objects.retain(|o| !o.key.starts_with(".shardline/"));
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    futures::stream::iter(objects)
        .map(|object| async move {
            let bytes = store.get(&object.key).await?;
            place(dir, &object.key, &bytes, &store.uri())?;
            Ok::<_, Error>((object.key, FileRecord::of(&bytes)))
        })
        .buffer_unordered(16)
        .try_collect()
        .await
}

/// The first KiB of a program's failure file (`output/failure` for training, `output/message`
/// for processing), trimmed; empty when there is none.
pub fn failure_message(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| {
            String::from_utf8_lossy(&b[..b.len().min(1024)])
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}
