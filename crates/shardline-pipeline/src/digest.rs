//! Content digests of locations (a folder, a prefix, one file, the objects a manifest names),
//! memoised in the store by (URI, size, modification time or ETag): an unchanged object is not
//! read again; a changed stamp means it is.

use std::collections::{BTreeMap, BTreeSet};

use shardline_lineage::{Digest, Hasher};
use shardline_store::{Object, Store};

use crate::db::Db;

/// The files of a location and their digests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tree {
    /// The location's URI.
    pub uri: String,
    /// Relative key (`""` for a single file) → `sha256:...`.
    pub files: BTreeMap<String, String>,
}

impl Tree {
    /// One digest of the whole: of every (key, digest) pair in key order.
    pub fn digest(&self) -> String {
        if let Some(d) = self.files.get("")
            && self.files.len() == 1
        {
            return d.clone();
        }
        let mut h = Hasher::new();
        for (key, digest) in &self.files {
            h.update(key.as_bytes());
            h.update(b"\t");
            h.update(digest.as_bytes());
            h.update(b"\n");
        }
        h.finish().as_str().to_string()
    }
}

/// Keys that are the stores' own bookkeeping (staging folders of commits in progress), not
/// content.
fn is_internal(key: &str) -> bool {
    key.split('/')
        .any(|part| part == ".shardline" || part.starts_with(".tmp"))
}

fn stamp(o: &Object) -> String {
    match &o.etag {
        Some(etag) => format!("etag:{etag}"),
        None => format!("mtime:{}", o.last_modified_us),
    }
}

/// Digests a location. A folder or prefix: every object below it; a single object: itself. A
/// location that does not exist is an empty tree.
pub async fn location(db: &Db, uri: &str) -> Result<Tree, String> {
    let store = Store::open(uri).map_err(|e| e.to_string())?;
    let mut objects = store.list_all("").await.unwrap_or_default();
    objects.retain(|o| !is_internal(&o.key));
    if objects.is_empty() {
        // Maybe one object: find it in its parent's level.
        if let Some((parent, name)) = split_parent(uri)
            && let Ok(parent_store) = Store::open(&parent)
            && let Ok(level) = parent_store.list_level("").await
            && let Some(o) = level.objects.into_iter().find(|o| o.key == name)
        {
            let one = Object {
                key: String::new(),
                ..o
            };
            return digest_objects(db, &parent_store, uri, vec![(name, one)]).await;
        }
        return Ok(Tree {
            uri: store.uri(),
            files: BTreeMap::new(),
        });
    }
    let named: Vec<(String, Object)> = objects.into_iter().map(|o| (o.key.clone(), o)).collect();
    digest_objects(db, &store, &store.uri(), named).await
}

/// Digests only the named keys below a prefix (the objects a manifest lists). A key that is
/// missing is an error naming it.
pub async fn named(db: &Db, prefix: &str, keys: &BTreeSet<String>) -> Result<Tree, String> {
    let store = Store::open(prefix).map_err(|e| e.to_string())?;
    let objects = store.list_all("").await.map_err(|e| e.to_string())?;
    let mut found: Vec<(String, Object)> = objects
        .into_iter()
        .filter(|o| keys.contains(&o.key))
        .map(|o| (o.key.clone(), o))
        .collect();
    if found.len() < keys.len() {
        let have: BTreeSet<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
        let missing: Vec<&String> = keys.iter().filter(|k| !have.contains(k.as_str())).collect();
        return Err(format!(
            "{} object(s) named by the manifest are missing under {prefix}, e.g. {}",
            missing.len(),
            missing[0]
        ));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    digest_objects(db, &store, &store.uri(), found).await
}

fn split_parent(uri: &str) -> Option<(String, String)> {
    let trimmed = uri.trim_end_matches('/');
    let (parent, name) = trimmed.rsplit_once('/')?;
    if name.is_empty() {
        return None;
    }
    let parent = if parent.is_empty() { "/" } else { parent };
    Some((parent.to_string(), name.to_string()))
}

/// Digests objects of `store` (given as (key to read, listed object with the key to record)).
async fn digest_objects(
    db: &Db,
    store: &Store,
    uri: &str,
    objects: Vec<(String, Object)>,
) -> Result<Tree, String> {
    let keys: Vec<(String, u64, String)> = objects
        .iter()
        .map(|(read, o)| (store.uri_of(read), o.size, stamp(o)))
        .collect();
    let memo = db.memo_get(&keys).map_err(|e| e.to_string())?;
    let mut files = BTreeMap::new();
    let mut fresh = Vec::new();
    for ((read, o), (memo, key)) in objects.into_iter().zip(memo.into_iter().zip(keys)) {
        let digest = match memo {
            Some(d) => d,
            None => {
                let bytes = store.get(&read).await.map_err(|e| e.to_string())?;
                let d = Digest::of(&bytes).as_str().to_string();
                fresh.push((key.0, key.1, key.2, d.clone()));
                d
            }
        };
        files.insert(o.key, digest);
    }
    db.memo_put(&fresh).map_err(|e| e.to_string())?;
    Ok(Tree {
        uri: uri.to_string(),
        files,
    })
}

/// The digest of a SageMaker manifest and of every object it names.
pub async fn manifest(db: &Db, uri: &str) -> Result<Tree, String> {
    // The manifest is read whole to be parsed, so its own digest comes from those bytes.
    let (parent, name) = split_parent(uri).ok_or_else(|| format!("{uri} is not a file"))?;
    let store = Store::open(&parent).map_err(|e| e.to_string())?;
    // A plain manifest, or the index of one in parts (whose digest covers the parts').
    let (parsed, bytes) = shardline_contract::manifest_stream::read_manifest(&store, &name)
        .await
        .map_err(|e| match e {
            shardline_contract::Error::Store(shardline_store::Error::NotFound { .. }) => {
                format!("{uri} does not exist")
            }
            other => other.to_string(),
        })?;
    let keys: BTreeSet<String> = parsed.keys.into_iter().collect();
    let objects = named(db, &parsed.prefix, &keys).await?;
    let mut files = BTreeMap::new();
    files.insert(String::new(), Digest::of(&bytes).as_str().to_string());
    for (k, d) in objects.files {
        files.insert(format!("{}{k}", parsed.prefix), d);
    }
    Ok(Tree {
        uri: uri.to_string(),
        files,
    })
}

/// Whether a location holds a SageMaker manifest (by name, as the stages decide).
pub fn is_manifest(uri: &str) -> bool {
    uri.ends_with(".manifest") || uri.ends_with(".jsonl")
}
