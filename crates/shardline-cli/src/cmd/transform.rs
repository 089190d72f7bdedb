//! `shardline transform`: batch transform. Predictions for every object of a SageMaker manifest,
//! its objects dealt to N instances by the processing step's rule (sharded by key), written as
//! JSON Lines keyed by object, one file per instance, plus a summary. The objects go through the
//! endpoint's own hooks (`Inference::input`, `predict`, `output`), so a transform and `shardline
//! serve` answer alike.
//!
//! Resumable: an instance whose output exists for the same model and manifest is not redone;
//! each instance's file is written in one atomic put, and `summary.json` last.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use shardline_contract::distribute::{Distribution, share};
use shardline_contract::owner::{self, Stage};
use shardline_lineage::{Digest, FileRecord, PRODUCER};
use shardline_serve::{Answer, ClassifierOptions, ImageClassifier, Inference, ModelFiles, Request};
use shardline_store::Store;

use crate::progress::Ui;

/// Flags of `shardline transform`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The model: a directory written by `shardline train`, a model.tar.gz, or a registered
    /// NAME:VERSION / NAME:latest.
    #[arg(long, value_name = "URL")]
    pub model: String,
    /// The registry for NAME:VERSION models.
    #[arg(long, value_name = "URL")]
    pub registry: Option<String>,
    /// A SageMaker manifest (as `shardline manifest` writes them).
    #[arg(long, value_name = "URL")]
    pub manifest: String,
    /// Where predictions/algo-<i>.jsonl and summary.json go.
    #[arg(long, value_name = "URL")]
    pub out: String,
    /// Instances; each takes its share of the objects (sharded by key) with its own model.
    #[arg(long, default_value_t = 1)]
    pub instances: usize,
    /// Labels per object.
    #[arg(short, long, default_value_t = 5)]
    pub k: usize,
    /// Objects per model call.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Redo instances whose output already exists.
    #[arg(long)]
    pub force: bool,
}

/// An instance's result: host, objects, JSON Lines, predicted, unreadable, seconds.
type Finished = (String, usize, Vec<u8>, u64, u64, f64);

