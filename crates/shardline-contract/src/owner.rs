//! Every stage's output location carries a record of the stage and job that own it,
//! `.shardline/owner.json`. Before any work a stage [`claim`]s its `--out`: a location that holds
//! another stage's output is refused (a process job at a manifest directory would destroy its
//! `lineage.json`), and one that holds a finished, different job of the same stage is refused
//! unless the user forces it. The owner record of a finished job is committed with the job's
//! outputs ([`finished`]), so a new job replaces an old one only once it has succeeded.
//!
//! Locations written before owner records existed are recognised by their lineage record's
//! `step` (or a transform's `summary.json`, or a bare model directory's `model.json`).

use serde::{Deserialize, Serialize};
use shardline_store::Store;

use crate::Error;

/// Where the record lives, relative to the output location.
pub const KEY: &str = ".shardline/owner.json";

/// The stages that own output locations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// `shardline manifest`: channel manifests, table, lineage.
    Manifest,
    /// `shardline process`: shards, indexes, recipe, report, lineage, logs.
    Process,
    /// `shardline train`: a model directory.
    Train,
    /// `shardline transform`: predictions and a summary.
    Transform,
}

impl Stage {
    /// The command's name.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Manifest => "manifest",
            Stage::Process => "process",
            Stage::Train => "train",
            Stage::Transform => "transform",
        }
    }

    fn from_step(step: &str) -> Option<Stage> {
        Some(match step {
            "manifest" => Stage::Manifest,
            "process" => Stage::Process,
            "train" | "train-script" => Stage::Train,
            "transform" => Stage::Transform,
            _ => return None,
        })
    }
}

/// The record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Its schema version.
    pub schema: u32,
    /// The stage.
    pub stage: Stage,
    /// The digest of the job (everything that changes the stage's outputs); empty when unknown
    /// (an output written before owner records).
    pub job: String,
    /// Whether the job's outputs are complete.
    pub finished: bool,
}

/// What [`claim`] found at the location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nothing of any stage's.
    Fresh,
    /// This job's own output: finished (a rerun has nothing to do) or not (resume it).
    Same {
        /// Whether it is complete.
        finished: bool,
    },
    /// Another job of this stage, unfinished, or finished and `force` was given: the new job
    /// replaces it once it succeeds.
    Replacing {
        /// The other job's digest ("" when unknown).
        job: String,
    },
}

/// Who holds `out`, if anyone: its owner record, else what an older output's files say.
pub async fn holder(out: &Store) -> Result<Option<Owner>, Error> {
    let recorded: Option<Owner> = match out.get_opt(KEY).await? {
        Some(bytes) => Some(
            serde_json::from_slice(&bytes).map_err(|e| Error::BadRecord {
                uri: out.uri_of(KEY),
                reason: format!(
                    "is not an owner record ({e}); remove it if nothing else is stored there"
                ),
            })?,
        ),
        None => None,
    };
    if let Some(owner) = &recorded
        && owner.finished
    {
        return Ok(recorded);
    }
    let step_of = |bytes: &[u8]| -> Option<(Stage, String)> {
        let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let stage = Stage::from_step(value.get("step")?.as_str()?)?;
        let job = value
            .get("job")
            .and_then(|j| j.as_str())
            .unwrap_or_default()
            .to_string();
        Some((stage, job))
    };
    for key in ["lineage.json", "summary.json"] {
        if let Some(bytes) = out.get_opt(key).await?
            && let Some((stage, job)) = step_of(&bytes)
        {
            // A stage that finished without committing a finished owner record (the manifest
            // step's outputs are exactly its listed files) is recognised by its lineage record.
            if let Some(owner) = &recorded
                && owner.stage != stage
            {
                return Ok(recorded);
            }
            return Ok(Some(Owner {
                schema: 0,
                stage,
                job,
                finished: true,
            }));
        }
    }
    if recorded.is_some() {
        return Ok(recorded);
    }
    if out.exists(crate::model::CONFIG).await? || out.exists(crate::model::ARCHIVE).await? {
        return Ok(Some(Owner {
            schema: 0,
            stage: Stage::Train,
            job: String::new(),
            finished: true,
        }));
    }
    Ok(None)
}

