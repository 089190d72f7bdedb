//! One processing instance: take this rank's share of every channel, turn each object into a
//! tensor, write size-bounded shards, and publish them atomically with the instance's result
//! record last. A rerun of a finished instance with the same job is a no-op.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use bytes::Bytes;
use futures::stream::StreamExt;
use serde::{Deserialize, Serialize};
use shardline_lineage::{Digest, Hasher};
use shardline_store::Store;
use shardline_store::commit::{self, Commit, StagedWriter};

use crate::Error;
use crate::job::Job;
use crate::shards::ShardWriter;
use shardline_contract::instance::host;
use shardline_contract::shards::ShardRecord;
use shardline_preprocess::{self as transform, Reject};

/// Where an instance's result record lives under the output.
pub fn result_key(host: &str) -> String {
    format!(".shardline/instances/{host}.json")
}

/// An object that could not be processed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    /// The channel.
    pub channel: String,
    /// The object's full URI.
    pub uri: String,
    /// Why it was skipped.
    pub reason: String,
}

/// What an instance did in one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelResult {
    /// Objects assigned to this instance.
    pub assigned: u64,
    /// Samples written.
    pub written: u64,
    /// Objects quarantined.
    pub quarantined: u64,
    /// A digest of the assigned URIs, in order: the assignment, recorded for lineage.
    pub assignment: Digest,
    /// The shards written, in order.
    pub shards: Vec<ShardRecord>,
    /// Per colour channel: the sum of tensor values (for the recipe's mean).
    pub sum: Vec<f64>,
    /// Per colour channel: the sum of squared tensor values (for the recipe's std).
    pub sum_sq: Vec<f64>,
    /// Values summed per colour channel.
    pub values: u64,
}

impl ChannelResult {
    /// A channel with `assigned` objects and nothing written yet; `colours` sums are kept.
    pub fn new(assigned: usize, colours: usize) -> ChannelResult {
        ChannelResult {
            assigned: assigned as u64,
            written: 0,
            quarantined: 0,
            assignment: Digest::of(b""),
            shards: Vec::new(),
            sum: vec![0.0; colours],
            sum_sq: vec![0.0; colours],
            values: 0,
        }
    }
}

/// The result record of one instance, `.shardline/instances/algo-<i>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceResult {
    /// `algo-<rank+1>`.
    pub host: String,
    /// 0-based rank.
    pub rank: usize,
    /// The job this result belongs to.
    pub job: Digest,
    /// Per channel.
    pub channels: BTreeMap<String, ChannelResult>,
    /// Objects that were skipped, with reasons.
    pub quarantine: Vec<Quarantined>,
    /// Wall time of the processing, in seconds.
    pub seconds: f64,
    /// Objects per second.
    pub records_per_second: f64,
    /// The instance process's peak resident memory, in MiB (0 where the OS does not say).
    #[serde(default)]
    pub peak_rss_mib: f64,
}

/// The peak resident memory of this process so far, in MiB, from `/proc/self/status`.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Progress of one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tick {
    /// Objects handled so far.
    pub done: u64,
    /// Objects assigned in all.
    pub total: u64,
    /// Objects quarantined so far.
    pub errors: u64,
}