/// One instance's work: its share of the keys, in sorted order, through the hooks.
async fn instance(
    handler: &ImageClassifier,
    source: &Store,
    keys: &[String],
    k: usize,
    batch: usize,
) -> Result<(Vec<u8>, u64, u64)> {
    let mut model = handler
        .load()
        .map_err(|e| anyhow::anyhow!("transform: loading the model: {e}"))?;
    let answer = Answer {
        accept: "application/json".into(),
        params: [("k".to_string(), k.to_string())].into_iter().collect(),
    };
    let (mut lines, mut ok, mut failed) = (Vec::new(), 0u64, 0u64);
    for chunk in keys.chunks(batch.max(1)) {
        let bodies: Vec<Bytes> = futures::stream::iter(chunk)
            .map(|key| source.get(key))
            .buffered(16)
            .try_collect()
            .await?;
        let mut inputs = Vec::new();
        let mut results: Vec<Option<serde_json::Value>> = Vec::new();
        for body in &bodies {
            // The classifier reads the format from the bytes themselves.
            match handler.input(Request {
                body,
                content_type: "application/x-image",
            }) {
                Ok(input) => {
                    inputs.push(input);
                    results.push(None);
                }
                Err(e) => results.push(Some(json!({"error": e.message}))),
            }
        }
        let outputs = handler
            .predict(&mut model, inputs)
            .map_err(|e| anyhow::anyhow!("transform: the model failed: {}", e.message))?;
        let mut outputs = outputs.into_iter();
        for (key, result) in chunk.iter().zip(results) {
            let value = match result {
                Some(error) => {
                    failed += 1;
                    error
                }
                None => {
                    let output = outputs
                        .next()
                        .context("transform: a prediction is missing")?;
                    let reply = handler
                        .output(output, &answer)
                        .map_err(|e| anyhow::anyhow!("transform: {}", e.message))?;
                    let parsed: serde_json::Value = serde_json::from_slice(&reply.body)?;
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

/// Runs the transform.
pub async fn run(args: Args, ui: &Ui) -> Result<()> {
    if args.instances == 0 || args.k == 0 || args.batch == 0 {
        bail!("transform: --instances, -k and --batch must be at least 1");
    }
    let (url, _, _) = super::serve::locate(&args.model, args.registry.as_deref()).await?;
    let files = ModelFiles::load(&url)
        .await
        .with_context(|| format!("transform: --model {}", args.model))?;
    let model_digest = Digest::of(&files.weights);
    let (dir, name) = args
        .manifest
        .rsplit_once('/')
        .unwrap_or((".", args.manifest.as_str()));
    let manifest_store =
        Store::open(dir).with_context(|| format!("transform: --manifest {}", args.manifest))?;
    let manifest_bytes = manifest_store
        .get(name)
        .await
        .with_context(|| format!("transform: --manifest {}", args.manifest))?;
    let manifest = shardline_manifest::sagemaker::parse_manifest(&args.manifest, &manifest_bytes)
        .with_context(|| format!("transform: --manifest {}", args.manifest))?;
    if manifest.keys.is_empty() {
        bail!("transform: --manifest {} lists no objects", args.manifest);
    }
    let manifest_digest = Digest::of(&manifest_bytes);
    let source = Store::open(&manifest.prefix)
        .with_context(|| format!("transform: the manifest's prefix {}", manifest.prefix))?;
    let out = Store::open(&args.out).with_context(|| format!("transform: --out {}", args.out))?;
    let handler = ImageClassifier::new(files, ClassifierOptions::default());
    // The job: everything that changes the outputs. Another model, manifest, k or instance count
    // is another job (its instances' shares differ), which replaces this one only with --force.
    let identity = json!({
        "model": model_digest,
        "manifest": manifest_digest,
        "k": args.k,
        "instances": args.instances,
    });
    let job = Digest::of(identity.to_string().as_bytes()).to_string();
    for (what, input) in [
        ("the model", &url),
        ("the manifest's objects", &manifest.prefix),
    ] {
        let input = shardline_store::Location::parse(input)?;
        if input.contains(out.location()) || out.location().contains(&input) {
            bail!(
                "transform: --out {} overlaps {what} at {}; give an --out of its own",
                out.uri(),
                input.uri()
            );
        }
    }
    let claim = owner::claim(&out, Stage::Transform, &job, args.force).await?;
    let force = args.force || matches!(claim, owner::Claim::Replacing { .. });

    let started = Instant::now();
    // Which instances have work: those without a finished output for this model and manifest.
    let mut finished = Vec::new();
    let mut todo = Vec::new();
    for rank in 0..args.instances {
        let host = format!("algo-{}", rank + 1);
        let positions = share(
            &manifest.keys,
            rank,
            args.instances,
            Distribution::ShardedByKey,
        );
        let keys: Vec<String> = positions
            .iter()
            .map(|&p| manifest.keys[p].clone())
            .collect();
        if !force
            && let Some(done) = out
                .get_opt(&format!(".shardline/transform/{host}.json"))
                .await?
            && let Ok(done) = serde_json::from_slice::<serde_json::Value>(&done)
            && done["identity"] == identity
            && out.exists(&format!("predictions/{host}.jsonl")).await?
        {
            ui.say(format!(
                "transform: {host} already done ({} objects); skipped",
                keys.len()
            ));
            finished.push(done);
        } else {
            todo.push((host, keys));
        }
    }
    // The instances run at once, one thread (and one model) each.
    let results: Vec<Result<Finished>> = std::thread::scope(|scope| {
        let threads: Vec<_> = todo
            .iter()
            .map(|(host, keys)| {
                let (handler, source, k, batch) = (&handler, &source, args.k, args.batch);
                scope.spawn(move || -> Result<_> {
                    let began = Instant::now();
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let (lines, ok, failed) =
                        runtime.block_on(instance(handler, source, keys, k, batch))?;
                    Ok((
                        host.clone(),
                        keys.len(),
                        lines,
                        ok,
                        failed,
                        began.elapsed().as_secs_f64(),
                    ))
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("transform: an instance panicked")))
            })
            .collect()
    });
    let mut instances = finished;
    for result in results {
        let (host, objects, lines, ok, failed, seconds) = result?;
        let output_key = format!("predictions/{host}.jsonl");
        let record = json!({
            "host": host,
            "identity": identity,
            "objects": objects,
            "predicted": ok,
            "failed": failed,
            "seconds": seconds,
            "output": output_key,
            "file": FileRecord::of(&lines),
        });
        out.put(&output_key, Bytes::from(lines)).await?;
        out.put(
            &format!(".shardline/transform/{host}.json"),
            Bytes::from(serde_json::to_vec_pretty(&record)?),
        )
        .await?;
        ui.say(format!(
            "transform: {host}: {ok} objects predicted, {failed} could not be read"
        ));
        instances.push(record);
    }
    instances.sort_by(|a, b| a["host"].as_str().cmp(&b["host"].as_str()));
    let predicted: u64 = instances
        .iter()
        .filter_map(|i| i["predicted"].as_u64())
        .sum();
    let failed: u64 = instances.iter().filter_map(|i| i["failed"].as_u64()).sum();
    let summary = json!({
        "producer": PRODUCER,
        "step": "transform",
        "job": job,
        "model": url,
        "manifest": args.manifest,
        "identity": identity,
        "objects": manifest.keys.len(),
        "predicted": predicted,
        "failed": failed,
        "instances": instances,
        "seconds": started.elapsed().as_secs_f64(),
    });
    // What an earlier job with more instances left goes, then the owner record, summary last.
    for rank in args.instances.. {
        let host = shardline_contract::instance::host(rank);
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
    ui.say(format!(
        "transform: {predicted} of {} objects predicted ({failed} unreadable) into {}",
        manifest.keys.len(),
        out.uri_of("predictions/")
    ));
    Ok(())
}
