//! Batch transform as one call: predictions for every object of a SageMaker manifest, its objects
//! dealt to N instances by the processing step's rule (sharded by key), written as JSON Lines
//! keyed by object, one file per instance, plus `summary.json`. The objects go through the
//! endpoint's own hooks ([`Inference::input`], [`Inference::predict`], [`Inference::output`]), so
//! a transform and the endpoint answer alike.
//!
//! Resumable: an instance whose output exists for the same job (model, manifest, k, instance
//! count) is not redone; each instance's file is written in one atomic put, its record after it,
//! and the owner record and `summary.json` last. Another job in the same `out` needs `force`,
//! and replaces the old one only when it has succeeded.
//!
//! The instances are threads of this process, or, with [`TransformConfig::rank`], processes of
//! an external launcher (one pod of a Kubernetes Indexed Job each): every one predicts its own
//! share and writes its record; rank 0 waits for the others' records and writes the summary.

use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use shardline_contract::distribute::{Distribution, share};
use shardline_contract::instance::host;
use shardline_contract::lineage::{SCHEMA, TransformInstance, TransformSummary};
use shardline_contract::owner::{self, Stage};
use shardline_lineage::{Digest, FileRecord, PRODUCER};
use shardline_store::{Location, Store};

use crate::{Answer, ClassifierOptions, Error, ImageClassifier, Inference, ModelFiles, Request};

/// A batch-transform job. [`Default`] holds the defaults; `model`, `manifest` and `out` have
/// none.
#[derive(Debug, Clone)]
pub struct TransformConfig {
    /// The model: a directory written by `shardline train`, or a `model.tar.gz` (a registry
    /// name is resolved by the caller).
    pub model: String,
    /// A SageMaker manifest (as `shardline manifest` writes them).
    pub manifest: String,
    /// Where `predictions/algo-<i>.jsonl` and `summary.json` go.
    pub out: String,
    /// Instances; each takes its share of the objects with its own model, on its own thread.
    pub instances: usize,
    /// Labels per object.
    pub k: usize,
    /// Objects per model call.
    pub batch: usize,
    /// Redo instances whose output exists, and replace another finished job in `out`.
    pub force: bool,
    /// The model's options (the device among them).
    pub classifier: ClassifierOptions,
    /// When an external launcher started this process as one instance (a pod of a Kubernetes
    /// Indexed Job, one `srun` task): its 0-based rank. It predicts its own share only; rank 0
    /// then waits for every other instance's record (at most `wait_s`) and writes the summary.
    /// `None`: this process runs every instance, each on a thread.
    pub rank: Option<usize>,
    /// How long rank 0 waits for the other instances.
    pub wait_s: u64,
    /// The fraction of objects that may fail (missing, unreadable, not an image) before the job
    /// fails; a job that predicts nothing fails whatever the budget.
    pub error_budget: f64,
}

impl Default for TransformConfig {
    fn default() -> TransformConfig {
        TransformConfig {
            model: String::new(),
            manifest: String::new(),
            out: String::new(),
            instances: 1,
            k: 5,
            batch: 32,
            force: false,
            classifier: ClassifierOptions::default(),
            rank: None,
            wait_s: 3600,
            error_budget: 0.001,
        }
    }
}

/// What a transform reports while it works.
pub trait Progress: Send + Sync {
    /// A line worth telling the user.
    fn message(&self, _line: &str) {}
}

/// A progress sink that reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// What [`run`] returns.
#[derive(Debug, Clone)]
pub struct TransformReport {
    /// Objects the manifest lists.
    pub objects: usize,
    /// Objects predicted.
    pub predicted: u64,
    /// Objects that could not be read as images.
    pub failed: u64,
    /// Where the predictions are.
    pub predictions: String,
    /// The job's summary, as written.
    pub summary: TransformSummary,
}

fn setting(name: &str, reason: &str) -> Error {
    Error::Transform(format!("`{name}` {reason}"))
}

