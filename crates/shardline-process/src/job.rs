//! A processing job: its inputs (read and validated before any work), its settings, and the
//! digest that tells a rerun whether an instance's earlier output is still valid.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use shardline_contract::sagemaker;
use shardline_lineage::{Digest, Hasher};
use shardline_store::{Location, Store};

use crate::Error;
use shardline_contract::distribute::Distribution;
use shardline_contract::recipe::Recipe;

/// One object to process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The store root the key is relative to (an index into [`Input::roots`]).
    pub root: usize,
    /// The key below that root.
    pub key: String,
    /// The class label.
    pub class: String,
    /// The label id.
    pub label: u32,
}

/// One channel's input.
#[derive(Debug, Clone)]
pub struct Input {
    /// The channel name (`train`, `validation`, `test`, or any name the user gives).
    pub channel: String,
    /// What the user named: a manifest or a store prefix.
    pub uri: String,
    /// The store URIs the records' keys are relative to.
    pub roots: Vec<String>,
    /// The objects, in manifest order.
    pub records: Vec<Record>,
    /// A digest of the input (the manifest's bytes, or the listing).
    pub digest: Digest,
}

impl Input {
    /// This input's entry in a lineage record: channel, URI, digest and object count.
    pub fn lineage_entry(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("channel".to_string(), self.channel.clone()),
            ("uri".to_string(), self.uri.clone()),
            ("digest".to_string(), self.digest.to_string()),
            ("objects".to_string(), self.records.len().to_string()),
        ])
    }

    /// The full URI of every record, the key the distribution sorts on.
    pub fn uris(&self) -> Vec<String> {
        self.records
            .iter()
            .map(|r| format!("{}{}", self.roots[r.root], r.key))
            .collect()
    }
}

/// The settings of a job that decide its outputs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// Number of instances.
    pub instances: usize,
    /// How objects are spread over them.
    pub distribution: Distribution,
    /// The built-in processor's recipe (unused with a script).
    pub recipe: Recipe,
    /// Seed of the augmentation.
    pub seed: u64,
    /// The channels the recipe's augmentations apply to; the others are processed without
    /// them. Empty without augmentations (and then left out of the job's digest, so jobs
    /// written before this field keep their digests).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub augment_channels: Vec<String>,
    /// Shards close once they pass this many bytes.
    pub shard_bytes: usize,
    /// The user's script, when it replaces the built-in processor.
    pub script: Option<String>,
    /// Fraction of objects that may be quarantined before the job fails.
    pub error_budget: f64,
}

/// A validated job.
#[derive(Debug, Clone)]
pub struct Job {
    /// The inputs, one per channel, in the order given.
    pub inputs: Vec<Input>,
    /// Label names by id.
    pub labels: Vec<String>,
    /// The settings.
    pub settings: Settings,
}

impl Job {
    /// The digest of everything that decides the outputs: inputs, labels and settings.
    pub fn digest(&self) -> Digest {
        let mut hasher = Hasher::new();
        for input in &self.inputs {
            hasher.update(input.channel.as_bytes());
            hasher.update(b"\0");
            hasher.update(input.digest.as_str().as_bytes());
            hasher.update(b"\n");
        }
        hasher.update(self.labels.join("\n").as_bytes());
        hasher.update(&serde_json::to_vec(&self.settings).unwrap_or_default());
        hasher.finish()
    }
}

/// Parses `CHANNEL=URL`.
pub fn parse_input_flag(text: &str) -> Result<(String, String), Error> {
    let (channel, url) = text.split_once('=').ok_or_else(|| Error::BadInput {
        input: text.to_string(),
        reason: "expected CHANNEL=URL, e.g. train=s3://bucket/datasets/pets/train.manifest".into(),
    })?;
    let channel = channel.trim();
    if channel.is_empty()
        || !channel
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::BadInput {
            input: text.to_string(),
            reason: "the channel name must be letters, digits, '-' or '_'".into(),
        });
    }
    Ok((channel.to_string(), url.trim().to_string()))
}

/// Checks that a key cannot escape the input or output root it is joined to.
pub fn check_key(input: &str, key: &str) -> Result<(), Error> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.contains('\\')
        || key.chars().any(char::is_control)
        || key
            .split('/')
            .any(|part| part == ".." || part == "." || part.is_empty());
    if bad {
        return Err(Error::BadInput {
            input: input.to_string(),
            reason: format!(
                "the key {key:?} is not a plain relative path (absolute, empty segments, `.` or `..`, a backslash or a control character); fix the manifest"
            ),
        });
    }
    Ok(())
}

