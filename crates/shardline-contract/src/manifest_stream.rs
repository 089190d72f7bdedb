//! Manifests of any length: written and read as streams, and split into parts behind a small
//! index once a channel is large.
//!
//! - [`ManifestWriter`] writes a plain SageMaker manifest one key at a time into any
//!   `std::io::Write`, digesting as it goes; [`read_stream`] reads one from any `std::io::Read`,
//!   handing each key to a callback. Neither holds more than one key.
//! - [`PartsWriter`] writes a channel as parts of at most `part_keys` keys (each part a plain
//!   SageMaker manifest, `NAME.part-00000`, ...) and then the index ([`ManifestIndex`], JSON) at
//!   `NAME`, so that a consumer that takes a manifest path takes the index at the same path.
//! - [`read_manifest`] reads either from a store, the index's parts in order, into memory (the
//!   stages that need the whole key list); [`index_of`] tells an index from a manifest.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use shardline_lineage::Hasher;
use shardline_store::Store;

use crate::distribute::Distribution;

use crate::Error;
use crate::sagemaker::{Manifest, parse_manifest};

/// The index of a manifest written in parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestIndex {
    /// The format's version (1); its presence marks the file as an index.
    pub shardline_manifest_index: u32,
    /// The prefix every part's keys are relative to.
    pub prefix: String,
    /// Keys in all parts.
    pub keys: u64,
    /// The parts, in key order.
    pub parts: Vec<Part>,
}

/// One part of a [`ManifestIndex`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// The part's file, relative to the index's folder.
    pub manifest: String,
    /// Its keys.
    pub keys: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its content digest.
    pub digest: String,
}

/// A plain manifest written one key at a time.
pub struct ManifestWriter<W: Write> {
    out: Counting<W>,
    keys: u64,
}

struct Counting<W: Write> {
    inner: W,
    bytes: u64,
    hasher: Hasher,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| String::from("\"\""))
}

impl<W: Write> ManifestWriter<W> {
    /// Starts a manifest of keys under `prefix` (the same bytes as `sagemaker::write_manifest`).
    pub fn new(out: W, prefix: &str) -> std::io::Result<ManifestWriter<W>> {
        let mut out = Counting {
            inner: out,
            bytes: 0,
            hasher: Hasher::new(),
        };
        write!(out, "[{{\"prefix\":{}}}", json_string(prefix))?;
        Ok(ManifestWriter { out, keys: 0 })
    }

    /// Appends a key.
    pub fn key(&mut self, key: &str) -> std::io::Result<()> {
        self.keys += 1;
        write!(self.out, ",\n{}", json_string(key))
    }

    /// Keys written so far.
    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// Ends the manifest: the writer, the keys, the bytes and the digest.
    pub fn finish(mut self) -> std::io::Result<(W, u64, u64, String)> {
        self.out.write_all(b"]\n")?;
        self.out.flush()?;
        let Counting {
            inner,
            bytes,
            hasher,
        } = self.out;
        Ok((
            inner,
            self.keys,
            bytes,
            hasher.finish().as_str().to_string(),
        ))
    }
}

/// Reads a plain manifest from `reader`, calling `on_key` with each key in file order; returns
/// the prefix (ending in `/`). `uri` names the file in errors. Memory holds one chunk and one key.
pub fn read_stream(
    uri: &str,
    mut reader: impl Read,
    on_key: &mut dyn FnMut(&str) -> Result<(), String>,
) -> Result<String, Error> {
    let mut scanner = Scanner::new(uri);
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::BadManifest {
                    uri: uri.to_string(),
                    reason: format!("it cannot be read ({e})"),
                });
            }
        };
        scanner.feed(&chunk[..n], on_key)?;
    }
    Ok(scanner.finish()?.prefix)
}

/// A plain manifest parsed from chunks as they arrive (a push parser over
/// `[{"prefix": "<uri>"}, "key", ...]`): each key goes to the callback as soon as its element
/// ends, so memory holds one chunk and one unfinished element, whatever the manifest's length.
/// It digests the bytes as it goes, so a reader checks a part against its index in the same pass.
pub struct Scanner {
    uri: String,
    state: Scan,
    /// The start of an element that began in an earlier chunk.
    carry: Vec<u8>,
    depth: u32,
    in_string: bool,
    escaped: bool,
    prefix: Option<String>,
    keys: u64,
    bytes: u64,
    hasher: Hasher,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    BeforeArray,
    Elements,
    AfterArray,
}

