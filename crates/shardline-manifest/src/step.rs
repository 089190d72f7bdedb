//! The manifest step: list the source, build the table, assign channels, commit the outputs.
//!
//! This is the I/O shell around the pure modules: it lists through [`Store`], hands plain values
//! to [`crate::assign`], [`crate::table`] and [`crate::sagemaker`], and publishes the files with a
//! [`Commit`] whose last file is `lineage.json`.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use futures::stream::{StreamExt, TryStreamExt};
use shardline_lineage::{Digest, FileRecord, Hasher, PRODUCER};
use shardline_store::commit::{self, Commit};
use shardline_store::{Object, Store};
use tracing::{Instrument, info_span};

use crate::Error;
use crate::assign::assign_class;
use crate::record::{self, Labels, ListingRecord, ManifestLineage, Settings};
use crate::split::{Channel, Split};
use crate::table::{self, Row};
use shardline_contract::owner::{self, Stage};
use shardline_contract::sagemaker::{self, AugmentedRecord};

/// The name of the lineage record in an output.
pub const LINEAGE: &str = "lineage.json";
/// The names of the files the step may write, besides the per-channel manifests.
const TABLE_FILES: [&str; 3] = ["dataset.parquet", "dataset.csv", "labels.json"];

/// The validated settings of one manifest run.
#[derive(Debug, Clone)]
pub struct Config {
    /// How the objects are split into channels.
    pub split: Split,
    /// The seed of the channel hash.
    pub seed: u64,
    /// Each class needs at least this many objects in every channel.
    pub min_per_class: usize,
    /// Replace an output that holds a different dataset.
    pub force: bool,
    /// Also write augmented (JSON Lines) manifests.
    pub augmented: bool,
    /// How many class prefixes are listed at once.
    pub concurrency: usize,
    /// A channel of more keys is written as parts of this many keys each (`NAME.part-00000`, ...,
    /// each a SageMaker manifest) with an index at `NAME.manifest` that every Shardline command
    /// taking a manifest reads.
    pub part_keys: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            split: Split::default(),
            seed: 42,
            min_per_class: 1,
            force: false,
            augmented: false,
            concurrency: 32,
            part_keys: 10_000_000,
        }
    }
}

/// Callbacks through which the step reports progress; the CLI draws them.
pub trait Progress: Send + Sync {
    /// The class prefixes were discovered.
    fn classes_found(&self, _classes: usize) {}
    /// One class was listed, holding `objects` objects.
    fn class_listed(&self, _objects: usize) {}
    /// Listing is done; the outputs are being written.
    fn writing(&self) {}
}

/// A progress sink that reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// What a run did to its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new dataset was written.
    Created,
    /// The output already held exactly this dataset; nothing was written.
    Unchanged,
    /// An earlier dataset of the same source and settings was updated; objects already in it kept
    /// their channels.
    Updated {
        /// Objects new since the earlier run.
        added: usize,
        /// Objects of the earlier run that are gone from the source.
        removed: usize,
    },
    /// A different dataset was replaced (`--force`).
    Replaced,
}

/// The summary of a run.
#[derive(Debug, Clone)]
pub struct Report {
    /// What happened to the output.
    pub outcome: Outcome,
    /// The output URI.
    pub out: String,
    /// The record that was written (or found).
    pub lineage: ManifestLineage,
}

impl Report {
    /// What the run did, as lines for a person; `seconds` is how long it took.
    pub fn summary(&self, seconds: f64) -> Vec<String> {
        let lineage = &self.lineage;
        let what = match self.outcome {
            Outcome::Created => "written".to_string(),
            Outcome::Unchanged => "unchanged (already up to date)".to_string(),
            Outcome::Replaced => "replaced (`force`)".to_string(),
            Outcome::Updated { added, removed } => format!(
                "updated: {added} new object(s), {removed} removed; existing objects kept their channels"
            ),
        };
        let totals: Vec<String> = lineage
            .totals
            .iter()
            .map(|(c, n)| format!("{c}={n}"))
            .collect();
        let mut lines = vec![
            format!(
                "manifest {what}: {} objects in {} classes from {} in {seconds:.2}s ({:.0} objects/s)",
                lineage.listing.objects,
                lineage.listing.classes,
                lineage.source,
                lineage.listing.objects as f64 / seconds.max(1e-9)
            ),
            format!("  channels: {}", totals.join(" ")),
            format!("  outputs:  {}", self.out),
        ];
        lines.extend(
            lineage
                .outputs
                .keys()
                .map(|name| format!("            {name}")),
        );
        lines.push("            lineage.json".into());
        lines
    }
}

