//! The user's own processing program, run once per instance under the SageMaker Processing
//! container contract:
//!
//! - this instance's share of each channel downloaded to `<root>/processing/input/<channel>/<key>`;
//! - `<root>/config/resourceconfig.json` (`current_host`, `hosts`) and
//!   `<root>/config/processingjobconfig.json` (the job request, SageMaker's field names);
//! - the program's outputs under `<root>/processing/output/<name>/` uploaded, when it exits 0, to
//!   `<out>/<name>/<host>/...` (per-instance names, so instances never collide);
//! - on failure, the first KiB of `<root>/output/message` is reported.
//!
//! With `--root /opt/ml` the paths are exactly SageMaker's. `{root}` in the command is replaced by
//! the instance's root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use shardline_container::files::{files_below, place, write_json};
use std::time::Instant;

use bytes::Bytes;
use serde_json::json;
use shardline_lineage::{Digest, FileRecord, PRODUCER};
use shardline_store::Store;
use shardline_store::commit::{self, Commit};

use crate::Error;
use crate::instance::{ChannelResult, InstanceResult, Tick, read_result, result_key};
use crate::job::Job;
use shardline_contract::instance::host;
use shardline_contract::shards::ShardRecord;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

fn job_config(job: &Job, root: &Path, out: &Store, command: &str) -> serde_json::Value {
    let inputs: Vec<serde_json::Value> = job
        .inputs
        .iter()
        .map(|input| {
            json!({
                "InputName": input.channel,
                "S3Input": {
                    "LocalPath": root.join("processing/input").join(&input.channel),
                    "S3Uri": input.uri,
                    "S3DataDistributionType": match job.settings.distribution {
                        shardline_contract::distribute::Distribution::ShardedByKey => "ShardedByS3Key",
                        shardline_contract::distribute::Distribution::FullyReplicated => "FullyReplicated",
                    },
                    "S3DataType": if input.uri.ends_with(".manifest") { "ManifestFile" } else { "S3Prefix" },
                    "S3InputMode": "File",
                }
            })
        })
        .collect();
    let outputs: Vec<serde_json::Value> = job
        .inputs
        .iter()
        .map(|input| {
            json!({
                "OutputName": input.channel,
                "S3Output": {
                    "LocalPath": root.join("processing/output").join(&input.channel),
                    "S3Uri": out.uri_of(&input.channel),
                    "S3UploadMode": "EndOfJob",
                }
            })
        })
        .collect();
    json!({
        "ProcessingJobName": format!("shardline-{}", &job.digest().as_str()[7..19]),
        "AppSpecification": {
            "ImageUri": "local",
            "ContainerEntrypoint": ["sh", "-c"],
            "ContainerArguments": [command],
        },
        "Environment": {},
        "ProcessingInputs": inputs,
        "ProcessingOutputConfig": {"Outputs": outputs},
        "ProcessingResources": {"ClusterConfig": {
            "InstanceCount": job.settings.instances,
            "InstanceType": "local",
            "VolumeSizeInGB": 0,
        }},
    })
}