/// What a [`Scanner`] read, once the manifest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    /// The prefix, ending in `/`.
    pub prefix: String,
    /// Keys read.
    pub keys: u64,
    /// Bytes read.
    pub bytes: u64,
    /// The digest of those bytes.
    pub digest: shardline_lineage::Digest,
}

#[derive(Deserialize)]
struct PrefixEntry {
    prefix: String,
}

impl Scanner {
    /// A scanner for the manifest at `uri` (named in errors).
    pub fn new(uri: &str) -> Scanner {
        Scanner {
            uri: uri.to_string(),
            state: Scan::BeforeArray,
            carry: Vec::new(),
            depth: 0,
            in_string: false,
            escaped: false,
            prefix: None,
            keys: 0,
            bytes: 0,
            hasher: Hasher::new(),
        }
    }

    fn bad(&self, reason: String) -> Error {
        Error::BadManifest {
            uri: self.uri.clone(),
            reason,
        }
    }

    /// The prefix, once the first element has been read.
    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    /// Feeds the next chunk, calling `on_key` with every key that ends in it. An error from
    /// `on_key` stops the scan and is reported against the manifest.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        on_key: &mut dyn FnMut(&str) -> Result<(), String>,
    ) -> Result<(), Error> {
        self.hasher.update(chunk);
        self.bytes += chunk.len() as u64;
        let mut start = 0;
        for (i, &b) in chunk.iter().enumerate() {
            match self.state {
                Scan::BeforeArray => {
                    if b == b'[' {
                        self.state = Scan::Elements;
                        start = i + 1;
                    } else if !b.is_ascii_whitespace() {
                        return Err(self.bad(
                            "expected a JSON array: {\"prefix\": \"<uri>\"} and then string keys"
                                .into(),
                        ));
                    }
                }
                Scan::Elements if self.in_string => {
                    if self.escaped {
                        self.escaped = false;
                    } else if b == b'\\' {
                        self.escaped = true;
                    } else if b == b'"' {
                        self.in_string = false;
                    }
                }
                Scan::Elements => match b {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' if self.depth > 0 => self.depth -= 1,
                    b',' | b']' if self.depth == 0 => {
                        let last = b == b']';
                        if self.carry.is_empty() {
                            self.element(&chunk[start..i], last, on_key)?;
                        } else {
                            let mut element = std::mem::take(&mut self.carry);
                            element.extend_from_slice(&chunk[start..i]);
                            self.element(&element, last, on_key)?;
                            element.clear();
                            self.carry = element;
                        }
                        start = i + 1;
                        if last {
                            self.state = Scan::AfterArray;
                        }
                    }
                    _ => {}
                },
                Scan::AfterArray => {
                    if !b.is_ascii_whitespace() {
                        return Err(self.bad("text after the array".into()));
                    }
                }
            }
        }
        if self.state == Scan::Elements {
            self.carry
                .extend_from_slice(&chunk[start.min(chunk.len())..]);
        }
        Ok(())
    }

    fn element(
        &mut self,
        element: &[u8],
        last: bool,
        on_key: &mut dyn FnMut(&str) -> Result<(), String>,
    ) -> Result<(), Error> {
        let element = element.trim_ascii();
        let Some(_) = &self.prefix else {
            if element.is_empty() {
                return Err(self.bad("the first element must be {\"prefix\": \"<uri>\"}".into()));
            }
            let first: PrefixEntry = serde_json::from_slice(element).map_err(|e| {
                self.bad(format!(
                    "the first element must be {{\"prefix\": \"<uri>\"}} ({e})"
                ))
            })?;
            if first.prefix.is_empty() {
                return Err(self.bad("the prefix is empty".into()));
            }
            self.prefix = Some(if first.prefix.ends_with('/') {
                first.prefix
            } else {
                format!("{}/", first.prefix)
            });
            return Ok(());
        };
        let n = self.keys + 1;
        if element.is_empty() {
            let what = if last {
                "a comma before `]`"
            } else {
                "two commas"
            };
            return Err(self.bad(format!("entry {n} is missing ({what})")));
        }
        let reason = |e: &dyn std::fmt::Display| format!("entry {n} is not a string key ({e})");
        // Most keys have nothing to unescape: the text between the quotes is the key.
        let plain = element.len() >= 2
            && element[0] == b'"'
            && element[element.len() - 1] == b'"'
            && !element[1..element.len() - 1]
                .iter()
                .any(|&b| b == b'\\' || b == b'"' || b < 0x20);
        let outcome = if plain {
            match std::str::from_utf8(&element[1..element.len() - 1]) {
                Ok(key) => on_key(key),
                Err(e) => return Err(self.bad(reason(&e))),
            }
        } else {
            match serde_json::from_slice::<String>(element) {
                Ok(key) => on_key(&key),
                Err(e) => return Err(self.bad(reason(&e))),
            }
        };
        self.keys = n;
        outcome.map_err(|reason| self.bad(reason))
    }

    /// Ends the manifest: what was read, or an error if it ended early.
    pub fn finish(self) -> Result<Scanned, Error> {
        match self.state {
            Scan::BeforeArray => Err(self.bad(
                "it is empty; expected a JSON array: {\"prefix\": \"<uri>\"} and then string keys"
                    .into(),
            )),
            Scan::Elements => Err(self.bad(
                "it ends before its closing `]` (EOF while parsing); was it cut short?".into(),
            )),
            Scan::AfterArray => Ok(Scanned {
                prefix: self.prefix.clone().unwrap_or_default(),
                keys: self.keys,
                bytes: self.bytes,
                digest: self.hasher.finish(),
            }),
        }
    }
}