/// Runs the manifest step from `source` to `out`.
pub async fn run(
    source: &Store,
    out: &Store,
    config: &Config,
    progress: &dyn Progress,
) -> Result<Report, Error> {
    let span = info_span!("manifest", source = %source.uri(), out = %out.uri());
    run_in_span(source, out, config, progress)
        .instrument(span)
        .await
}

async fn run_in_span(
    source: &Store,
    out: &Store,
    config: &Config,
    progress: &dyn Progress,
) -> Result<Report, Error> {
    check_locations(source, out)?;
    let started = std::time::Instant::now();
    let listing = list_source(source, config.concurrency, progress).await?;
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "listed");

    commit::recover(out).await?;
    // A location that holds another stage's output is refused, even with --force; this step's
    // own record decides between update, unchanged and replace below.
    let job = Digest::of(format!("{}\n{}", source.uri(), config.seed).as_bytes());
    owner::claim(out, Stage::Manifest, job.as_str(), true).await?;
    let existing = read_existing(out, source, config).await?;
    progress.writing();

    let labels = Labels::new(listing.iter().map(|(c, _)| c.clone()).collect());
    let previous_channels = existing.as_ref().map(|e| &e.channels);
    let (rows, counts) = build_rows(listing, &labels, config, previous_channels)?;
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "assigned");

    let outputs = render(source, &rows, &labels, config)?;
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "rendered");
    let mut lineage = lineage_record(source, config, &rows, &labels, &counts, &outputs);
    let outcome = match &existing {
        None => Outcome::Created,
        Some(e) if e.replaced => Outcome::Replaced,
        Some(e) => {
            let added = rows
                .iter()
                .filter(|r| !e.channels.contains_key(&r.key))
                .count();
            let removed = e.channels.len() + added - rows.len();
            if added == 0 && removed == 0 {
                lineage.previous = e.record.previous.clone();
            } else {
                lineage.previous = Some(Digest::of(&e.bytes));
            }
            Outcome::Updated { added, removed }
        }
    };
    let lineage_bytes = record::to_json(&lineage);
    if let Some(e) = &existing
        && e.bytes == lineage_bytes
    {
        return Ok(Report {
            outcome: Outcome::Unchanged,
            out: out.uri(),
            lineage,
        });
    }

    let mut tx = Commit::begin(out);
    // Files the new output no longer has (an augmented manifest, a dropped channel) go too.
    for (name, bytes) in outputs {
        tx.stage(&name, Bytes::from(bytes)).await?;
    }
    // The owner record, then the lineage record last: the output is complete once that is in.
    let (owner_key, owner_record) = owner::finished(Stage::Manifest, job.as_str())?;
    tx.stage(owner_key, Bytes::from(owner_record)).await?;
    tx.stage(LINEAGE, Bytes::from(lineage_bytes)).await?;
    tx.publish().await?;
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "committed");
    if let Some(e) = &existing {
        for stale in e.record.outputs.keys() {
            if !lineage.outputs.contains_key(stale) {
                out.delete(stale).await?;
            }
        }
    }
    Ok(Report {
        outcome,
        out: out.uri(),
        lineage,
    })
}

fn check_locations(source: &Store, out: &Store) -> Result<(), Error> {
    if source.location().contains(out.location()) {
        return Err(Error::OutputTaken {
            out_uri: out.uri(),
            what: format!(
                "inside the source {} (its files would be listed as a class)",
                source.uri()
            ),
        });
    }
    Ok(())
}