/// Splits a full object URI into a store root (`s3://bucket/`, `file:///`, `memory://name/`) and
/// the key below it.
fn split_uri(uri: &str) -> Option<(String, String)> {
    for scheme in ["s3://", "memory://"] {
        if let Some(rest) = uri.strip_prefix(scheme) {
            let (bucket, key) = rest.split_once('/')?;
            return Some((format!("{scheme}{bucket}/"), key.to_string()));
        }
    }
    if let Some(path) = uri.strip_prefix("file:///") {
        return Some(("file:///".to_string(), path.to_string()));
    }
    uri.strip_prefix('/')
        .map(|path| ("file:///".to_string(), path.to_string()))
}

fn class_of(key: &str) -> &str {
    key.split('/').next().unwrap_or(key)
}

struct Raw {
    roots: Vec<String>,
    entries: Vec<(usize, String, String, Option<u32>)>,
    digest: Digest,
    labels_hint: Option<Vec<String>>,
}

/// Reads one input: a plain or augmented manifest, or a store prefix to list.
async fn read_input(channel: &str, url: &str) -> Result<Raw, Error> {
    let bad = |reason: String| Error::BadInput {
        input: format!("{channel}={url}"),
        reason,
    };
    if is_manifest_url(url) {
        let full = shardline_store::Location::parse(url)?.uri();
        let (dir, name) = full
            .trim_end_matches('/')
            .rsplit_once('/')
            .ok_or_else(|| bad("not a URL".into()))?;
        let store = Store::open(dir)?;
        let bytes = store.get(name).await.map_err(|e| match e {
            shardline_store::Error::NotFound { url } => {
                bad(format!("the manifest {url} does not exist"))
            }
            other => Error::Store(other),
        })?;
        let digest = Digest::of(&bytes);
        let labels_hint = match store.get_opt("labels.json").await? {
            // A hint only (the manifest's own records decide): the contract's type reads it.
            Some(labels) => serde_json::from_slice::<shardline_contract::model::Labels>(&labels)
                .ok()
                .map(|l| l.classes),
            None => None,
        };
        let trimmed = bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .map(|i| bytes[i]);
        // A manifest written in parts: its index names them (its digest covers theirs).
        let index = shardline_contract::manifest_stream::index_of(&store.uri_of(name), &bytes)?;
        if trimmed == Some(b'[') || index.is_some() {
            let manifest = match index {
                Some(_) => {
                    shardline_contract::manifest_stream::read_manifest(&store, name)
                        .await?
                        .0
                }
                None => sagemaker::parse_manifest(&store.uri_of(name), &bytes)?,
            };
            let entries = manifest
                .keys
                .into_iter()
                .map(|key| {
                    let class = class_of(&key).to_string();
                    (0, key, class, None)
                })
                .collect();
            return Ok(Raw {
                roots: vec![manifest.prefix],
                entries,
                digest,
                labels_hint,
            });
        }
        // Augmented manifest: JSON Lines with a `source-ref` (or any `-ref`) attribute.
        let mut roots: Vec<String> = Vec::new();
        let mut entries = Vec::new();
        for (line_no, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let value: serde_json::Value = serde_json::from_slice(line)
                .map_err(|e| bad(format!("line {} is not JSON ({e})", line_no + 1)))?;
            let uri = value
                .get("source-ref")
                .or_else(|| {
                    value
                        .as_object()
                        .and_then(|o| o.iter().find(|(k, _)| k.ends_with("-ref")).map(|(_, v)| v))
                })
                .and_then(|v| v.as_str())
                .ok_or_else(|| bad(format!("line {} has no source-ref", line_no + 1)))?;
            let (root, key) = split_uri(uri).ok_or_else(|| {
                bad(format!(
                    "line {}: {uri:?} is not an object URI",
                    line_no + 1
                ))
            })?;
            let root_index = match roots.iter().position(|r| *r == root) {
                Some(i) => i,
                None => {
                    roots.push(root);
                    roots.len() - 1
                }
            };
            let class = value
                .get("class")
                .and_then(|v| v.as_str())
                .map(str::to_string)
                // Without a class attribute, the folder holding the object names its class.
                .unwrap_or_else(|| key.rsplit('/').nth(1).unwrap_or("").to_string());
            let label = value
                .get("class-id")
                .and_then(|v| v.as_u64())
                .map(|v| v as u32);
            entries.push((root_index, key, class, label));
        }
        return Ok(Raw {
            roots,
            entries,
            digest,
            labels_hint,
        });
    }
    // A store prefix: every object below it, the first path component being the class.
    let store = Store::open(url)?;
    let mut objects = store.list_all("").await?;
    objects.retain(|o| !o.key.ends_with('/') && o.key.contains('/'));
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    let mut hasher = Hasher::new();
    for o in &objects {
        hasher.update(o.key.as_bytes());
        hasher.update(format!("\0{}\0{}\n", o.size, o.etag.as_deref().unwrap_or("")).as_bytes());
    }
    let entries = objects
        .into_iter()
        .map(|o| {
            let class = class_of(&o.key).to_string();
            (0, o.key, class, None)
        })
        .collect();
    Ok(Raw {
        roots: vec![store.uri()],
        entries,
        digest: hasher.finish(),
        labels_hint: None,
    })
}

