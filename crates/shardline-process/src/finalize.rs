//! The end of a job: gather every instance's result into the channel indexes, the recipe (with
//! the training data's mean and std), `report.json` and `lineage.json`, committed together.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use shardline_lineage::{FileRecord, PRODUCER};
use shardline_store::Store;
use shardline_store::commit::{self, Commit};

use crate::Error;
use crate::instance::{InstanceResult, Quarantined};
use crate::job::Job;
use shardline_contract::instance::host;
use shardline_contract::lineage::encode;
use shardline_contract::owner::{self, Stage};
use shardline_contract::shards::Index;

/// Per-instance lines of the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceLine {
    /// `algo-<i>`.
    pub host: String,
    /// Objects assigned, written and quarantined, per channel.
    pub channels: BTreeMap<String, [u64; 3]>,
    /// Objects per second.
    pub records_per_second: f64,
    /// Seconds of processing.
    pub seconds: f64,
    /// Peak resident memory of the instance, MiB.
    pub peak_rss_mib: f64,
    /// Quarantined objects, with reasons.
    pub quarantine: Vec<Quarantined>,
}

/// `report.json`: what the job did, instance by instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// `succeeded` or `failed`.
    pub status: String,
    /// Objects assigned over all instances.
    pub assigned: u64,
    /// Samples written.
    pub written: u64,
    /// Objects quarantined.
    pub quarantined: u64,
    /// Instances that received no object.
    pub empty_instances: Vec<String>,
    /// Per instance.
    pub instances: Vec<InstanceLine>,
}

/// `lineage.json` of a processing job (defined with the other stage records).
pub use shardline_contract::lineage::ProcessLineage as Lineage;

/// Reads every instance's result; `None` for those that have not finished this job.
pub async fn gather(job: &Job, out: &Store) -> Result<Vec<Option<InstanceResult>>, Error> {
    let digest = job.digest();
    let mut results = Vec::new();
    for rank in 0..job.settings.instances {
        let result = crate::instance::read_result(out, &host(rank)).await?;
        results.push(result.filter(|r| r.job == digest));
    }
    Ok(results)
}

/// Writes the indexes, recipe, report and lineage from finished results, then checks the error
/// budget. The report is written even when the budget is exceeded; the lineage record (which
/// marks the output complete) only when it is not.
pub async fn finalize(job: &Job, out: &Store, results: &[InstanceResult]) -> Result<Report, Error> {
    let channels: Vec<String> = job.inputs.iter().map(|i| i.channel.clone()).collect();
    let mut report = Report {
        status: "succeeded".into(),
        assigned: 0,
        written: 0,
        quarantined: 0,
        empty_instances: Vec::new(),
        instances: Vec::new(),
    };
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut assignment = BTreeMap::new();
    let c = job.settings.recipe.mode.channels();
    let (mut sum, mut sum_sq, mut values) = (vec![0.0; c], vec![0.0; c], 0u64);
    let stats_channel = if channels.iter().any(|ch| ch == "train") {
        Some("train")
    } else {
        None
    };
    for channel in &channels {
        let mut index = Index {
            kind: "wids-shard-index-v1".into(),
            name: channel.clone(),
            shardlist: Vec::new(),
        };
        for result in results {
            if let Some(r) = result.channels.get(channel) {
                index.shardlist.extend(r.shards.iter().cloned());
                if stats_channel.is_none_or(|s| s == channel) {
                    for k in 0..c {
                        sum[k] += r.sum.get(k).copied().unwrap_or(0.0);
                        sum_sq[k] += r.sum_sq.get(k).copied().unwrap_or(0.0);
                    }
                    values += r.values;
                }
            }
        }
        files.push((format!("{channel}/index.json"), encode(&index)?));
    }
    for result in results {
        let mut line = InstanceLine {
            host: result.host.clone(),
            channels: BTreeMap::new(),
            records_per_second: result.records_per_second,
            seconds: result.seconds,
            peak_rss_mib: result.peak_rss_mib,
            quarantine: result.quarantine.clone(),
        };
        let mut per_channel = BTreeMap::new();
        let mut assigned = 0;
        for (channel, r) in &result.channels {
            line.channels
                .insert(channel.clone(), [r.assigned, r.written, r.quarantined]);
            per_channel.insert(channel.clone(), (r.assigned, r.assignment.to_string()));
            report.assigned += r.assigned;
            report.written += r.written;
            report.quarantined += r.quarantined;
            assigned += r.assigned;
        }
        if assigned == 0 {
            report.empty_instances.push(result.host.clone());
        }
        assignment.insert(result.host.clone(), per_channel);
        report.instances.push(line);
    }
    let mut recipe = job.settings.recipe.clone();
    if values > 0 {
        recipe.mean = sum.iter().map(|s| s / values as f64).collect();
        recipe.std = sum_sq
            .iter()
            .zip(&recipe.mean)
            .map(|(s2, m)| (s2 / values as f64 - m * m).max(0.0).sqrt().max(1e-6))
            .collect();
    }
    let budget = job.settings.error_budget;
    let over = report.assigned > 0 && report.quarantined as f64 > budget * report.assigned as f64;
    if over {
        report.status = "failed".into();
    }
    commit::recover(out).await?;
    // The index of a channel the previous job had and this one drops goes once this one is in.
    let previous: Option<Lineage> = match out.get_opt("lineage.json").await? {
        Some(bytes) => shardline_contract::lineage::parse(&out.uri_of("lineage.json"), &bytes).ok(),
        None => None,
    };
    let mut tx = Commit::begin(out);
    if !over {
        files.push(("recipe.json".into(), encode(&recipe)?));
    }
    files.push(("report.json".into(), encode(&report)?));
    for (name, bytes) in &files {
        tx.stage(name, Bytes::from(bytes.clone())).await?;
    }
    if over {
        // A lineage record marks an output complete; an earlier run's must not vouch for this one.
        out.delete("lineage.json").await?;
        tx.publish().await?;
        return Err(Error::OverBudget {
            failed: report.quarantined,
            total: report.assigned,
            rate: 100.0 * report.quarantined as f64 / report.assigned as f64,
            budget: 100.0 * budget,
            report: out.uri_of("report.json"),
        });
    }
    let lineage = Lineage {
        schema: shardline_contract::lineage::SCHEMA,
        producer: PRODUCER.into(),
        step: "process".into(),
        job: job.digest().to_string(),
        inputs: job.inputs.iter().map(|i| i.lineage_entry()).collect(),
        distribution: job.settings.distribution.rule().into(),
        instances: job.settings.instances,
        assignment,
        recipe,
        augment_channels: job.settings.augment_channels.clone(),
        seed: job.settings.seed,
        labels: job.labels.clone(),
        outputs: files
            .iter()
            .map(|(n, b)| (n.clone(), FileRecord::of(b)))
            .collect(),
    };
    owner::stage_finished(&mut tx, Stage::Process, job.digest().as_str(), &lineage).await?;
    tx.publish().await?;
    if let Some(previous) = previous {
        for name in previous.outputs.keys() {
            if name.ends_with("/index.json") && !lineage.outputs.contains_key(name) {
                out.delete(name).await?;
            }
        }
    }
    crate::instance::remove_departed(out, job.settings.instances).await?;
    Ok(report)
}