/// Writes a channel's keys as parts of at most `part_keys` keys each, then the index, into a
/// local folder (the benchmark's and the tests' form; the manifest step renders the same files
/// into its commit).
pub struct PartsWriter {
    dir: PathBuf,
    name: String,
    prefix: String,
    part_keys: u64,
    current: Option<ManifestWriter<std::io::BufWriter<std::fs::File>>>,
    parts: Vec<Part>,
}

/// The name of part `i` of the manifest `name`.
pub fn part_name(name: &str, i: usize) -> String {
    format!("{name}.part-{i:05}")
}

impl PartsWriter {
    /// Parts of `dir/name` under `prefix`, `part_keys` keys each at most.
    pub fn new(dir: &Path, name: &str, prefix: &str, part_keys: u64) -> PartsWriter {
        PartsWriter {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            prefix: prefix.to_string(),
            part_keys: part_keys.max(1),
            current: None,
            parts: Vec::new(),
        }
    }

    /// Appends a key.
    pub fn key(&mut self, key: &str) -> std::io::Result<()> {
        if self
            .current
            .as_ref()
            .is_some_and(|w| w.keys() >= self.part_keys)
        {
            self.close_part()?;
        }
        if self.current.is_none() {
            let file =
                std::fs::File::create(self.dir.join(part_name(&self.name, self.parts.len())))?;
            self.current = Some(ManifestWriter::new(
                std::io::BufWriter::with_capacity(1 << 20, file),
                &self.prefix,
            )?);
        }
        match self.current.as_mut() {
            Some(w) => w.key(key),
            None => Ok(()),
        }
    }

    fn close_part(&mut self) -> std::io::Result<()> {
        if let Some(w) = self.current.take() {
            let (_, keys, bytes, digest) = w.finish()?;
            self.parts.push(Part {
                manifest: part_name(&self.name, self.parts.len()),
                keys,
                bytes,
                digest,
            });
        }
        Ok(())
    }

    /// Closes the last part and writes the index at `dir/name`.
    pub fn finish(mut self) -> std::io::Result<ManifestIndex> {
        self.close_part()?;
        let index = ManifestIndex {
            shardline_manifest_index: 1,
            prefix: self.prefix.clone(),
            keys: self.parts.iter().map(|p| p.keys).sum(),
            parts: self.parts,
        };
        std::fs::write(self.dir.join(&self.name), index_bytes(&index))?;
        Ok(index)
    }
}

/// The index as its file holds it.
pub fn index_bytes(index: &ManifestIndex) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(index).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The index, when `bytes` are one (a JSON object with `shardline_manifest_index`); `None` for
/// anything else (a plain manifest, an augmented one).
pub fn index_of(uri: &str, bytes: &[u8]) -> Result<Option<ManifestIndex>, Error> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') || !bytes.windows(24).any(|w| w == b"shardline_manifest_index") {
        return Ok(None);
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        // JSON Lines (an augmented manifest) is not one JSON value.
        return Ok(None);
    };
    if value.get("shardline_manifest_index").is_none() {
        return Ok(None);
    }
    let index: ManifestIndex = serde_json::from_value(value).map_err(|e| Error::BadManifest {
        uri: uri.to_string(),
        reason: format!("not a manifest index ({e})"),
    })?;
    if index.shardline_manifest_index != 1 {
        return Err(Error::BadManifest {
            uri: uri.to_string(),
            reason: format!(
                "a manifest index of version {}, which this Shardline does not read; upgrade it",
                index.shardline_manifest_index
            ),
        });
    }
    Ok(Some(index))
}

