//! Shardline's storage layer.
//!
//! Every stage reads and writes through a [`Store`]: an `object_store` backend (local files,
//! memory or an S3-compatible server) plus the prefix the user named. Keys handed to and returned
//! by a [`Store`] are relative to that prefix, so the stages never see bucket names or absolute
//! paths. Multi-object outputs are published with [`commit::Commit`] so that a crash never leaves a
//! half-written output that looks complete.
//!
//! This crate knows nothing about datasets, images or manifests.

pub mod commit;
mod error;

mod local;
mod location;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

pub use error::{Error, Result};
pub use location::{Location, Scheme};
pub use object_store::ObjectMeta;

/// An object store together with the prefix that a user named: the unit every stage reads from
/// and writes to.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    location: Location,
    root: Path,
    /// The backend is object_store's own local file system, unwrapped, so listings may take
    /// the direct walk in [`local`].
    plain_local: bool,
}

/// A streamed write of one object, from [`Store::writer`].
pub struct ObjectWriter {
    inner: object_store::buffered::BufWriter,
    uri: String,
    written: u64,
}

impl std::fmt::Debug for ObjectWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectWriter")
            .field("uri", &self.uri)
            .field("written", &self.written)
            .finish()
    }
}

impl ObjectWriter {
    /// Appends `bytes` (uploaded once a part is full; no copy is made).
    pub async fn write(&mut self, bytes: Bytes) -> Result<()> {
        self.written += bytes.len() as u64;
        self.inner
            .put(bytes)
            .await
            .map_err(|e| Error::from_object_store(self.uri.clone(), e))
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Uploads what is left and makes the object visible at its key.
    pub async fn finish(mut self) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        self.inner.shutdown().await.map_err(|e| Error::Io {
            path: self.uri.clone(),
            source: e,
        })
    }

    /// Gives up the write, deleting the parts uploaded so far.
    pub async fn abort(mut self) -> Result<()> {
        self.inner
            .abort()
            .await
            .map_err(|e| Error::from_object_store(self.uri.clone(), e))
    }
}

/// One object found by a listing, with its key relative to the listed store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The key relative to the store's prefix, `/`-separated.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// The store's entity tag, when it gives one.
    pub etag: Option<String>,
    /// Last modification time in microseconds since the Unix epoch.
    pub last_modified_us: i64,
}

/// The result of a listing with a `/` delimiter: the first-level "directories" and the objects
/// that sit directly at the listed level.
#[derive(Debug, Clone, Default)]
pub struct Level {
    /// Names of the common prefixes below the listed level, without slashes, sorted.
    pub prefixes: Vec<String>,
    /// Objects directly at the listed level.
    pub objects: Vec<Object>,
}

/// How retries are done against remote stores: exponential backoff on transient errors
/// (connection failures, 5xx, throttling), never on 4xx answers such as bad credentials.
/// object_store's backoff is decorrelated jitter (each wait drawn between `init_backoff` and
/// `base` times the last one), so base 2 from 0.1 s grows by only about 0.05 s a retry: five, then
/// ten retries gave up within 1.5 s of a server being down, shorter than a restart. From 0.2 s
/// with base 3 the wait grows about 1.5x a retry (to at most 5 s): ten retries ride out about
/// 25 s of outage, within the 60 s budget.
pub fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            base: 3.0,
        },
        max_retries: 10,
        retry_timeout: Duration::from_secs(60),
    }
}

fn memory_stores() -> &'static Mutex<HashMap<String, Arc<InMemory>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

impl Store {
    /// Opens the store a URL names. S3 endpoints, regions and credentials come from the standard
    /// AWS environment variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP`). Opening does no I/O.
    pub fn open(url: &str) -> Result<Store> {
        Store::open_with(url, &[])
    }