/// One instance's work: its share of the keys, in sorted order, through the hooks. Returns its
/// JSON Lines, the objects predicted and those that could not be read.
async fn instance(
    handler: &ImageClassifier,
    source: &Store,
    keys: &[String],
    k: usize,
    batch: usize,
) -> Result<(Vec<u8>, u64, u64), Error> {
    let failed_model = |e: crate::InferenceError| Error::Load(e.message);
    let mut model = handler.load().map_err(Error::Load)?;
    let answer = Answer {
        accept: "application/json".into(),
        params: [("k".to_string(), k.to_string())].into_iter().collect(),
    };
    let (mut lines, mut ok, mut failed) = (Vec::new(), 0u64, 0u64);
    for chunk in keys.chunks(batch.max(1)) {
        // An object that is missing or unreadable is that object's failure, not the job's (the
        // store has already retried what was worth retrying).
        let bodies: Vec<Result<Bytes, shardline_store::Error>> = futures::stream::iter(chunk)
            .map(|key| source.get(key))
            .buffered(16)
            .collect()
            .await;
        let mut inputs = Vec::new();
        let mut results: Vec<Option<serde_json::Value>> = Vec::new();
        for body in &bodies {
            let read = match body {
                // The classifier reads the format from the bytes themselves.
                Ok(body) => handler
                    .input(Request {
                        body,
                        content_type: "application/x-image",
                    })
                    .map_err(|e| e.message),
                Err(e) => Err(format!("could not be read: {e}")),
            };
            match read {
                Ok(input) => {
                    inputs.push(input);
                    results.push(None);
                }
                Err(message) => results.push(Some(json!({"error": message}))),
            }
        }
        let mut outputs = handler
            .predict(&mut model, inputs)
            .map_err(failed_model)?
            .into_iter();
        for (key, result) in chunk.iter().zip(results) {
            let value = match result {
                Some(error) => {
                    failed += 1;
                    error
                }
                None => {
                    let output = outputs.next().ok_or_else(|| {
                        Error::Load(format!("the model returned no prediction for {key}"))
                    })?;
                    let reply = handler.output(output, &answer).map_err(failed_model)?;
                    let parsed: serde_json::Value = serde_json::from_slice(&reply.body)
                        .map_err(|e| Error::Load(format!("the model's answer for {key}: {e}")))?;
                    ok += 1;
                    // One object per request: its own prediction.
                    parsed["predictions"][0].clone()
                }
            };
            let line = json!({"key": key, "source": source.uri_of(key), "prediction": value});
            lines.extend_from_slice(line.to_string().as_bytes());
            lines.push(b'\n');
        }
    }
    Ok((lines, ok, failed))
}