/// A plain manifest or an index of parts at `name` in `store`, its keys in memory, in order. A
/// part that is missing, or whose size or key count is not the index's, is an error naming it.
pub async fn read_manifest(store: &Store, name: &str) -> Result<(Manifest, Vec<u8>), Error> {
    let uri = store.uri_of(name);
    let bytes = store.get(name).await?.to_vec();
    let Some(index) = index_of(&uri, &bytes)? else {
        let manifest = parse_manifest(&uri, &bytes)?;
        return Ok((manifest, bytes));
    };
    let mut parts = Keys::parts(store, name, index, Bytes::from(bytes.clone()))?;
    // Sized by what the parts turn out to hold, not by a number from the file.
    let mut keys = Vec::new();
    while parts
        .pull(&mut |key| {
            keys.push(key.to_string());
            Ok(())
        })
        .await?
    {}
    let prefix = parts.prefix().unwrap_or_default().to_string();
    Ok((Manifest { prefix, keys }, bytes))
}

/// What a manifest path holds, read no further than needed to tell.
pub enum Opened {
    /// A plain manifest or an index of parts: its keys, to be pulled as a stream.
    Keys(Box<Keys>),
    /// Anything else (an augmented manifest, JSON Lines): its whole bytes.
    Other(Bytes),
}

/// A plain manifest or an index of parts at `name` in `store`. A plain manifest is recognised
/// from its first chunk and then streamed; anything starting with `{` (an index, which is small,
/// or JSON Lines) is read whole.
pub async fn open(store: &Store, name: &str) -> Result<Opened, Error> {
    let uri = store.uri_of(name);
    let mut body = store.get_stream(name).await?;
    let mut head = Vec::new();
    let first = loop {
        match body.next().await.transpose()? {
            Some(chunk) => {
                head.extend_from_slice(&chunk);
                if let Some(&b) = head.iter().find(|b| !b.is_ascii_whitespace()) {
                    break Some(b);
                }
            }
            None => break None,
        }
    };
    if first == Some(b'[') || first.is_none() {
        // A plain manifest (or an empty file, which the scanner refuses by name).
        return Ok(Opened::Keys(Box::new(Keys {
            store: store.clone(),
            uri: uri.clone(),
            index: None,
            pending: VecDeque::new(),
            current: Some(Reading {
                uri,
                body: Some(body),
                head: Some(Bytes::from(head)),
                scanner: Scanner::new(&store.uri_of(name)),
                part: None,
            }),
            prefix: None,
            scanned: None,
        })));
    }
    while let Some(chunk) = body.next().await.transpose()? {
        head.extend_from_slice(&chunk);
    }
    let Some(index) = index_of(&uri, &head)? else {
        return Ok(Opened::Other(Bytes::from(head)));
    };
    let keys = Keys::parts(store, name, index, Bytes::from(head))?;
    Ok(Opened::Keys(Box::new(keys)))
}

fn with_slash(prefix: &str) -> String {
    if prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    }
}

fn check_total(uri: &str, index: &ManifestIndex) -> Result<(), Error> {
    let parts_total: u64 = index
        .parts
        .iter()
        .map(|p| p.keys)
        .fold(0, u64::saturating_add);
    if parts_total != index.keys {
        return Err(Error::BadManifest {
            uri: uri.to_string(),
            reason: format!(
                "says it holds {} keys, but its parts hold {parts_total}; rewrite the manifest",
                index.keys
            ),
        });
    }
    Ok(())
}

/// A manifest's keys, pulled from the store a chunk at a time: a plain manifest, or every part
/// an index names, in order, each part checked against the index as its last byte is read (size,
/// digest, prefix, key count). Memory holds one chunk whatever the manifest's length.
pub struct Keys {
    store: Store,
    uri: String,
    index: Option<(ManifestIndex, Bytes)>,
    pending: VecDeque<(String, Part)>,
    current: Option<Reading>,
    prefix: Option<String>,
    scanned: Option<Scanned>,
}

