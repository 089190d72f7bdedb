//! A processing job: its inputs (read and validated before any work), its settings, and the
//! digest that tells a rerun whether an instance's earlier output is still valid.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use shardline_contract::{distribute, manifest_stream};
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
    /// The objects.
    pub objects: Objects,
    /// A digest of the input (the manifest's bytes, or the listing).
    pub digest: Digest,
}

/// Where an input's objects are, for the instances to take their shares from.
#[derive(Debug, Clone)]
pub enum Objects {
    /// In memory, in manifest order: a listing, an augmented manifest, or a manifest whose keys
    /// are not sorted (the distribution rule sorts them, which needs them all).
    Listed(Vec<Record>),
    /// A plain manifest (or an index of parts) whose keys are sorted byte-wise and unique, as the
    /// manifest step writes them: each instance streams its share from it (see
    /// `shardline_contract::manifest_stream::Share`), so no process holds the list.
    Sorted {
        /// The folder (a store URL) holding the manifest.
        dir: String,
        /// The manifest's name in it.
        name: String,
        /// Its keys.
        keys: u64,
    },
}

impl Input {
    /// This input's entry in a lineage record: channel, URI, digest and object count.
    pub fn lineage_entry(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("channel".to_string(), self.channel.clone()),
            ("uri".to_string(), self.uri.clone()),
            ("digest".to_string(), self.digest.to_string()),
            ("objects".to_string(), self.len().to_string()),
        ])
    }

    /// How many objects the input names.
    pub fn len(&self) -> u64 {
        match &self.objects {
            Objects::Listed(records) => records.len() as u64,
            Objects::Sorted { keys, .. } => *keys,
        }
    }

    /// Whether it names none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An instance's share of one input, record by record (see [`Job::share`]).
pub struct ShareRecords {
    inner: ShareInner,
    ids: HashMap<String, u32>,
    input: String,
    /// The input's digest, which the streamed manifest must still have.
    digest: Digest,
}

enum ShareInner {
    Listed(std::vec::IntoIter<Record>),
    Sorted(manifest_stream::Share),
}

/// A streamed manifest that is no longer the one the job read.
fn changed(input: &str) -> Error {
    Error::BadInput {
        input: input.to_string(),
        reason: "the manifest changed while the job ran; rerun the job".into(),
    }
}

impl ShareRecords {
    /// The next record of the share, `None` at its end.
    pub async fn next(&mut self) -> Result<Option<Record>, Error> {
        match &mut self.inner {
            ShareInner::Listed(records) => Ok(records.next()),
            ShareInner::Sorted(share) => {
                let Some(key) = share.next().await? else {
                    if share.keys().digest().is_some_and(|d| d != self.digest) {
                        return Err(changed(&self.input));
                    }
                    return Ok(None);
                };
                let class = class_of(&key).to_string();
                let Some(&label) = self.ids.get(&class) else {
                    return Err(Error::BadInput {
                        input: self.input.clone(),
                        reason: format!(
                            "class {class:?} of {key} is not in the job's labels, though it was when the job began; rerun the job"
                        ),
                    });
                };
                Ok(Some(Record {
                    root: 0,
                    key,
                    class,
                    label,
                }))
            }
        }
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
    /// How many objects instance `rank` processes from `input`.
    pub fn share_len(&self, input: &Input, rank: usize) -> u64 {
        let (n, distribution) = (self.settings.instances, self.settings.distribution);
        manifest_stream::share_len(input.len(), rank, n, distribution)
    }

    /// Instance `rank`'s share of `input`, in sorted-URI order
    /// ([`shardline_contract::distribute`]'s rule): from memory, or streamed from a sorted
    /// manifest.
    pub async fn share(&self, input: &Input, rank: usize) -> Result<ShareRecords, Error> {
        let (n, distribution) = (self.settings.instances, self.settings.distribution);
        let inner = match &input.objects {
            Objects::Listed(records) => {
                let uris: Vec<String> = records
                    .iter()
                    .map(|r| format!("{}{}", input.roots[r.root], r.key))
                    .collect();
                let mine: Vec<Record> = distribute::share(&uris, rank, n, distribution)
                    .into_iter()
                    .map(|p| records[p].clone())
                    .collect();
                ShareInner::Listed(mine.into_iter())
            }
            Objects::Sorted { dir, name, .. } => {
                let store = Store::open(dir)?;
                match manifest_stream::open(&store, name).await? {
                    manifest_stream::Opened::Keys(keys) => {
                        // An index's digest is known at once; a plain manifest's at its end.
                        if keys.digest().is_some_and(|d| d != input.digest) {
                            return Err(changed(&format!("{}={}", input.channel, input.uri)));
                        }
                        ShareInner::Sorted(manifest_stream::Share::new(keys, rank, n, distribution))
                    }
                    manifest_stream::Opened::Other(_) => {
                        return Err(Error::BadInput {
                            input: format!("{}={}", input.channel, input.uri),
                            reason: "it is no longer a plain manifest, though it was when the job began; rerun the job".into(),
                        });
                    }
                }
            }
        };
        Ok(ShareRecords {
            inner,
            ids: self
                .labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), i as u32))
                .collect(),
            input: format!("{}={}", input.channel, input.uri),
            digest: input.digest.clone(),
        })
    }

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
    objects: RawObjects,
    digest: Digest,
    labels_hint: Option<Vec<String>>,
}