/// Reads the result record of an instance, if it finished.
pub async fn read_result(out: &Store, host: &str) -> Result<Option<InstanceResult>, Error> {
    match out.get_opt(&result_key(host)).await? {
        Some(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        None => Ok(None),
    }
}

/// Runs instance `rank` of `job`, writing under `out`. Returns the result, or the earlier result
/// when this instance already finished the same job (unless `force`).
pub async fn run(
    job: &Job,
    rank: usize,
    out: &Store,
    force: bool,
    progress: &(dyn Fn(Tick) + Send + Sync),
) -> Result<InstanceResult, Error> {
    let host = host(rank);
    let digest = job.digest();
    commit::recover_scoped(out, Some(&host)).await?;
    let earlier = read_result(out, &host).await?;
    if let Some(result) = &earlier
        && result.job == digest
        && !force
    {
        tracing::info!(%host, "already finished this job; nothing to do");
        return Ok(result.clone());
    }
    let started = Instant::now();
    let total: u64 = job.inputs.iter().map(|i| job.share_len(i, rank)).sum();
    let mut tick = Tick {
        total,
        ..Tick::default()
    };
    progress(tick);

    let mut stores: HashMap<String, Store> = HashMap::new();
    let mut tx = Commit::begin_scoped(out, Some(&host));
    let mut channels = BTreeMap::new();
    let mut quarantine = Vec::new();
    let shape = job.settings.recipe.shape();
    for input in &job.inputs {
        let mut recipe = job.settings.recipe.clone();
        if !job.settings.augment_channels.contains(&input.channel) {
            recipe.augment.clear();
        }
        let mut result = ChannelResult::new(job.share_len(input, rank) as usize, shape[2]);
        let mut assignment = Hasher::new();
        for root in &input.roots {
            if !stores.contains_key(root) {
                stores.insert(root.clone(), Store::open(root)?);
            }
        }
        // Shards stream into their staged files a sample at a time.
        let mut writer = ShardWriter::new(&host, job.settings.shard_bytes);
        let mut staged: Option<StagedWriter> = None;
        let mut scratch = transform::Scratch::new();
        // The share arrives record by record (streamed from a sorted manifest, or from memory)
        // and eight fetches run ahead of the decoder.
        let share = job.share(input, rank).await?;
        let records = futures::stream::unfold(Some(share), |share| async move {
            let mut share = share?;
            match share.next().await {
                Ok(Some(record)) => Some((Ok(record), Some(share))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        });
        let fetches = records.map(|record| {
            let store = record
                .as_ref()
                .ok()
                .and_then(|r| stores.get(&input.roots[r.root]).cloned());
            let roots = &input.roots;
            async move {
                let record = record?;
                let root = &roots[record.root];
                let uri = format!("{root}{}", record.key);
                let bytes = match store {
                    Some(store) => store.get(&record.key).await,
                    None => unreachable_store(root),
                };
                Ok::<_, Error>((record, uri, bytes))
            }
        });
        let mut fetched = std::pin::pin!(fetches.buffered(8));
        let mut sequence = 0u64;
        while let Some(item) = fetched.next().await {
            let (record, uri, bytes) = item?;
            assignment.update(uri.as_bytes());
            assignment.update(b"\n");
            let outcome = match bytes {
                // A missing or unreadable object is quarantined like a corrupt one; a store that
                // fails is fatal.
                Err(shardline_store::Error::NotFound { .. }) => {
                    Err("the object does not exist".to_string())
                }
                Err(e @ shardline_store::Error::LocalFile { .. }) => Err(e.to_string()),
                Err(e) => return Err(e.into()),
                Ok(bytes) => {
                    // Decoding runs on this thread: an instance is one core's worth of work, and
                    // its process runs a single-threaded runtime (see the CLI), as the peers'
                    // one-process-per-core model does. Fetches queued above keep flowing between
                    // objects.
                    transform::process(
                        &bytes,
                        &record.key,
                        job.settings.seed,
                        &recipe,
                        &mut scratch,
                    )
                    .map_err(|e: Reject| e.to_string())
                }
            };
            tick.done += 1;
            shardline_contract::fault::point(&host, &format!("after-{}", tick.done));
            match outcome {
                Ok(tensor) => {
                    // Integer sums per image (exact, and fast), folded into the channel totals.
                    let (sum, sum_sq) = transform::channel_sums(&tensor, shape[2]);
                    for c in 0..shape[2] {
                        result.sum[c] += sum[c] as f64;
                        result.sum_sq[c] += sum_sq[c] as f64;
                    }
                    result.values += (tensor.len() / shape[2]) as u64;
                    let npy = transform::npy(&tensor, &shape);
                    let label = record.label.to_string();
                    let meta = serde_json::json!({
                        "key": record.key,
                        "source": uri,
                        "class": record.class,
                        "label": record.label,
                    })
                    .to_string();
                    // Keys are unique across the whole channel, not only within an instance:
                    // WebDataset readers see `__key__` values like `algo-2-00000017`.
                    let basename = format!("{host}-{sequence:08}");
                    sequence += 1;
                    let files: [(&str, &[u8]); 3] = [
                        ("npy", &npy),
                        ("cls", label.as_bytes()),
                        ("json", meta.as_bytes()),
                    ];
                    let added = writer
                        .add(&basename, &files)
                        .map_err(|e| Error::io("shard", e))?;
                    if let Some(url) = &added.opened {
                        staged = Some(tx.stage_writer(&format!("{}/{url}", input.channel)));
                    }
                    if let Some(sink) = staged.as_mut() {
                        sink.write(Bytes::from(added.bytes)).await?;
                    }
                    if added.full {
                        finish_shard(&mut tx, &mut writer, &mut staged, &mut result.shards).await?;
                    }
                    result.written += 1;
                }
                Err(reason) => {
                    tracing::warn!(%uri, %reason, "quarantined");
                    tick.errors += 1;
                    result.quarantined += 1;
                    quarantine.push(Quarantined {
                        channel: input.channel.clone(),
                        uri,
                        reason,
                    });
                }
            }
            progress(tick);
        }
        finish_shard(&mut tx, &mut writer, &mut staged, &mut result.shards).await?;
        result.assignment = assignment.finish();
        channels.insert(input.channel.clone(), result);
    }
    let seconds = started.elapsed().as_secs_f64();
    let result = InstanceResult {
        host: host.clone(),
        rank,
        job: digest,
        channels,
        quarantine,
        seconds,
        records_per_second: total as f64 / seconds.max(1e-9),
        peak_rss_mib: peak_rss_mib(),
    };
    let bytes = serde_json::to_vec_pretty(&result).unwrap_or_default();
    shardline_contract::fault::point(&host, "before-publish");
    tx.stage(&result_key(&host), Bytes::from(bytes)).await?;
    tx.publish().await?;
    if let Some(earlier) = earlier {
        remove_superseded(out, &earlier, Some(&result)).await?;
    }
    Ok(result)
}

/// Deletes the files an earlier, different run of an instance wrote (shards, or a script's
/// output files) that its new run did not write again (`None`: the instance is no longer part
/// of the job, so all of them).
pub(crate) async fn remove_superseded(
    out: &Store,
    earlier: &InstanceResult,
    new: Option<&InstanceResult>,
) -> Result<(), Error> {
    for (channel, old) in &earlier.channels {
        let kept: Vec<&str> = new
            .and_then(|n| n.channels.get(channel))
            .map(|c| c.shards.iter().map(|s| s.url.as_str()).collect())
            .unwrap_or_default();
        for shard in &old.shards {
            if !kept.contains(&shard.url.as_str()) {
                out.delete(&format!("{channel}/{}", shard.url)).await?;
            }
        }
    }
    Ok(())
}

/// After a job with `instances` instances is published: the outputs, log and result of
/// instances an earlier job in the same `--out` had beyond those (3 instances, then 2: `algo-3`)
/// are deleted, so that a reader globbing `<channel>/*.tar` sees this job's shards only.
pub async fn remove_departed(out: &Store, instances: usize) -> Result<(), Error> {
    for rank in instances.. {
        let host = host(rank);
        let Some(earlier) = read_result(out, &host).await? else {
            break;
        };
        remove_superseded(out, &earlier, None).await?;
        out.delete(&format!("logs/{host}.log")).await?;
        out.delete(&result_key(&host)).await?;
        out.delete_prefix(&format!(".shardline/scopes/{host}"))
            .await?;
    }
    out.remove_empty_dirs("");
    Ok(())
}

/// Closes the open shard, if any: its last bytes, its file finished into the commit, its record.
async fn finish_shard(
    tx: &mut Commit<'_>,
    writer: &mut ShardWriter,
    staged: &mut Option<StagedWriter>,
    shards: &mut Vec<ShardRecord>,
) -> Result<(), Error> {
    if let (Some(closed), Some(mut sink)) = (writer.close(), staged.take()) {
        sink.write(Bytes::from(closed.tail)).await?;
        tx.finish_staged(sink).await?;
        shards.push(closed.record);
    }
    Ok(())
}

fn unreachable_store(root: &str) -> Result<Bytes, shardline_store::Error> {
    Err(shardline_store::Error::InvalidUrl {
        url: root.to_string(),
        reason: "no store was opened for this root".into(),
    })
}