struct Reading {
    uri: String,
    body: Option<BoxStream<'static, shardline_store::Result<Bytes>>>,
    head: Option<Bytes>,
    scanner: Scanner,
    part: Option<Part>,
}

impl Keys {
    /// The keys of the parts `index` (read from `name` in `store`, as `bytes`) names.
    pub fn parts(
        store: &Store,
        name: &str,
        index: ManifestIndex,
        bytes: Bytes,
    ) -> Result<Keys, Error> {
        let uri = store.uri_of(name);
        check_total(&uri, &index)?;
        let dir = match name.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/"),
            None => String::new(),
        };
        Ok(Keys {
            store: store.clone(),
            uri,
            pending: index
                .parts
                .iter()
                .map(|p| (format!("{dir}{}", p.manifest), p.clone()))
                .collect(),
            current: None,
            prefix: Some(with_slash(&index.prefix)),
            index: Some((index, bytes)),
            scanned: None,
        })
    }

    /// The manifest's (or the index's) URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The index and its bytes, when the manifest is written in parts.
    pub fn index(&self) -> Option<&(ManifestIndex, Bytes)> {
        self.index.as_ref()
    }

    /// The prefix every key is relative to (ending in `/`), once known: at once for an index,
    /// after the first element for a plain manifest.
    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    /// The digest of the manifest's bytes (the index's, for one in parts: it names its parts'
    /// digests): at once for an index, once read to its end for a plain manifest.
    pub fn digest(&self) -> Option<shardline_lineage::Digest> {
        match &self.index {
            Some((_, bytes)) => Some(shardline_lineage::Digest::of(bytes)),
            None => self.scanned.as_ref().map(|s| s.digest.clone()),
        }
    }

    /// The keys it holds: at once for an index, once read to its end for a plain manifest.
    pub fn total(&self) -> Option<u64> {
        match &self.index {
            Some((index, _)) => Some(index.keys),
            None => self.scanned.as_ref().map(|s| s.keys),
        }
    }

    /// What a plain manifest held, once it has been read to its end (`None` for an index).
    pub fn scanned(&self) -> Option<&Scanned> {
        self.scanned.as_ref()
    }

    /// Reads the next chunk, calling `on_key` with every key that ends in it; `false` once every
    /// key has been read.
    pub async fn pull(
        &mut self,
        on_key: &mut dyn FnMut(&str) -> Result<(), String>,
    ) -> Result<bool, Error> {
        loop {
            let Some(reading) = self.current.as_mut() else {
                let Some((key, part)) = self.pending.pop_front() else {
                    return Ok(false);
                };
                let part_uri = self.store.uri_of(&key);
                let body = self
                    .store
                    .get_stream(&key)
                    .await
                    .map_err(|e| Error::BadManifest {
                        uri: self.uri.clone(),
                        reason: format!("its part {part_uri} cannot be read ({e})"),
                    })?;
                self.current = Some(Reading {
                    scanner: Scanner::new(&part_uri),
                    uri: part_uri,
                    body: Some(body),
                    head: None,
                    part: Some(part),
                });
                continue;
            };
            let chunk = match reading.head.take() {
                Some(head) => Some(head),
                None => match reading.body.as_mut() {
                    Some(body) => body.next().await.transpose()?,
                    None => None,
                },
            };
            if let Some(chunk) = chunk {
                reading.scanner.feed(&chunk, on_key)?;
                if self.prefix.is_none() {
                    self.prefix = reading.scanner.prefix().map(str::to_string);
                }
                return Ok(true);
            }
            let Some(reading) = self.current.take() else {
                continue;
            };
            let scanned = reading.scanner.finish()?;
            match reading.part {
                None => self.scanned = Some(scanned),
                Some(part) => self.check_part(&reading.uri, &part, &scanned)?,
            }
        }
    }

    fn check_part(&self, part_uri: &str, part: &Part, scanned: &Scanned) -> Result<(), Error> {
        if scanned.bytes != part.bytes || scanned.digest.as_str() != part.digest {
            return Err(Error::BadManifest {
                uri: self.uri.clone(),
                reason: format!(
                    "its part {part_uri} is not the one the index names (size or digest differs); rewrite the manifest"
                ),
            });
        }
        let prefix = self.prefix.as_deref().unwrap_or_default();
        if scanned.prefix != prefix {
            return Err(Error::BadManifest {
                uri: part_uri.to_string(),
                reason: format!(
                    "has the prefix {}, the index {prefix}; rewrite the manifest",
                    scanned.prefix
                ),
            });
        }
        if scanned.keys != part.keys {
            return Err(Error::BadManifest {
                uri: part_uri.to_string(),
                reason: format!("holds {} keys, the index says {}", scanned.keys, part.keys),
            });
        }
        Ok(())
    }
}