/// Rank 0 of an externally launched job: the records of instances 1.. once each has written its
/// own for this job.
async fn wait_for_others(
    out: &Store,
    config: &TransformConfig,
    identity: &serde_json::Value,
    progress: &dyn Progress,
) -> Result<Vec<TransformInstance>, Error> {
    let deadline = Instant::now() + std::time::Duration::from_secs(config.wait_s);
    let mut found = Vec::new();
    let mut waiting: Vec<usize> = (1..config.instances).collect();
    let mut told = false;
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for rank in waiting {
            let host = host(rank);
            let record = out
                .get_opt(&format!(".shardline/transform/{host}.json"))
                .await?
                .and_then(|b| serde_json::from_slice::<TransformInstance>(&b).ok());
            // The same job but another instance count: the launcher's world size and an
            // instance's `instances` disagree, and waiting would never end. (With `force`, an
            // earlier job's record may still be there; it is waited out.)
            if let Some(r) = &record
                && !config.force
                && r.identity["instances"] != identity["instances"]
                && ["model", "manifest", "k"]
                    .iter()
                    .all(|k| r.identity[k] == identity[k])
            {
                return Err(setting(
                    "instances",
                    &format!(
                        "is {} here, but {host} ran this job with {}; start every instance with the same world size",
                        identity["instances"], r.identity["instances"]
                    ),
                ));
            }
            let record = record.filter(|r| r.identity == *identity);
            match record {
                Some(r) => found.push(r),
                None => still.push(rank),
            }
        }
        waiting = still;
        if waiting.is_empty() {
            break;
        }
        if !told {
            progress.message(&format!(
                "waiting (at most {} s) for {} other instance(s) to finish: {}",
                config.wait_s,
                waiting.len(),
                waiting
                    .iter()
                    .map(|&r| host(r))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            told = true;
        }
        if Instant::now() > deadline {
            return Err(Error::Transform(format!(
                "instances {} did not finish within {} s; rerun them (the finished ones are kept), then this one",
                waiting
                    .iter()
                    .map(|&r| host(r))
                    .collect::<Vec<_>>()
                    .join(", "),
                config.wait_s
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    Ok(found)
}

/// Runs the transform; see the module documentation.
pub async fn run(
    config: &TransformConfig,
    progress: &dyn Progress,
) -> Result<TransformReport, Error> {
    run_job(config, progress).await.map_err(as_transform)
}

/// The errors the transform shares with the endpoint (loading the model) said as the
/// transform's: `transform: input model URL: ...`, not `serve: ...`.
fn as_transform(e: Error) -> Error {
    match e {
        Error::BadModel { url, reason } => Error::BadInput {
            input: format!("model {url}"),
            reason,
        },
        Error::Load(message) => Error::Transform(format!("the model failed to load: {message}")),
        Error::BadConfig(message) => Error::Transform(message),
        other => other,
    }
}

async fn run_job(
    config: &TransformConfig,
    progress: &dyn Progress,
) -> Result<TransformReport, Error> {
    if config.instances == 0 {
        return Err(setting("instances", "must be at least 1"));
    }
    if config.instances > 4096 {
        return Err(setting(
            "instances",
            &format!(
                "is {}, more than the 4096 a job may have; each instance is a thread with its own model: use fewer",
                config.instances
            ),
        ));
    }
    if config.k == 0 {
        return Err(setting("k", "must be at least 1"));
    }
    if config.batch == 0 {
        return Err(setting("batch", "must be at least 1"));
    }
    if !(0.0..=1.0).contains(&config.error_budget) {
        return Err(setting(
            "error_budget",
            &format!("{} must be a fraction from 0 to 1", config.error_budget),
        ));
    }
    if let Some(rank) = config.rank
        && rank >= config.instances
    {
        return Err(setting(
            "instances",
            &format!(
                "is {}, but this process is instance {} (rank {rank}); the launcher's world size and `instances` must agree",
                config.instances,
                host(rank)
            ),
        ));
    }
    let files = ModelFiles::load(&config.model).await?;
    let model_digest = Digest::of(&files.weights);
    let bad_manifest = |reason: String| Error::BadInput {
        input: config.manifest.clone(),
        reason,
    };
    let (dir, name) = config
        .manifest
        .rsplit_once('/')
        .unwrap_or((".", config.manifest.as_str()));
    let manifest_store = Store::open(dir)?;
    let ranks: Vec<usize> = match config.rank {
        Some(rank) => vec![rank],
        None => (0..config.instances).collect(),
    };
    let manifest = read_shares(&manifest_store, name, &ranks, config.instances)
        .await
        .map_err(|e| match e {
            shardline_contract::Error::Store(shardline_store::Error::NotFound { .. }) => {
                bad_manifest(
                    "does not exist; give a manifest `shardline manifest` wrote (its `<channel>.manifest`)"
                        .into(),
                )
            }
            other => Error::Contract(other),
        })?;
    if manifest.keys == 0 {
        return Err(bad_manifest(
            "lists no objects; give a manifest of the objects to predict".into(),
        ));
    }
    let manifest_digest = manifest.digest.clone();
    let source = Store::open(&manifest.prefix)?;
    let out = Store::open(&config.out)?;
    // The job: everything that changes the outputs. Another model, manifest, k or instance count
    // is another job (its instances' shares differ), which replaces this one only with force.
    let identity = json!({
        "model": model_digest,
        "manifest": manifest_digest,
        "k": config.k,
        "instances": config.instances,
    });
    let job = Digest::of(identity.to_string().as_bytes()).to_string();
    for (what, input) in [
        ("the model", &config.model),
        ("the manifest's objects", &manifest.prefix),
    ] {
        let input = Location::parse(input)?;
        if input.overlaps(out.location()) {
            return Err(Error::Transform(format!(
                "`out` {} overlaps {what} at {}; give an `out` of its own",
                out.uri(),
                input.uri()
            )));
        }
    }
    let claim = owner::claim(&out, Stage::Transform, &job, config.force).await?;
    let force = config.force || matches!(claim, owner::Claim::Replacing { .. });
    let handler = ImageClassifier::new(files, config.classifier.clone());

    let started = Instant::now();
    // Which instances have work: those without a finished output for this job.
    let mut instances = Vec::new();
    let mut todo = Vec::new();
    for (rank, keys) in ranks.iter().copied().zip(manifest.shares) {
        let host = host(rank);
        if !force
            && let Some(done) = out
                .get_opt(&format!(".shardline/transform/{host}.json"))
                .await?
            && let Ok(done) = serde_json::from_slice::<TransformInstance>(&done)
            && done.identity == identity
            && out.exists(&format!("predictions/{host}.jsonl")).await?
        {
            progress.message(&format!(
                "{host} already done ({} objects); skipped",
                keys.len()
            ));
            instances.push(done);
        } else {
            todo.push((host, keys));
        }
    }
    // The instances run at once, one thread (and one model) each.
    type Finished = (Vec<u8>, u64, u64, f64);
    let results: Vec<Result<Finished, Error>> = std::thread::scope(|scope| {
        let threads: Vec<_> = todo
            .iter()
            .map(|(_, keys)| {
                let (handler, source, k, batch) = (&handler, &source, config.k, config.batch);
                scope.spawn(move || {
                    let began = Instant::now();
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| Error::Io {
                            what: "starting an instance's runtime".into(),
                            source: e,
                        })?;
                    let (lines, ok, failed) =
                        runtime.block_on(instance(handler, source, keys, k, batch))?;
                    Ok((lines, ok, failed, began.elapsed().as_secs_f64()))
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(Error::Load("an instance panicked".into())))
            })
            .collect()
    });
    for ((host, keys), result) in todo.iter().zip(results) {
        let (lines, ok, failed, seconds) = result?;
        let output_key = format!("predictions/{host}.jsonl");
        let record = TransformInstance {
            host: host.clone(),
            identity: identity.clone(),
            objects: keys.len(),
            predicted: ok,
            failed,
            seconds,
            output: output_key.clone(),
            file: FileRecord::of(&lines),
        };
        out.put(&output_key, Bytes::from(lines)).await?;
        out.put(
            &format!(".shardline/transform/{host}.json"),
            Bytes::from(shardline_contract::lineage::encode(&record)?),
        )
        .await?;
        progress.message(&format!(
            "{host}: {ok} objects predicted, {failed} could not be read"
        ));
        instances.push(record);
    }
    let others_wrote = matches!(config.rank, Some(rank) if rank > 0);
    if config.rank == Some(0) {
        instances.extend(wait_for_others(&out, config, &identity, progress).await?);
    }
    instances.sort_by(|a, b| a.host.cmp(&b.host));
    let predicted: u64 = instances.iter().map(|i| i.predicted).sum();
    let failed: u64 = instances.iter().map(|i| i.failed).sum();
    // An instance other than 0 reports its own share; instance 0 (or this process) the job's.
    let objects = if others_wrote {
        instances.iter().map(|i| i.objects).sum()
    } else {
        manifest.keys as usize
    };
    let summary = TransformSummary {
        schema: SCHEMA,
        producer: PRODUCER.into(),
        step: "transform".into(),
        job: job.clone(),
        model: config.model.clone(),
        manifest: config.manifest.clone(),
        identity,
        objects,
        predicted,
        failed,
        instances,
        seconds: started.elapsed().as_secs_f64(),
    };
    // Over the error budget, or nothing predicted: the job failed. The predictions stay (each
    // failed line says why) but no summary vouches for them.
    if objects > 0 && (predicted == 0 || failed as f64 > config.error_budget * objects as f64) {
        return Err(Error::OverBudget {
            failed,
            objects,
            budget: 100.0 * config.error_budget,
            predictions: out.uri_of("predictions/"),
        });
    }
    if others_wrote {
        // Instance 0 writes the summary.
        return Ok(TransformReport {
            objects,
            predicted,
            failed,
            predictions: out.uri_of("predictions/"),
            summary,
        });
    }
    // What an earlier job with more instances left goes, then the owner record, summary last.
    for rank in config.instances.. {
        let host = host(rank);
        let record = format!(".shardline/transform/{host}.json");
        if !out.exists(&record).await? {
            break;
        }
        out.delete(&format!("predictions/{host}.jsonl")).await?;
        out.delete(&record).await?;
    }
    let (owner_key, owner_record) = owner::finished(Stage::Transform, &job)?;
    out.put(owner_key, Bytes::from(owner_record)).await?;
    out.put(
        "summary.json",
        Bytes::from(shardline_contract::lineage::encode(&summary)?),
    )
    .await?;
    Ok(TransformReport {
        objects: manifest.keys as usize,
        predicted,
        failed,
        predictions: out.uri_of("predictions/"),
        summary,
    })
}

/// A manifest as batch transform needs it: its prefix, digest (of the manifest's bytes, or of
/// the index's for one in parts), key count, and the keys of each rank asked for.
struct Shares {
    prefix: String,
    digest: Digest,
    keys: u64,
    shares: Vec<Vec<String>>,
}

/// One instance of a sorted manifest streams its share (memory holds its share, not the
/// list); several instances in this process, or an unsorted manifest, read the whole list.
async fn read_shares(
    store: &Store,
    name: &str,
    ranks: &[usize],
    instances: usize,
) -> Result<Shares, shardline_contract::Error> {
    use shardline_contract::manifest_stream::{self, Opened, Share};
    if let [rank] = ranks
        && let Opened::Keys(keys) = manifest_stream::open(store, name).await?
    {
        let mut share = Share::new(keys, *rank, instances, Distribution::ShardedByKey);
        let mut mine = Vec::new();
        let streamed = loop {
            match share.next().await {
                Ok(Some(key)) => mine.push(key),
                Ok(None) => break true,
                Err(shardline_contract::Error::Unsorted { .. }) => break false,
                Err(e) => return Err(e),
            }
        };
        if streamed {
            let keys = share.keys();
            let (Some(count), Some(digest)) = (keys.total(), keys.digest()) else {
                return Err(shardline_contract::Error::BadManifest {
                    uri: keys.uri().to_string(),
                    reason: "it was not read to its end".into(),
                });
            };
            return Ok(Shares {
                prefix: keys.prefix().unwrap_or_default().to_string(),
                digest,
                keys: count,
                shares: vec![mine],
            });
        }
    }
    let (manifest, bytes) = manifest_stream::read_manifest(store, name).await?;
    let shares = ranks
        .iter()
        .map(|&rank| {
            share(&manifest.keys, rank, instances, Distribution::ShardedByKey)
                .into_iter()
                .map(|p| manifest.keys[p].clone())
                .collect()
        })
        .collect();
    Ok(Shares {
        prefix: manifest.prefix,
        digest: Digest::of(&bytes),
        keys: manifest.keys.len() as u64,
        shares,
    })
}