/// Runs the script as instance `rank`: download the share, write the config files, run, upload.
pub async fn run(
    job: &Job,
    rank: usize,
    out: &Store,
    root: Option<&Path>,
    force: bool,
    progress: &(dyn Fn(Tick) + Send + Sync),
) -> Result<InstanceResult, Error> {
    let command = job.settings.script.clone().unwrap_or_default();
    let host = host(rank);
    let digest = job.digest();
    commit::recover_scoped(out, Some(&host)).await?;
    let earlier = read_result(out, &host).await?;
    if let Some(result) = &earlier
        && result.job == digest
        && !force
    {
        return Ok(result.clone());
    }
    let started = Instant::now();
    let temp;
    let root: PathBuf = match root {
        // Absolute: the program runs in another directory, and SageMaker's paths are absolute.
        Some(root) => std::path::absolute(root).map_err(io(root))?,
        None => {
            temp = tempfile::Builder::new()
                .prefix(&format!("shardline-{host}-"))
                .tempdir()
                .map_err(io(Path::new("temp")))?;
            temp.path().to_path_buf()
        }
    };
    for dir in ["processing/input", "processing/output", "output"] {
        let dir = root.join(dir);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
    }
    // Download this instance's share of every channel.
    let mut channels = BTreeMap::new();
    let total: u64 = job.inputs.iter().map(|i| job.share_len(i, rank)).sum();
    let mut tick = Tick {
        total,
        ..Tick::default()
    };
    for input in &job.inputs {
        let mut share = job.share(input, rank).await?;
        let dir = root.join("processing/input").join(&input.channel);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        std::fs::create_dir_all(root.join("processing/output").join(&input.channel))
            .map_err(io(&root))?;
        let stores = input
            .roots
            .iter()
            .map(|root| Store::open(root))
            .collect::<Result<Vec<_>, _>>()?;
        let mut assignment = shardline_lineage::Hasher::new();
        while let Some(record) = share.next().await? {
            let bytes = stores[record.root].get(&record.key).await?;
            place(&dir, &record.key, &bytes, &input.roots[record.root])?;
            assignment.update(format!("{}{}\n", input.roots[record.root], record.key).as_bytes());
            tick.done += 1;
            progress(tick);
        }
        channels.insert(
            input.channel.clone(),
            ChannelResult {
                assignment: assignment.finish(),
                ..ChannelResult::new(job.share_len(input, rank) as usize, 0)
            },
        );
    }
    let hosts: Vec<String> = (0..job.settings.instances)
        .map(shardline_contract::instance::host)
        .collect();
    write_json(
        &root.join("config/resourceconfig.json"),
        &json!({"current_host": host, "hosts": hosts}),
    )?;
    write_json(
        &root.join("config/processingjobconfig.json"),
        &job_config(job, &root, out, &command),
    )?;
    std::fs::create_dir_all(root.join("output")).map_err(io(&root))?;

    let command_line = command.replace("{root}", &root.display().to_string());
    tracing::info!(%host, command = %command_line, root = %root.display(), "running the processing script");
    let mut command = tokio::process::Command::new("sh");
    // The script dies with its instance (and with it, with the launcher).
    shardline_container::program::die_with_parent(&mut command, libc::SIGKILL);
    let status = command
        .arg("-c")
        .arg(&command_line)
        .current_dir(&root)
        .env("SHARDLINE_HOST", &host)
        .env("SHARDLINE_PROCESSING_ROOT", &root)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| Error::Script {
            host: host.clone(),
            reason: format!("cannot start `sh -c {command_line}`: {e}"),
        })?;
    if !status.success() {
        let message = shardline_container::files::failure_message(&root.join("output/message"));
        return Err(Error::Script {
            host,
            reason: format!(
                "{status}{}",
                if message.is_empty() {
                    String::new()
                } else {
                    format!("; its message: {message}")
                }
            ),
        });
    }
    // Upload the outputs under per-instance names, atomically, with the result record last.
    let mut tx = Commit::begin_scoped(out, Some(&host));
    let output_root = root.join("processing/output");
    for entry in std::fs::read_dir(&output_root).map_err(io(&output_root))? {
        let dir = entry.map_err(io(&output_root))?.path();
        if !dir.is_dir() {
            continue;
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let channel = channels
            .entry(name.clone())
            .or_insert_with(|| ChannelResult::new(0, 0));
        for file in files_below(&dir)? {
            let relative = file
                .strip_prefix(&dir)
                .unwrap_or(&file)
                .to_string_lossy()
                .replace('\\', "/");
            let bytes = std::fs::read(&file).map_err(io(&file))?;
            let url = format!("{host}/{relative}");
            channel.shards.push(ShardRecord {
                url: url.clone(),
                nsamples: 0,
                filesize: bytes.len() as u64,
                sha256: Digest::of(&bytes),
            });
            channel.written += 1;
            tx.stage(&format!("{name}/{url}"), Bytes::from(bytes))
                .await?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let result = InstanceResult {
        host: host.clone(),
        rank,
        job: digest,
        channels,
        quarantine: Vec::new(),
        seconds,
        records_per_second: total as f64 / seconds.max(1e-9),
        peak_rss_mib: crate::instance::peak_rss_mib(),
    };
    tx.stage(
        &result_key(&host),
        Bytes::from(shardline_contract::lineage::encode(&result)?),
    )
    .await?;
    tx.publish().await?;
    // Files of an earlier, different run of this instance that this run's script did not write.
    if let Some(earlier) = earlier {
        crate::instance::remove_superseded(out, &earlier, Some(&result)).await?;
    }
    Ok(result)
}

/// What a script job produced.
pub struct ScriptReport {
    /// Instances that ran.
    pub instances: usize,
}

/// Writes `report.json` and `lineage.json` for a script job.
pub async fn finalize(
    job: &Job,
    out: &Store,
    results: &[InstanceResult],
) -> Result<ScriptReport, Error> {
    let outputs: BTreeMap<String, FileRecord> = results
        .iter()
        .flat_map(|r| {
            r.channels.iter().flat_map(|(name, c)| {
                c.shards.iter().map(move |s| {
                    (
                        format!("{name}/{}", s.url),
                        FileRecord {
                            bytes: s.filesize,
                            digest: s.sha256.clone(),
                        },
                    )
                })
            })
        })
        .collect();
    let report = json!({
        "status": "succeeded",
        "script": job.settings.script,
        "instances": results.iter().map(|r| json!({
            "host": r.host,
            "seconds": r.seconds,
            "channels": r.channels.iter().map(|(c, x)| (c.clone(), json!({"assigned": x.assigned, "files": x.written}))).collect::<BTreeMap<_, _>>(),
        })).collect::<Vec<_>>(),
    });
    let report_bytes = shardline_contract::lineage::encode(&report)?;
    let lineage = shardline_contract::lineage::ProcessScriptLineage {
        schema: shardline_contract::lineage::SCHEMA,
        producer: PRODUCER.into(),
        step: "process".into(),
        job: job.digest().to_string(),
        script: job.settings.script.clone().unwrap_or_default(),
        distribution: job.settings.distribution.rule().into(),
        inputs: job.inputs.iter().map(|i| i.lineage_entry()).collect(),
        assignment: results
            .iter()
            .map(|r| {
                let channels = r
                    .channels
                    .iter()
                    .map(|(c, x)| (c.clone(), (x.assigned, x.assignment.clone())))
                    .collect();
                (r.host.clone(), channels)
            })
            .collect(),
        outputs,
        report: FileRecord::of(&report_bytes),
    };
    commit::recover(out).await?;
    let mut tx = Commit::begin(out);
    tx.stage("report.json", Bytes::from(report_bytes)).await?;
    shardline_contract::owner::stage_finished(
        &mut tx,
        shardline_contract::owner::Stage::Process,
        job.digest().as_str(),
        &lineage,
    )
    .await?;
    tx.publish().await?;
    crate::instance::remove_departed(out, job.settings.instances).await?;
    Ok(ScriptReport {
        instances: results.len(),
    })
}