/// Lists every class prefix concurrently. Returns the classes in label order with their
/// objects sorted by key.
async fn list_source(
    source: &Store,
    concurrency: usize,
    progress: &dyn Progress,
) -> Result<Vec<(String, Vec<Object>)>, Error> {
    let missing = || Error::MissingSource {
        source_uri: source.uri(),
    };
    let level = match source.list_level("").await {
        Ok(level) => level,
        Err(shardline_store::Error::NotFound { .. }) => return Err(missing()),
        Err(e) => return Err(e.into()),
    };
    if level.prefixes.is_empty() && level.objects.is_empty() {
        if let Some(dir) = source.location().local_path()
            && !dir.is_dir()
        {
            return Err(missing());
        }
        return Err(Error::EmptySource {
            source_uri: source.uri(),
        });
    }
    if !level.objects.is_empty() {
        let examples: Vec<&str> = level
            .objects
            .iter()
            .take(3)
            .map(|o| o.key.as_str())
            .collect();
        return Err(Error::Unlabelled {
            source_uri: source.uri(),
            count: level.objects.len(),
            examples: examples.join(", "),
        });
    }
    if let [class] = level.prefixes.as_slice() {
        return Err(Error::OneClass {
            source_uri: source.uri(),
            class: class.clone(),
        });
    }
    progress.classes_found(level.prefixes.len());
    let mut classes: Vec<(String, Vec<Object>)> = futures::stream::iter(level.prefixes)
        .map(|class| async move {
            let mut objects = source.list_all(&class).await?;
            // Zero-byte "folder" markers that some S3 tools create are not objects.
            objects.retain(|o| !o.key.ends_with('/'));
            objects.sort_unstable_by(|a, b| a.key.cmp(&b.key));
            progress.class_listed(objects.len());
            Ok::<_, Error>((class, objects))
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    classes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    // A key is written into JSON manifests, Parquet, shard names and URLs; one with a control
    // character or a backslash does not come back the same way from every store.
    let bad: Vec<&str> = classes
        .iter()
        .flat_map(|(_, objects)| objects.iter().map(|o| o.key.as_str()))
        .filter(|k| k.chars().any(|c| c.is_control() || c == '\\'))
        .collect();
    if !bad.is_empty() {
        return Err(Error::BadKeys {
            source_uri: source.uri(),
            count: bad.len(),
            examples: bad
                .iter()
                .take(3)
                .map(|k| format!("{k:?}"))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(classes)
}

/// What an earlier run left at the output.
struct Existing {
    bytes: Vec<u8>,
    record: ManifestLineage,
    channels: HashMap<String, Channel>,
    /// The earlier dataset differs and is being replaced, so its channels are not kept.
    replaced: bool,
}

async fn read_existing(
    out: &Store,
    source: &Store,
    config: &Config,
) -> Result<Option<Existing>, Error> {
    let Some(bytes) = out.get_opt(LINEAGE).await? else {
        for name in TABLE_FILES
            .iter()
            .map(|n| n.to_string())
            .chain(Channel::ALL.iter().map(|c| format!("{c}.manifest")))
        {
            if !config.force && out.exists(&name).await? {
                return Err(Error::OutputTaken {
                    out_uri: out.uri(),
                    what: format!("({name}) without a Shardline lineage record"),
                });
            }
        }
        return Ok(None);
    };
    let record: ManifestLineage =
        match shardline_contract::lineage::parse(&out.uri_of(LINEAGE), &bytes) {
            Ok(record) => record,
            Err(_) if config.force => return Ok(None),
            Err(e) => {
                return Err(Error::OutputTaken {
                    out_uri: out.uri(),
                    what: format!("whose lineage.json cannot be used ({e})"),
                });
            }
        };
    let settings = settings(config);
    let differs = if record.source != source.uri() {
        Some(format!("of another source ({})", record.source))
    } else if record.settings.seed != settings.seed || record.settings.split != settings.split {
        Some(format!(
            "with other settings (seed {}, split {:?})",
            record.settings.seed, record.settings.split
        ))
    } else {
        None
    };
    if let Some(what) = differs {
        if !config.force {
            return Err(Error::OutputTaken {
                out_uri: out.uri(),
                what,
            });
        }
        return Ok(Some(Existing {
            bytes: bytes.to_vec(),
            record,
            channels: HashMap::new(),
            replaced: true,
        }));
    }
    // Same source and settings: keep the channel of every object already assigned.
    let mut channels = HashMap::new();
    for channel in Channel::ALL {
        let name = format!("{channel}.manifest");
        let Some(file) = record.outputs.get(&name) else {
            continue;
        };
        let content = out.get_opt(&name).await?.unwrap_or_default();
        if !file.matches(&content) {
            if config.force {
                return Ok(None);
            }
            return Err(Error::OutputTampered {
                out_uri: out.uri(),
                file: name,
            });
        }
        let manifest = match shardline_contract::manifest_stream::read_manifest(out, &name).await {
            Ok((manifest, _)) => manifest,
            // A part changed or deleted since the commit: rebuilt from scratch with force.
            Err(_) if config.force => return Ok(None),
            Err(_) => {
                return Err(Error::OutputTampered {
                    out_uri: out.uri(),
                    file: name,
                });
            }
        };
        channels.extend(manifest.keys.into_iter().map(|key| (key, channel)));
    }
    Ok(Some(Existing {
        bytes: bytes.to_vec(),
        record,
        channels,
        replaced: false,
    }))
}

type Counts = BTreeMap<String, BTreeMap<String, u64>>;

fn build_rows(
    listing: Vec<(String, Vec<Object>)>,
    labels: &Labels,
    config: &Config,
    previous: Option<&HashMap<String, Channel>>,
) -> Result<(Vec<Row>, Counts), Error> {
    let total: usize = listing.iter().map(|(_, objects)| objects.len()).sum();
    let mut rows = Vec::with_capacity(total);
    let mut counts = Counts::new();
    let channels: Vec<Channel> = config.split.channels().collect();
    for (label, (class, objects)) in listing.into_iter().enumerate() {
        let keys: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
        let prior: Vec<Option<usize>> = keys
            .iter()
            .map(|k| {
                previous
                    .and_then(|p| p.get(*k))
                    .and_then(|c| config.split.index_of(*c))
            })
            .collect();
        let assigned = assign_class(
            &keys,
            &prior,
            &config.split,
            config.seed,
            config.min_per_class,
        )
        .map_err(|short| Error::TooFewObjects {
            class: class.clone(),
            objects: short.objects,
            counts: channels
                .iter()
                .zip(&short.counts)
                .map(|(c, n)| format!("{c}={n}"))
                .collect::<Vec<_>>()
                .join(","),
            min: config.min_per_class,
        })?;
        let class_counts = counts.entry(labels.classes[label].clone()).or_default();
        for channel in &channels {
            class_counts.insert(channel.name().to_string(), 0);
        }
        drop(keys);
        // The listing is consumed, so its strings move into the table rather than being copied.
        for (object, index) in objects.into_iter().zip(assigned) {
            let channel = channels[index];
            *class_counts.entry(channel.name().to_string()).or_default() += 1;
            rows.push(Row {
                key: object.key,
                label: label as u32,
                channel,
                size: object.size,
                etag: object.etag,
                last_modified_us: object.last_modified_us,
            });
        }
    }
    Ok((rows, counts))
}

fn settings(config: &Config) -> Settings {
    Settings {
        seed: config.seed,
        split: config
            .split
            .parts()
            .iter()
            .map(|(c, f)| (c.name().to_string(), *f))
            .collect(),
        min_per_class: config.min_per_class,
        augmented: config.augmented,
    }
}

/// A channel's manifest: one file, or parts of `part_keys` keys and their index (the index last,
/// at `name`).
fn channel_manifest(
    name: &str,
    prefix: &str,
    keys: &[&str],
    part_keys: usize,
) -> Vec<(String, Vec<u8>)> {
    use shardline_contract::manifest_stream::{ManifestIndex, Part, index_bytes, part_name};
    if keys.len() <= part_keys.max(1) {
        return vec![(
            name.to_string(),
            sagemaker::write_manifest(prefix, keys.iter().copied()),
        )];
    }
    let mut files = Vec::new();
    let mut parts = Vec::new();
    for (i, chunk) in keys.chunks(part_keys.max(1)).enumerate() {
        let bytes = sagemaker::write_manifest(prefix, chunk.iter().copied());
        let file = part_name(name, i);
        parts.push(Part {
            manifest: file.clone(),
            keys: chunk.len() as u64,
            bytes: bytes.len() as u64,
            digest: shardline_lineage::Digest::of(&bytes).as_str().to_string(),
        });
        files.push((file, bytes));
    }
    let index = ManifestIndex {
        shardline_manifest_index: 1,
        prefix: prefix.to_string(),
        keys: keys.len() as u64,
        parts,
    };
    files.push((name.to_string(), index_bytes(&index)));
    files
}

/// Renders every output file but the lineage record, in commit order.
fn render(
    source: &Store,
    rows: &[Row],
    labels: &Labels,
    config: &Config,
) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let prefix = source.uri();
    // The table encodings are the expensive part: Parquet on one thread, the rest on this one.
    std::thread::scope(|scope| {
        let parquet = scope.spawn(|| table::to_parquet(rows, &labels.classes));
        let mut files = Vec::new();
        for channel in config.split.channels() {
            let mut keys: Vec<&str> = rows
                .iter()
                .filter(|r| r.channel == channel)
                .map(|r| r.key.as_str())
                .collect();
            // Byte-wise order (rows are class by class, and class `a-b` sorts before `a/`): the
            // stages stream their shares from a sorted manifest instead of holding it.
            keys.sort_unstable();
            files.extend(channel_manifest(
                &format!("{channel}.manifest"),
                &prefix,
                &keys,
                config.part_keys,
            ));
            if config.augmented {
                let uris: Vec<(String, &Row)> = rows
                    .iter()
                    .filter(|r| r.channel == channel)
                    .map(|r| (format!("{prefix}{}", r.key), r))
                    .collect();
                let bytes =
                    sagemaker::write_augmented(uris.iter().map(|(uri, r)| AugmentedRecord {
                        source_ref: uri,
                        class: &labels.classes[r.label as usize],
                        class_id: r.label,
                    }));
                files.push((format!("{channel}.augmented.manifest"), bytes));
            }
        }
        files.push((
            "dataset.csv".to_string(),
            table::to_csv(rows, &labels.classes)?,
        ));
        files.push(("labels.json".to_string(), record::to_json(labels)));
        let parquet = parquet.join().map_err(|_| Error::Encode {
            file: "dataset.parquet".into(),
            reason: "the encoder thread panicked".into(),
        })??;
        files.push(("dataset.parquet".to_string(), parquet));
        Ok(files)
    })
}

fn lineage_record(
    source: &Store,
    config: &Config,
    rows: &[Row],
    labels: &Labels,
    counts: &Counts,
    outputs: &[(String, Vec<u8>)],
) -> ManifestLineage {
    let mut hasher = Hasher::new();
    let mut bytes = 0u64;
    for row in rows {
        hasher.update(row.key.as_bytes());
        hasher.update(b"\0");
        hasher.update(row.size.to_string().as_bytes());
        hasher.update(b"\0");
        hasher.update(row.etag.as_deref().unwrap_or("").as_bytes());
        hasher.update(b"\n");
        bytes += row.size;
    }
    let mut totals: BTreeMap<String, u64> = config
        .split
        .channels()
        .map(|c| (c.name().to_string(), 0))
        .collect();
    for row in rows {
        *totals.entry(row.channel.name().to_string()).or_default() += 1;
    }
    ManifestLineage {
        schema: shardline_contract::lineage::SCHEMA,
        producer: PRODUCER.to_string(),
        step: "manifest".to_string(),
        source: source.uri(),
        settings: settings(config),
        assignment_rule: record::ASSIGNMENT_RULE.to_string(),
        listing: ListingRecord {
            objects: rows.len() as u64,
            classes: labels.classes.len() as u64,
            bytes,
            digest: hasher.finish(),
        },
        counts: counts.clone(),
        totals,
        outputs: outputs
            .iter()
            .map(|(name, content)| (name.clone(), FileRecord::of(content)))
            .collect(),
        previous: None,
    }
}