/// Whether an input URL names a manifest file (else it is a store prefix).
fn is_manifest_url(url: &str) -> bool {
    url.ends_with(".manifest") || url.ends_with(".jsonl") || url.ends_with(".json")
}

/// Refuses an `--out` that overlaps an input prefix: outputs inside a prefix would be listed as
/// objects (a class named after the output folder) by the next run, and a prefix inside `--out`
/// could be overwritten by a channel's shards. Manifests list fixed keys, so they may live
/// anywhere. Pure: it compares locations, it reads nothing.
pub fn check_out(inputs: &[(String, String)], out: &Location) -> Result<(), Error> {
    for (channel, url) in inputs {
        if is_manifest_url(url) {
            continue;
        }
        let input = Location::parse(url)?;
        let what = if input.contains(out) {
            "`out` is inside this input prefix, so a later run would read the outputs as objects"
        } else if out.contains(&input) {
            "this input prefix is inside `out`, where outputs are written"
        } else {
            continue;
        };
        return Err(Error::BadInput {
            input: format!("{channel}={url}"),
            reason: format!(
                "{what}; give an `out` ({}) beside the input, not within it",
                out.uri()
            ),
        });
    }
    Ok(())
}

/// Refuses an `--out` that overlaps the objects of a loaded input: for a manifest, the roots its
/// keys are relative to (a manifest of `lake/` with `--out lake/circle/p` would write into the
/// lake, and the next listing would read the outputs as images).
pub fn check_out_roots(job: &Job, out: &Location) -> Result<(), Error> {
    for input in &job.inputs {
        for root in &input.roots {
            let root = Location::parse(root)?;
            // An augmented manifest's records are full URIs under the store's root: every
            // location is inside that, so only a root with a prefix says where the objects are.
            if root.prefix.is_empty() {
                continue;
            }
            if root.overlaps(out) {
                return Err(Error::BadInput {
                    input: format!("{}={}", input.channel, input.uri),
                    reason: format!(
                        "`out` {} overlaps {}, where this input's objects are; give an `out` beside the data lake, not within it",
                        out.uri(),
                        root.uri()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Reads and validates every input before any work: channels given once, manifests present and
/// non-empty, keys that cannot escape a root, the first object of each input reachable.
pub async fn load(inputs: &[(String, String)], settings: Settings) -> Result<Job, Error> {
    if inputs.is_empty() {
        return Err(Error::BadConfig(
            "give at least one `inputs` CHANNEL=URL".into(),
        ));
    }
    let mut seen = BTreeSet::new();
    for (channel, _) in inputs {
        if !seen.insert(channel.clone()) {
            return Err(Error::BadInput {
                input: channel.clone(),
                reason: "this channel is given twice; give each channel once".into(),
            });
        }
        // A channel's shards go to `<out>/<channel>/`, beside the instances' `logs/`.
        if channel == "logs" {
            return Err(Error::BadInput {
                input: channel.clone(),
                reason: "`logs` is where the instances' logs go; name the channel otherwise".into(),
            });
        }
    }
    if settings.instances == 0 {
        return Err(Error::BadConfig("`instances` must be at least 1".into()));
    }
    let mut raws = Vec::new();
    for (channel, url) in inputs {
        let raw = read_input(channel, url).await?;
        if raw.entries.is_empty() {
            return Err(Error::BadInput {
                input: format!("{channel}={url}"),
                reason: "it lists no objects; point it at a non-empty manifest or prefix".into(),
            });
        }
        let mut keys = std::collections::HashSet::new();
        for (root, key, _, _) in &raw.entries {
            check_key(&format!("{channel}={url}"), key)?;
            // The same object twice would be processed twice and weigh twice in training.
            if !keys.insert((*root, key.as_str())) {
                return Err(Error::BadInput {
                    input: format!("{channel}={url}"),
                    reason: format!(
                        "it lists {}{key} more than once; list each object once",
                        raw.roots[*root]
                    ),
                });
            }
        }
        // The first object must be reachable: a wrong prefix or credentials fail here, not later.
        let (root, key) = (&raw.roots[raw.entries[0].0], &raw.entries[0].1);
        let store = Store::open(root)?;
        if !store.exists(key).await.map_err(|e| Error::BadInput {
            input: format!("{channel}={url}"),
            reason: format!("its objects cannot be reached: {e}"),
        })? {
            return Err(Error::BadInput {
                input: format!("{channel}={url}"),
                reason: format!(
                    "its first object {root}{key} does not exist; is the manifest's prefix right?"
                ),
            });
        }
        raws.push(raw);
    }
    // Label ids: the manifest step's labels.json when there is one, else the sorted class names.
    let labels: Vec<String> = match raws.iter().find_map(|r| r.labels_hint.clone()) {
        Some(labels) => labels,
        None => raws
            .iter()
            .flat_map(|r| r.entries.iter().map(|(_, _, class, _)| class.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    };
    let ids: HashMap<&str, u32> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i as u32))
        .collect();
    let mut built = Vec::new();
    for ((channel, url), raw) in inputs.iter().zip(raws) {
        let mut records = Vec::with_capacity(raw.entries.len());
        for (root, key, class, label) in raw.entries {
            let label = match label.or_else(|| ids.get(class.as_str()).copied()) {
                Some(label) => label,
                None => {
                    return Err(Error::BadInput {
                        input: format!("{channel}={url}"),
                        reason: format!("class {class:?} of {key} is not in labels.json"),
                    });
                }
            };
            records.push(Record {
                root,
                key,
                class,
                label,
            });
        }
        built.push(Input {
            channel: channel.clone(),
            uri: url.clone(),
            roots: raw.roots,
            records,
            digest: raw.digest,
        });
    }
    Ok(Job {
        inputs: built,
        labels,
        settings,
    })
}

/// Counts per class of a list of records, for reports.
pub fn class_counts(records: &[&Record]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for r in records {
        *counts.entry(r.class.clone()).or_default() += 1;
    }
    counts
}

#[cfg(test)]
mod tests {

    #[test]
    fn out_may_not_overlap_an_input_prefix() {
        let inputs = |url: &str| vec![("train".to_string(), url.to_string())];
        let out = Location::parse("/data/pets/processed").expect("out");
        // Inside the prefix, the prefix itself, and a prefix inside --out are refused.
        for url in [
            "/data/pets",
            "/data/pets/processed",
            "/data/pets/processed/train",
            "/",
        ] {
            let err = check_out(&inputs(url), &out).expect_err(url).to_string();
            assert!(
                err.contains(&format!("train={url}")) && err.contains("`out`"),
                "{err}"
            );
        }
        // Beside it, a sibling whose name only starts alike, another store, or a manifest inside.
        for url in [
            "/data/pets-raw",
            "/data/pet",
            "s3://bucket/data/pets",
            "/data/pets/train.manifest",
        ] {
            check_out(&inputs(url), &out).expect(url);
        }
        let s3 = Location::parse("s3://bucket/pets/out").expect("out");
        assert!(check_out(&inputs("s3://bucket/pets"), &s3).is_err());
        assert!(check_out(&inputs("s3://other/pets"), &s3).is_ok());
    }

    use super::*;

    #[test]
    fn input_flags_and_keys_are_checked() {
        assert_eq!(
            parse_input_flag("train=s3://b/x.manifest").expect("ok"),
            ("train".into(), "s3://b/x.manifest".into())
        );
        assert!(parse_input_flag("s3://b/x.manifest").is_err());
        assert!(parse_input_flag("tr ain=x").is_err());
        for bad in ["../etc/passwd", "/abs", "a//b", "a/./b", "a/../../b", ""] {
            assert!(check_key("i", bad).is_err(), "{bad}");
        }
        assert!(check_key("i", "cat/1.jpg").is_ok());
    }

    #[test]
    fn object_uris_split_into_root_and_key() {
        assert_eq!(
            split_uri("s3://b/p/cat/1.jpg"),
            Some(("s3://b/".into(), "p/cat/1.jpg".into()))
        );
        assert_eq!(
            split_uri("file:///d/cat/1.jpg"),
            Some(("file:///".into(), "d/cat/1.jpg".into()))
        );
        assert_eq!(
            split_uri("/d/cat/1.jpg"),
            Some(("file:///".into(), "d/cat/1.jpg".into()))
        );
        assert_eq!(split_uri("gs://b/x"), None);
    }
}