/// Refuses `out` for `stage` when another stage owns it, or when another finished job of this
/// stage does and `force` is off; otherwise says what is there. It writes nothing, so a refused
/// or failed run leaves the location as it was; the owner record comes with the job's commit.
pub async fn claim(out: &Store, stage: Stage, job: &str, force: bool) -> Result<Claim, Error> {
    let refuse = |reason: String| Error::Refused {
        stage: stage.name(),
        uri: out.uri(),
        reason,
    };
    let Some(found) = holder(out).await? else {
        return Ok(Claim::Fresh);
    };
    if found.stage != stage {
        return Err(refuse(format!(
            "holds the output of `shardline {}`{}, which this {} job would overwrite; give another `out` (or delete that output first)",
            found.stage.name(),
            if found.finished { "" } else { " (unfinished)" },
            stage.name()
        )));
    }
    if !found.job.is_empty() && found.job == job {
        return Ok(Claim::Same {
            finished: found.finished,
        });
    }
    if found.finished && !force {
        return Err(refuse(format!(
            "holds a finished, different {} job ({}); give another `out`, or `force` to replace it once this job succeeds",
            stage.name(),
            if found.job.is_empty() {
                "written before jobs were recorded".to_string()
            } else {
                found.job.clone()
            }
        )));
    }
    Ok(Claim::Replacing { job: found.job })
}

/// The owner record's bytes, to commit with a job's outputs (`finished`) or to mark a location
/// being written.
pub fn record(stage: Stage, job: &str, finished: bool) -> Result<Vec<u8>, Error> {
    crate::lineage::encode(&Owner {
        schema: crate::lineage::SCHEMA,
        stage,
        job: job.to_string(),
        finished,
    })
}

/// Stages the last two files of a job's commit, in their order: its finished owner record, then
/// its lineage record (whose presence says the output is complete).
pub async fn stage_finished<T: Serialize>(
    tx: &mut shardline_store::commit::Commit<'_>,
    stage: Stage,
    job: &str,
    lineage: &T,
) -> Result<(), Error> {
    let (key, record) = finished(stage, job)?;
    tx.stage(key, bytes::Bytes::from(record)).await?;
    tx.stage(
        "lineage.json",
        bytes::Bytes::from(crate::lineage::encode(lineage)?),
    )
    .await?;
    Ok(())
}

/// The owner record of a finished job, to stage in the job's commit before its lineage record.
pub fn finished(stage: Stage, job: &str) -> Result<(&'static str, Vec<u8>), Error> {
    Ok((KEY, record(stage, job, true)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        Store::open(&format!(
            "memory://owner-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ))
        .expect("memory store")
    }

    #[tokio::test]
    async fn a_location_belongs_to_one_stage_and_one_finished_job() {
        let out = store();
        assert_eq!(
            claim(&out, Stage::Process, "a", false)
                .await
                .expect("fresh"),
            Claim::Fresh
        );
        out.put(
            KEY,
            record(Stage::Process, "a", false).expect("record").into(),
        )
        .await
        .expect("mark");
        // Unfinished: the same job resumes; another stage is refused.
        assert_eq!(
            claim(&out, Stage::Process, "a", false).await.expect("same"),
            Claim::Same { finished: false }
        );
        let err = claim(&out, Stage::Train, "t", true)
            .await
            .expect_err("other stage");
        assert!(
            err.to_string()
                .contains("holds the output of `shardline process` (unfinished)"),
            "{err}"
        );
        // Finished: another job needs --force.
        let (key, bytes) = finished(Stage::Process, "a").expect("record");
        out.put(key, bytes.into()).await.expect("put");
        let err = claim(&out, Stage::Process, "b", false)
            .await
            .expect_err("other job");
        assert!(err.to_string().contains("`force`"), "{err}");
        assert_eq!(
            claim(&out, Stage::Process, "b", true)
                .await
                .expect("forced"),
            Claim::Replacing { job: "a".into() }
        );
    }

    #[tokio::test]
    async fn older_outputs_are_recognised_by_their_lineage_step() {
        let out = store();
        out.put("lineage.json", br#"{"step": "manifest"}"#.to_vec().into())
            .await
            .expect("put");
        let err = claim(&out, Stage::Process, "p", true)
            .await
            .expect_err("manifest dir");
        assert!(err.to_string().contains("`shardline manifest`"), "{err}");
        let models = store();
        models
            .put("model.json", b"{}".to_vec().into())
            .await
            .expect("put");
        let err = claim(&models, Stage::Transform, "x", true)
            .await
            .expect_err("model dir");
        assert!(err.to_string().contains("`shardline train`"), "{err}");
    }
}
