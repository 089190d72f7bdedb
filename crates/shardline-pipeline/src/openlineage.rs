//! OpenLineage run events: START, then COMPLETE or FAIL, for every step run, with the pipeline
//! execution as the `parent` run facet and the step's inputs and outputs as datasets whose
//! version is their content digest. Appended to `openlineage.jsonl` in the state directory and,
//! when configured, posted to an HTTP endpoint (Marquez's `POST /api/v1/lineage`).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use shardline_lineage::PRODUCER;

/// The spec version the events follow.
pub const SCHEMA_URL: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";
const PARENT_FACET: &str =
    "https://openlineage.io/spec/facets/1-2-0/ParentRunFacet.json#/$defs/ParentRunFacet";
const VERSION_FACET: &str = "https://openlineage.io/spec/facets/1-0-1/DatasetVersionDatasetFacet.json#/$defs/DatasetVersionDatasetFacet";
const ERROR_FACET: &str = "https://openlineage.io/spec/facets/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet";

/// The namespace of Shardline's jobs.
pub const NAMESPACE: &str = "shardline";

/// Where events go.
pub struct Sink {
    file: PathBuf,
    url: Option<String>,
    client: reqwest::Client,
}

/// One dataset of an event: (URI, content digest).
pub type Dataset<'a> = (&'a str, &'a str);

/// The namespace and name of a dataset, from its URI (`s3://bucket/key` → `s3://bucket`, `key`;
/// a local path → `file`, the path), as OpenLineage's naming convention has them.
fn dataset_name(uri: &str) -> (String, String) {
    if let Some((scheme, rest)) = uri.split_once("://") {
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if scheme == "file" {
            return ("file".into(), format!("/{path}"));
        }
        return (format!("{scheme}://{authority}"), path.to_string());
    }
    ("file".into(), uri.to_string())
}

fn datasets(items: &[Dataset<'_>]) -> Value {
    Value::Array(
        items
            .iter()
            .map(|(uri, digest)| {
                let (namespace, name) = dataset_name(uri);
                json!({
                    "namespace": namespace,
                    "name": name,
                    "facets": {
                        "version": {
                            "_producer": PRODUCER,
                            "_schemaURL": VERSION_FACET,
                            "datasetVersion": digest,
                        }
                    }
                })
            })
            .collect(),
    )
}

/// What an event is about.
pub struct Run<'a> {
    /// The step run's id (a UUID).
    pub run_id: &'a str,
    /// The job: `pipeline.step`.
    pub job: String,
    /// The execution's run id (a UUID) and its job (the pipeline).
    pub parent: (&'a str, &'a str),
}

/// A run event as JSON.
pub fn event(
    kind: &str,
    run: &Run<'_>,
    inputs: &[Dataset<'_>],
    outputs: &[Dataset<'_>],
    error: Option<&str>,
) -> Value {
    let mut facets = json!({
        "parent": {
            "_producer": PRODUCER,
            "_schemaURL": PARENT_FACET,
            "run": {"runId": run.parent.0},
            "job": {"namespace": NAMESPACE, "name": run.parent.1},
        }
    });
    if let Some(message) = error {
        facets["errorMessage"] = json!({
            "_producer": PRODUCER,
            "_schemaURL": ERROR_FACET,
            "message": message,
            "programmingLanguage": "Rust",
        });
    }
    json!({
        "eventType": kind,
        "eventTime": crate::db::chrono_now(),
        "producer": PRODUCER,
        "schemaURL": SCHEMA_URL,
        "run": {"runId": run.run_id, "facets": facets},
        "job": {"namespace": NAMESPACE, "name": run.job},
        "inputs": datasets(inputs),
        "outputs": datasets(outputs),
    })
}

impl Sink {
    /// Events into `state_dir/openlineage.jsonl`, and to `url` if given.
    pub fn new(state_dir: &Path, url: Option<String>) -> Sink {
        Sink {
            file: state_dir.join("openlineage.jsonl"),
            url,
            client: reqwest::Client::new(),
        }
    }

    /// Emits one event. A failure to deliver is returned for the step's log; it never fails the
    /// step.
    pub async fn emit(&self, event: &Value) -> Result<(), String> {
        let mut line = event.to_string();
        line.push('\n');
        // One write of the whole line in append mode: lines of concurrent executions do not
        // interleave.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|e| format!("openlineage: {}: {e}", self.file.display()))?;
        if let Some(url) = &self.url {
            let response = self
                .client
                .post(url)
                .header("content-type", "application/json")
                .body(event.to_string())
                .timeout(std::time::Duration::from_secs(10))
                .send()
                .await
                .map_err(|e| format!("openlineage: POST {url}: {e}"))?;
            if !response.status().is_success() {
                return Err(format!(
                    "openlineage: POST {url} answered {}",
                    response.status()
                ));
            }
        }
        Ok(())
    }
}