    /// Opens a store like [`Store::open`], with settings that take precedence over the
    /// environment, given under the same names (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...).
    pub fn open_with(url: &str, settings: &[(&str, String)]) -> Result<Store> {
        let location = Location::parse(url)?;
        let inner: Arc<dyn ObjectStore> = match location.scheme {
            Scheme::Local => Arc::new(LocalFileSystem::new()),
            Scheme::Memory => {
                let mut stores = memory_stores().lock().unwrap_or_else(|e| e.into_inner());
                stores.entry(location.bucket.clone()).or_default().clone()
            }
            Scheme::S3 => {
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(&location.bucket)
                    .with_retry(retry_config());
                let has_region = |name: &str| {
                    std::env::var_os(name).is_some() || settings.iter().any(|(k, _)| *k == name)
                };
                if !has_region("AWS_REGION") && !has_region("AWS_DEFAULT_REGION") {
                    builder = builder.with_region("us-east-1");
                }
                for (name, value) in settings {
                    let key =
                        name.to_ascii_lowercase()
                            .parse()
                            .map_err(|source| Error::Config {
                                url: location.uri(),
                                source,
                            })?;
                    builder = builder.with_config(key, value);
                }
                let s3 = builder.build().map_err(|source| Error::Config {
                    url: location.uri(),
                    source,
                })?;
                Arc::new(s3)
            }
        };
        let plain_local = location.scheme == Scheme::Local;
        Ok(Store {
            plain_local,
            ..Store::with_backend(inner, location)
        })
    }

    /// Wraps an existing backend (for example a throttled or instrumented one) at a location.
    pub fn with_backend(inner: Arc<dyn ObjectStore>, location: Location) -> Store {
        let root = object_path(&location.prefix);
        Store {
            inner,
            location,
            root,
            plain_local: false,
        }
    }

    /// The parsed location of this store.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The canonical URI of the store's prefix, ending in `/`.
    pub fn uri(&self) -> String {
        self.location.uri()
    }

    /// The full URI of a key below this store.
    pub fn uri_of(&self, key: &str) -> String {
        format!("{}{}", self.uri(), key)
    }

    /// The backend, for wrapping it (throttling, metrics) with [`Store::with_backend`].
    pub fn backend(&self) -> Arc<dyn ObjectStore> {
        self.inner.clone()
    }

    /// A store rooted at `relative` below this one, sharing the same backend.
    pub fn child(&self, relative: &str) -> Store {
        Store {
            plain_local: self.plain_local,
            ..Store::with_backend(self.inner.clone(), self.location.join(relative))
        }
    }

    fn path(&self, key: &str) -> Path {
        let key = key.trim_matches('/');
        if self.location.prefix.is_empty() {
            object_path(key)
        } else if key.is_empty() {
            self.root.clone()
        } else {
            object_path(&format!("{}/{}", self.location.prefix, key))
        }
    }

    fn relative(&self, path: &Path) -> String {
        let full = path.as_ref();
        if self.location.prefix.is_empty() {
            return full.to_string();
        }
        full.strip_prefix(self.location.prefix.as_str())
            .map(|rest| rest.trim_start_matches('/').to_string())
            .unwrap_or_else(|| full.to_string())
    }

    fn object(&self, meta: ObjectMeta) -> Object {
        Object {
            key: self.relative(&meta.location),
            size: meta.size,
            etag: meta.e_tag,
            last_modified_us: meta.last_modified.timestamp_micros(),
        }
    }

    fn fail(&self, key: &str, source: object_store::Error) -> Error {
        Error::from_object_store(self.uri_of(key), source)
    }