enum RawObjects {
    /// (root, key, class, label) in input order.
    Entries(Vec<(usize, String, String, Option<u32>)>),
    /// A sorted plain manifest or index, checked in one streamed pass.
    Sorted {
        dir: String,
        name: String,
        keys: u64,
        /// Each class and its first key.
        classes: BTreeMap<String, String>,
        first: Option<String>,
    },
}

impl RawObjects {
    fn len(&self) -> u64 {
        match self {
            RawObjects::Entries(entries) => entries.len() as u64,
            RawObjects::Sorted { keys, .. } => *keys,
        }
    }
}

/// What one streamed pass over a plain manifest found: `None` when its keys are not sorted
/// byte-wise (then it is read into memory, where the distribution rule sorts it).
struct SortedPass {
    keys: u64,
    classes: BTreeMap<String, String>,
    first: Option<String>,
    prefix: String,
}

/// Checks every key of a plain manifest or index in one pass that holds one key at a time:
/// each key a plain relative path, in byte-wise order, each once; the classes and their first
/// keys collected.
async fn sorted_pass(
    input: &str,
    keys: &mut manifest_stream::Keys,
) -> Result<Option<SortedPass>, Error> {
    let mut pass = SortedPass {
        keys: 0,
        classes: BTreeMap::new(),
        first: None,
        prefix: String::new(),
    };
    let mut last = String::new();
    let mut failure: Option<Error> = None;
    let mut unsorted = false;
    let mut twice: Option<String> = None;
    loop {
        let pulled = keys
            .pull(&mut |key| {
                if let Err(e) = check_key(input, key) {
                    failure = Some(e);
                    return Err(String::new());
                }
                if pass.keys > 0 && last.as_str() >= key {
                    if last == key {
                        twice = Some(key.to_string());
                    } else {
                        unsorted = true;
                    }
                    return Err(String::new());
                }
                let class = class_of(key);
                if !pass.classes.contains_key(class) {
                    pass.classes.insert(class.to_string(), key.to_string());
                }
                if pass.first.is_none() {
                    pass.first = Some(key.to_string());
                }
                pass.keys += 1;
                last.clear();
                last.push_str(key);
                Ok(())
            })
            .await;
        match pulled {
            Ok(true) => continue,
            Ok(false) => break,
            Err(_) if unsorted => return Ok(None),
            Err(_) if twice.is_some() => {
                return Err(Error::BadInput {
                    input: input.to_string(),
                    reason: format!(
                        "it lists {}{} more than once; list each object once",
                        keys.prefix().unwrap_or_default(),
                        twice.unwrap_or_default()
                    ),
                });
            }
            Err(e) => return Err(failure.take().unwrap_or(Error::Contract(e))),
        }
    }
    pass.prefix = keys.prefix().unwrap_or_default().to_string();
    Ok(Some(pass))
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
        let not_found = |e: shardline_contract::Error| match e {
            shardline_contract::Error::Store(shardline_store::Error::NotFound { url }) => {
                bad(format!("the manifest {url} does not exist"))
            }
            other => Error::Contract(other),
        };
        let opened = manifest_stream::open(&store, name)
            .await
            .map_err(not_found)?;
        let labels_hint = match store.get_opt("labels.json").await? {
            // A hint only (the manifest's own records decide): the contract's type reads it.
            Some(labels) => serde_json::from_slice::<shardline_contract::model::Labels>(&labels)
                .ok()
                .map(|l| l.classes),
            None => None,
        };
        let bytes = match opened {
            manifest_stream::Opened::Keys(mut keys) => {
                let input = format!("{channel}={url}");
                if let Some(pass) = sorted_pass(&input, &mut keys).await? {
                    // A manifest in parts: its index's digest covers theirs.
                    let digest = keys
                        .digest()
                        .ok_or_else(|| bad("the manifest was not read to its end".into()))?;
                    return Ok(Raw {
                        roots: vec![pass.prefix],
                        objects: RawObjects::Sorted {
                            dir: dir.to_string(),
                            name: name.to_string(),
                            keys: pass.keys,
                            classes: pass.classes,
                            first: pass.first,
                        },
                        digest,
                        labels_hint,
                    });
                }
                // Not sorted: the distribution rule sorts the whole list, in memory.
                tracing::info!(
                    input = %input,
                    "the manifest's keys are not sorted byte-wise; reading it into memory (sort it to stream it)"
                );
                let (manifest, bytes) = manifest_stream::read_manifest(&store, name)
                    .await
                    .map_err(not_found)?;
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
                    objects: RawObjects::Entries(entries),
                    digest: Digest::of(&bytes),
                    labels_hint,
                });
            }
            manifest_stream::Opened::Other(bytes) => bytes,
        };
        let digest = Digest::of(&bytes);
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
            objects: RawObjects::Entries(entries),
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
        objects: RawObjects::Entries(entries),
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
        let input = format!("{channel}={url}");
        if raw.objects.len() == 0 {
            return Err(Error::BadInput {
                input,
                reason: "it lists no objects; point it at a non-empty manifest or prefix".into(),
            });
        }
        let first = match &raw.objects {
            RawObjects::Entries(entries) => {
                let mut keys = std::collections::HashSet::new();
                for (root, key, _, _) in entries {
                    check_key(&input, key)?;
                    // The same object twice would be processed twice and weigh twice in training.
                    if !keys.insert((*root, key.as_str())) {
                        return Err(Error::BadInput {
                            input,
                            reason: format!(
                                "it lists {}{key} more than once; list each object once",
                                raw.roots[*root]
                            ),
                        });
                    }
                }
                entries
                    .first()
                    .map(|(root, key, _, _)| (*root, key.clone()))
            }
            // Checked key by key in the pass that read it.
            RawObjects::Sorted { first, .. } => first.clone().map(|key| (0, key)),
        };
        // The first object must be reachable: a wrong prefix or credentials fail here, not later.
        if let Some((root, key)) = first {
            let root = &raw.roots[root];
            let store = Store::open(root)?;
            if !store.exists(&key).await.map_err(|e| Error::BadInput {
                input: input.clone(),
                reason: format!("its objects cannot be reached: {e}"),
            })? {
                return Err(Error::BadInput {
                    input,
                    reason: format!(
                        "its first object {root}{key} does not exist; is the manifest's prefix right?"
                    ),
                });
            }
        }
        raws.push(raw);
    }
    // Label ids: the manifest step's labels.json when there is one, else the sorted class names.
    let labels: Vec<String> = match raws.iter().find_map(|r| r.labels_hint.clone()) {
        Some(labels) => labels,
        None => {
            let mut classes = BTreeSet::new();
            for raw in &raws {
                match &raw.objects {
                    RawObjects::Entries(entries) => {
                        classes.extend(entries.iter().map(|(_, _, class, _)| class.clone()))
                    }
                    RawObjects::Sorted { classes: c, .. } => classes.extend(c.keys().cloned()),
                }
            }
            classes.into_iter().collect()
        }
    };
    let ids: HashMap<&str, u32> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i as u32))
        .collect();
    let mut built = Vec::new();
    for ((channel, url), raw) in inputs.iter().zip(raws) {
        let not_labelled = |class: &str, key: &str| Error::BadInput {
            input: format!("{channel}={url}"),
            reason: format!("class {class:?} of {key} is not in labels.json"),
        };
        let objects = match raw.objects {
            RawObjects::Entries(entries) => {
                let mut records = Vec::with_capacity(entries.len());
                for (root, key, class, label) in entries {
                    let Some(label) = label.or_else(|| ids.get(class.as_str()).copied()) else {
                        return Err(not_labelled(&class, &key));
                    };
                    records.push(Record {
                        root,
                        key,
                        class,
                        label,
                    });
                }
                Objects::Listed(records)
            }
            RawObjects::Sorted {
                dir,
                name,
                keys,
                classes,
                ..
            } => {
                if let Some((class, key)) =
                    classes.iter().find(|(c, _)| !ids.contains_key(c.as_str()))
                {
                    return Err(not_labelled(class, key));
                }
                Objects::Sorted { dir, name, keys }
            }
        };
        built.push(Input {
            channel: channel.clone(),
            uri: url.clone(),
            roots: raw.roots,
            objects,
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