/// How many keys instance `rank` of `instances` receives from `keys` keys.
pub fn share_len(keys: u64, rank: usize, instances: usize, distribution: Distribution) -> u64 {
    let n = instances.max(1) as u64;
    match distribution {
        Distribution::FullyReplicated => keys,
        Distribution::ShardedByKey => keys / n + u64::from((rank as u64) < keys % n),
    }
}

/// Instance `rank`'s share of a manifest whose keys are sorted byte-wise, pulled as a stream:
/// the same keys, in the same order, as [`crate::distribute::share`] of the whole list (on
/// sorted keys, ShardedByKey is position `i mod instances == rank`). A key out of order is an
/// error: the rule needs the whole list sorted then.
pub struct Share {
    keys: Box<Keys>,
    rank: u64,
    instances: u64,
    distribution: Distribution,
    position: u64,
    ready: VecDeque<String>,
    last: Option<String>,
    done: bool,
}

impl Share {
    /// Rank `rank` of `instances`' share of `keys`.
    pub fn new(
        keys: Box<Keys>,
        rank: usize,
        instances: usize,
        distribution: Distribution,
    ) -> Share {
        Share {
            keys,
            rank: rank as u64,
            instances: instances.max(1) as u64,
            distribution,
            position: 0,
            ready: VecDeque::new(),
            last: None,
            done: false,
        }
    }