    /// Lists one level below `relative` with a `/` delimiter.
    pub async fn list_level(&self, relative: &str) -> Result<Level> {
        let prefix = self.path(relative);
        let listing = self
            .inner
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| self.fail(relative, e))?;
        let mut prefixes: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        prefixes.sort();
        let objects = listing
            .objects
            .into_iter()
            .map(|meta| self.object(meta))
            .collect();
        Ok(Level { prefixes, objects })
    }

    /// Lists every object below `relative`, recursively, as a stream (object_store's listing on
    /// every backend).
    fn list(&self, relative: &str) -> BoxStream<'_, Result<Object>> {
        let prefix = self.path(relative);
        let relative = relative.to_string();
        self.inner
            .list(Some(&prefix))
            .map(move |item| match item {
                Ok(meta) => Ok(self.object(meta)),
                Err(e) => Err(self.fail(&relative, e)),
            })
            .boxed()
    }

    /// Lists every object below `relative`, recursively, in no particular order. Local
    /// directories are walked on a blocking thread by [`local::list_dir`]; other stores page
    /// through object_store's listing.
    pub async fn list_all(&self, relative: &str) -> Result<Vec<Object>> {
        if let (Some(base), Some(dir)) = (
            self.location.local_path(),
            self.location.join(relative).local_path(),
        ) && self.plain_local
        {
            return tokio::task::spawn_blocking(move || local::list_dir(&base, &dir))
                .await
                .map_err(|e| Error::Io {
                    path: self.uri_of(relative),
                    source: std::io::Error::other(e),
                })?;
        }
        self.list(relative).try_collect().await
    }

    /// Reads a whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let result = self
            .inner
            .get(&self.path(key))
            .await
            .map_err(|e| self.fail(key, e))?;
        result.bytes().await.map_err(|e| self.fail(key, e))
    }

    /// Reads an object as a stream of chunks, for objects too large to hold (a manifest of a
    /// hundred million keys): memory holds one chunk at a time.
    pub async fn get_stream(&self, key: &str) -> Result<BoxStream<'static, Result<Bytes>>> {
        // A local file is read a MiB at a time (object_store's local stream hands over 8 KiB
        // per blocking-thread call, a third of a manifest pass's time); any error opening it
        // is left to object_store, which names it as every other call does.
        if self.plain_local
            && let Some(path) = self.location.join(key).local_path()
            && let Ok(file) = tokio::fs::File::open(&path).await
        {
            let uri = self.uri_of(key);
            return Ok(futures::stream::try_unfold(file, move |mut file| {
                let uri = uri.clone();
                async move {
                    use tokio::io::AsyncReadExt as _;
                    let mut chunk = bytes::BytesMut::with_capacity(1 << 20);
                    while chunk.len() < chunk.capacity() {
                        let n = file
                            .read_buf(&mut chunk)
                            .await
                            .map_err(|source| Error::Io {
                                path: uri.clone(),
                                source,
                            })?;
                        if n == 0 {
                            break;
                        }
                    }
                    Ok((!chunk.is_empty()).then(|| (chunk.freeze(), file)))
                }
            })
            .boxed());
        }
        let result = self
            .inner
            .get(&self.path(key))
            .await
            .map_err(|e| self.fail(key, e))?;
        let uri = self.uri_of(key);
        Ok(result
            .into_stream()
            .map_err(move |e| Error::from_object_store(uri.clone(), e))
            .boxed())
    }

    /// Reads a whole object, or `None` when it does not exist.
    pub async fn get_opt(&self, key: &str) -> Result<Option<Bytes>> {
        match self.get(key).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a whole object. The write is atomic: readers see the old object or the new one,
    /// never a part (a temporary file and a rename locally, a single PUT on S3).
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.inner
            .put(&self.path(key), PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| self.fail(key, e))?;
        Ok(())
    }

    /// Writes an object only if none exists at `key`; `Ok(false)` when one does. Two writers
    /// racing for the same key: exactly one gets `Ok(true)` (an exclusive create on local files,
    /// a conditional PUT on S3, which the server must support).
    pub async fn put_new(&self, key: &str, bytes: Bytes) -> Result<bool> {
        let options = object_store::PutOptions::from(object_store::PutMode::Create);
        match self
            .inner
            .put_opts(&self.path(key), PutPayload::from_bytes(bytes), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.fail(key, e)),
        }
    }

    /// Whether an object exists.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self.inner.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.fail(key, e)),
        }
    }

    /// Deletes an object; deleting a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.inner.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail(key, e)),
        }
    }

    /// Moves an object to a new key, replacing what was there. Atomic on local files (a rename);
    /// a copy then a delete on S3.
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.inner
            .rename(&self.path(from), &self.path(to))
            .await
            .map_err(|e| self.fail(from, e))
    }

    /// Streams an object to `key`: the bytes handed to [`ObjectWriter::write`] are uploaded in
    /// parts as they come (a multipart upload on S3, a temporary file on local disk), so memory
    /// stays bounded whatever the object's size, and the object appears at `key` only when
    /// [`ObjectWriter::finish`] succeeds. Dropped or failed before that, nothing is at `key`:
    /// the parts are an unfinished upload (see [`Store::remove_interrupted_uploads`]).
    pub fn writer(&self, key: &str) -> ObjectWriter {
        // S3 requires parts of at least 5 MiB; on a local disk small parts keep the bytes in
        // the CPU's cache between producing and writing them.
        let (part, concurrency) = match self.location.scheme {
            Scheme::S3 => (8 << 20, 2),
            Scheme::Local | Scheme::Memory => (1 << 20, 4),
        };
        ObjectWriter {
            inner: object_store::buffered::BufWriter::with_capacity(
                self.inner.clone(),
                self.path(key),
                part,
            )
            .with_max_concurrency(concurrency),
            uri: self.uri_of(key),
            written: 0,
        }
    }

    /// Deletes what interrupted streamed writes left below `relative` on a local disk (the
    /// temporary `name#<n>` files of an [`ObjectWriter`] that never finished, which listings do
    /// not show). On S3 an interrupted multipart upload holds no visible object; the bucket's
    /// lifecycle rule for incomplete uploads removes its parts.
    pub fn remove_interrupted_uploads(&self, relative: &str) {
        fn sweep(dir: &std::path::Path) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    sweep(&path);
                } else if entry.file_name().to_str().is_some_and(|name| {
                    name.rsplit_once('#').is_some_and(|(_, n)| {
                        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
                    })
                }) {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        if self.plain_local
            && let Some(root) = self.location.join(relative).local_path()
        {
            sweep(&root);
        }
    }

    /// Removes the empty directories that deleting objects leaves below `relative` on a local
    /// disk, `relative` itself included. Object stores have no directories, so elsewhere this
    /// does nothing.
    pub fn remove_empty_dirs(&self, relative: &str) {
        fn prune(dir: &std::path::Path) -> bool {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return false;
            };
            let mut empty = true;
            for entry in entries.flatten() {
                let path = entry.path();
                if !(path.is_dir() && prune(&path)) {
                    empty = false;
                }
            }
            empty && std::fs::remove_dir(dir).is_ok()
        }
        if let Some(root) = self.location.join(relative).local_path() {
            prune(&root);
        }
    }

    /// Deletes every object below `relative`.
    pub async fn delete_prefix(&self, relative: &str) -> Result<()> {
        let objects = self.list_all(relative).await?;
        futures::stream::iter(objects)
            .map(|object| async move { self.delete(&object.key).await })
            .buffer_unordered(16)
            .try_collect::<()>()
            .await
    }
}

