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

use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use shardline_lineage::Hasher;
use shardline_store::Store;

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
/// the prefix (ending in `/`). `uri` names the file in errors. Memory holds one key at a time.
pub fn read_stream(
    uri: &str,
    reader: impl Read,
    on_key: &mut dyn FnMut(&str) -> Result<(), String>,
) -> Result<String, Error> {
    let bad = |reason: String| Error::BadManifest {
        uri: uri.to_string(),
        reason,
    };
    let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(1 << 20, reader));
    let prefix = Entries { on_key }
        .deserialize(&mut de)
        .map_err(|e| bad(e.to_string()))?;
    de.end()
        .map_err(|e| bad(format!("text after the array ({e})")))?;
    if prefix.is_empty() {
        return Err(bad("the prefix is empty".into()));
    }
    Ok(if prefix.ends_with('/') {
        prefix
    } else {
        format!("{prefix}/")
    })
}

struct Entries<'a> {
    on_key: &'a mut dyn FnMut(&str) -> Result<(), String>,
}

#[derive(Deserialize)]
struct PrefixEntry {
    prefix: String,
}

impl<'de> DeserializeSeed<'de> for Entries<'_> {
    type Value = String;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Entries<'_> {
    type Value = String;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON array: {\"prefix\": \"<uri>\"} and then string keys")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<String, A::Error> {
        use serde::de::Error as _;
        let first: PrefixEntry = seq
            .next_element()?
            .ok_or_else(|| A::Error::custom("the first element must be {\"prefix\": \"<uri>\"}"))?;
        let mut n = 0u64;
        while let Some(key) = seq
            .next_element::<String>()
            .map_err(|e| A::Error::custom(format!("entry {} is not a string key ({e})", n + 1)))?
        {
            n += 1;
            (self.on_key)(&key).map_err(A::Error::custom)?;
        }
        Ok(first.prefix)
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
    let dir = match name.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/"),
        None => String::new(),
    };
    let prefix = if index.prefix.ends_with('/') {
        index.prefix.clone()
    } else {
        format!("{}/", index.prefix)
    };
    let parts_total: u64 = index
        .parts
        .iter()
        .map(|p| p.keys)
        .fold(0, u64::saturating_add);
    if parts_total != index.keys {
        return Err(Error::BadManifest {
            uri: uri.clone(),
            reason: format!(
                "says it holds {} keys, but its parts hold {parts_total}; rewrite the manifest",
                index.keys
            ),
        });
    }
    // Sized by what the parts turn out to hold, not by a number from the file.
    let mut keys = Vec::new();
    for part in &index.parts {
        let key = format!("{dir}{}", part.manifest);
        let part_uri = store.uri_of(&key);
        let body = store.get(&key).await.map_err(|e| Error::BadManifest {
            uri: uri.clone(),
            reason: format!("its part {part_uri} cannot be read ({e})"),
        })?;
        let digest = shardline_lineage::Digest::of(&body);
        if body.len() as u64 != part.bytes || digest.as_str() != part.digest {
            return Err(Error::BadManifest {
                uri: uri.clone(),
                reason: format!(
                    "its part {part_uri} is not the one the index names (size or digest differs); rewrite the manifest"
                ),
            });
        }
        let m = parse_manifest(&part_uri, &body)?;
        if m.prefix != prefix {
            return Err(Error::BadManifest {
                uri: part_uri,
                reason: format!(
                    "has the prefix {}, the index {prefix}; rewrite the manifest",
                    m.prefix
                ),
            });
        }
        if m.keys.len() as u64 != part.keys {
            return Err(Error::BadManifest {
                uri: part_uri,
                reason: format!("holds {} keys, the index says {}", m.keys.len(), part.keys),
            });
        }
        keys.extend(m.keys);
    }
    Ok((Manifest { prefix, keys }, bytes))
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