    /// The keys it is taken from (what was read, once at the end).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The next key of the share, `None` at its end. Keys out of order are
    /// [`Error::Unsorted`].
    pub async fn next(&mut self) -> Result<Option<String>, Error> {
        while self.ready.is_empty() && !self.done {
            let Share {
                keys,
                rank,
                instances,
                distribution,
                position,
                ready,
                last,
                ..
            } = self;
            let mut unsorted = None;
            let more = keys
                .pull(&mut |key| {
                    if let Some(l) = last.as_deref()
                        && l >= key
                    {
                        unsorted = Some((key.to_string(), l.to_string()));
                        return Err(String::new());
                    }
                    let mine = *distribution == Distribution::FullyReplicated
                        || *position % *instances == *rank;
                    *position += 1;
                    if mine {
                        ready.push_back(key.to_string());
                    }
                    let l = last.get_or_insert_with(String::new);
                    l.clear();
                    l.push_str(key);
                    Ok(())
                })
                .await;
            let more = match (more, unsorted) {
                (Err(_), Some((key, after))) => {
                    return Err(Error::Unsorted {
                        uri: keys.uri().to_string(),
                        key,
                        after,
                    });
                }
                (more, _) => more?,
            };
            self.done = !more;
        }
        Ok(self.ready.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_writes_what_write_manifest_writes_and_the_stream_reads_it_back() {
        let keys = ["cat/1.jpg", "dog/\"2\".jpg", "é/3.jpg"];
        let (bytes, n, size, digest) = {
            let mut w = ManifestWriter::new(Vec::new(), "s3://b/pets/").unwrap();
            for k in keys {
                w.key(k).unwrap();
            }
            w.finish().unwrap()
        };
        assert_eq!(
            bytes,
            crate::sagemaker::write_manifest("s3://b/pets/", keys)
        );
        assert_eq!((n, size), (3, bytes.len() as u64));
        assert_eq!(digest, shardline_lineage::Digest::of(&bytes).as_str());
        let mut seen = Vec::new();
        let prefix = read_stream("m", &bytes[..], &mut |k| {
            seen.push(k.to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(prefix, "s3://b/pets/");
        assert_eq!(seen, keys);
    }

    #[test]
    fn the_stream_rejects_what_parse_manifest_rejects() {
        for (bytes, needle) in [
            (&b"{}"[..], "JSON array"),
            (b"[]", "first element"),
            (b"[{\"prefix\":\"\"}]", "empty"),
            (b"[{\"prefix\":\"s3://b/\"}, 3]", "entry 1"),
            (b"[{\"prefix\":\"s3://b/\"}, \"a\"", "EOF"),
            (b"[{\"prefix\":\"s3://b/\"}] x", "text after"),
        ] {
            let err = read_stream("s3://b/x.manifest", bytes, &mut |_| Ok(()))
                .expect_err(needle)
                .to_string();
            assert!(
                err.contains(needle) && err.contains("s3://b/x.manifest"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_scanner_reads_a_manifest_cut_anywhere_as_parse_manifest_does() {
        let keys = [
            "cat/1.jpg",
            "dog/\"2\".jpg",
            "é/3 [x], {y}.jpg",
            "back\\slash/4.jpg",
            "tab\there/5.jpg",
        ];
        let written = crate::sagemaker::write_manifest("s3://b/pets", keys);
        // The same keys on one line, with spaces where JSON allows them.
        let mut spaced = b" [ {\"prefix\" : \"s3://b/pets\", \"x\": [1, {\"y\": \"]\"}]} ".to_vec();
        for k in keys {
            spaced.extend_from_slice(b" , ");
            spaced.extend_from_slice(serde_json::to_string(k).unwrap().as_bytes());
        }
        spaced.extend_from_slice(b" ]\n");
        for bytes in [written, spaced] {
            let expected = parse_manifest("m", &bytes).unwrap();
            for cut in 0..=bytes.len() {
                let mut scanner = Scanner::new("m");
                let mut seen = Vec::new();
                let mut on_key = |k: &str| {
                    seen.push(k.to_string());
                    Ok(())
                };
                scanner.feed(&bytes[..cut], &mut on_key).unwrap();
                scanner
                    .feed(&bytes[cut..], &mut on_key)
                    .unwrap_or_else(|e| panic!("cut {cut}: {e}"));
                let scanned = scanner.finish().unwrap();
                assert_eq!(seen, expected.keys, "cut at {cut}");
                assert_eq!(scanned.prefix, expected.prefix);
                assert_eq!(scanned.keys, keys.len() as u64);
                assert_eq!(scanned.bytes, bytes.len() as u64);
                assert_eq!(scanned.digest, shardline_lineage::Digest::of(&bytes));
            }
        }
        // Byte by byte, too.
        let bytes = crate::sagemaker::write_manifest("s3://b/", keys);
        let mut scanner = Scanner::new("m");
        let mut n = 0;
        for b in &bytes {
            scanner
                .feed(std::slice::from_ref(b), &mut |_| {
                    n += 1;
                    Ok(())
                })
                .unwrap();
        }
        assert_eq!((scanner.finish().unwrap().keys, n), (5, 5));
    }

    #[test]
    fn the_scanner_names_what_is_wrong() {
        for (bytes, needle) in [
            (&b""[..], "it is empty"),
            (b"[{\"prefix\":\"s3://b/\"}, \"a\",]", "entry 2 is missing"),
            (b"[{\"prefix\":\"s3://b/\"},, \"a\"]", "entry 1 is missing"),
            (
                b"[{\"prefix\":\"s3://b/\"}, \"a\", {\"k\": 1}]",
                "entry 2 is not a string key",
            ),
            (
                br#"[{"prefix":"s3://b/"}, "a\x"]"#,
                "entry 1 is not a string key",
            ),
            (
                b"[{\"prefix\":\"s3://b/\"}, \"a\tb\"]",
                "entry 1 is not a string key",
            ),
            (b"[\"s3://b/\", \"a\"]", "first element"),
        ] {
            let mut scanner = Scanner::new("s3://b/x.manifest");
            let err = scanner
                .feed(bytes, &mut |_| Ok(()))
                .and_then(|()| scanner.finish().map(|_| ()))
                .expect_err(needle)
                .to_string();
            assert!(
                err.contains(needle) && err.contains("s3://b/x.manifest"),
                "{needle}: {err}"
            );
        }
        // A callback's refusal stops the scan, reported against the manifest.
        let mut scanner = Scanner::new("m");
        let err = scanner
            .feed(b"[{\"prefix\":\"s3://b/\"}, \"a\", \"b\"]", &mut |k| {
                if k == "b" { Err("no b".into()) } else { Ok(()) }
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("m") && err.contains("no b"), "{err}");
    }

    async fn share_of(
        store: &Store,
        name: &str,
        rank: usize,
        n: usize,
        d: Distribution,
    ) -> Result<Vec<String>, Error> {
        let Opened::Keys(keys) = open(store, name).await? else {
            panic!("{name} is a manifest");
        };
        let mut share = Share::new(keys, rank, n, d);
        let mut got = Vec::new();
        while let Some(key) = share.next().await? {
            got.push(key);
        }
        Ok(got)
    }

    #[tokio::test]
    async fn a_streamed_share_is_the_in_memory_share_of_a_sorted_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<String> = (0..23).map(|i| format!("c{}/{i:03}.jpg", i % 3)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        let mut w = PartsWriter::new(dir.path(), "parts.manifest", "file:///lake/", 4);
        for k in &sorted {
            w.key(k).unwrap();
        }
        w.finish().unwrap();
        std::fs::write(
            dir.path().join("plain.manifest"),
            crate::sagemaker::write_manifest("file:///lake/", sorted.iter().map(String::as_str)),
        )
        .unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let uris: Vec<String> = keys.iter().map(|k| format!("file:///lake/{k}")).collect();
        for name in ["parts.manifest", "plain.manifest"] {
            for d in [Distribution::ShardedByKey, Distribution::FullyReplicated] {
                for n in [1, 3, 5, 30] {
                    for rank in 0..n {
                        let expected: Vec<String> = crate::distribute::share(&uris, rank, n, d)
                            .into_iter()
                            .map(|p| keys[p].clone())
                            .collect();
                        let got = share_of(&store, name, rank, n, d).await.unwrap();
                        assert_eq!(got, expected, "{name} {d:?} rank {rank} of {n}");
                        assert_eq!(share_len(23, rank, n, d), expected.len() as u64);
                    }
                }
            }
        }
        // Keys out of order cannot be dealt as they stream: an error, not a wrong share.
        std::fs::write(
            dir.path().join("unsorted.manifest"),
            crate::sagemaker::write_manifest("file:///lake/", ["b", "a"]),
        )
        .unwrap();
        let err = share_of(
            &store,
            "unsorted.manifest",
            0,
            2,
            Distribution::ShardedByKey,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("not sorted") && err.contains("unsorted.manifest"),
            "{err}"
        );
        // Anything that is not a plain manifest or an index is handed back whole.
        std::fs::write(
            dir.path().join("aug.manifest"),
            b"{\"source-ref\":\"s3://b/a\"}\n",
        )
        .unwrap();
        assert!(matches!(
            open(&store, "aug.manifest").await.unwrap(),
            Opened::Other(_)
        ));
    }

    #[tokio::test]
    async fn parts_behind_an_index_read_as_one_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PartsWriter::new(dir.path(), "train.manifest", "file:///lake/", 4);
        let keys: Vec<String> = (0..10).map(|i| format!("c/{i:02}.jpg")).collect();
        for k in &keys {
            w.key(k).unwrap();
        }
        let index = w.finish().unwrap();
        assert_eq!(index.parts.len(), 3);
        assert_eq!(index.keys, 10);
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let (m, _) = read_manifest(&store, "train.manifest").await.unwrap();
        assert_eq!(m.prefix, "file:///lake/");
        assert_eq!(m.keys, keys);
        // A part changed after the index was written is an error naming it.
        std::fs::write(
            dir.path().join("train.manifest.part-00001"),
            b"[{\"prefix\":\"file:///lake/\"}]\n",
        )
        .unwrap();
        let err = read_manifest(&store, "train.manifest")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("train.manifest.part-00001"), "{err}");
        // An index whose total is not its parts' is refused (and never sized from the file).
        let mut wrong = index.clone();
        wrong.keys = u64::MAX;
        std::fs::write(dir.path().join("wrong.manifest"), index_bytes(&wrong)).unwrap();
        let err = read_manifest(&store, "wrong.manifest")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("but its parts hold 10"), "{err}");
        // A plain manifest reads as before; an augmented one is not an index.
        std::fs::write(
            dir.path().join("plain.manifest"),
            crate::sagemaker::write_manifest("file:///l/", ["a"]),
        )
        .unwrap();
        assert_eq!(
            read_manifest(&store, "plain.manifest")
                .await
                .unwrap()
                .0
                .keys,
            ["a"]
        );
        assert!(
            index_of(
                "x",
                b"{\"source-ref\":\"s3://b/a\"}\n{\"source-ref\":\"s3://b/b\"}\n"
            )
            .unwrap()
            .is_none()
        );
    }
}