/// The object_store path of a key, spelled as the user spelled it: a local file named `é.jpg`
/// or `a#b.jpg` is that file, and an S3 key is that key. (`Path::from` would percent-encode
/// `%`, `#`, `?`, brackets and every non-ASCII letter, and the local backend then looks for a
/// file named `%C3%A9.jpg`.) A key object_store cannot take as it is (a control character, an
/// empty, `.` or `..` segment) falls back to that encoding, so it can never step outside its
/// prefix.
fn object_path(key: &str) -> Path {
    Path::parse(key).unwrap_or_else(|_| Path::from(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_relative_to_the_prefix() {
        let store = Store::open("memory://unit-keys/base").expect("open");
        store
            .put("cat/1.jpg", Bytes::from_static(b"x"))
            .await
            .expect("put");
        let objects = store.list_all("").await.expect("list");
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].key, "cat/1.jpg");
        assert_eq!(
            store.uri_of("cat/1.jpg"),
            "memory://unit-keys/base/cat/1.jpg"
        );
        let child = store.child("cat");
        assert_eq!(child.list_all("").await.expect("list")[0].key, "1.jpg");
    }

    #[tokio::test]
    async fn a_streamed_object_is_the_whole_object() {
        let dir = tempfile::tempdir().expect("tempdir");
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        for url in [
            dir.path().display().to_string(),
            "memory://unit-stream/base".to_string(),
        ] {
            let store = Store::open(&url).expect("open");
            store
                .put("m/big.manifest", Bytes::from(payload.clone()))
                .await
                .expect("put");
            let chunks: Vec<Bytes> = store
                .get_stream("m/big.manifest")
                .await
                .expect("stream")
                .try_collect()
                .await
                .expect("chunks");
            // A local file comes a MiB at a time (memory:// hands over the object as it is).
            if !url.starts_with("memory://") {
                assert!(chunks.len() >= 3 && chunks.iter().all(|c| c.len() <= 1 << 20));
            }
            assert_eq!(chunks.concat(), payload, "{url}");
            let missing = store.get_stream("m/none.manifest").await.err();
            assert!(
                matches!(missing, Some(Error::NotFound { .. })),
                "{url}: {missing:?}"
            );
        }
    }
}
