//! Shardline's model registry: named models with version numbers (1, 2, 3...), each an immutable
//! copy of the model's `model.tar.gz` with a record of where it came from, its metrics and its
//! lineage (which data, which settings), kept in any store (a local directory by default, or
//! S3).
//!
//! Layout under the registry root:
//!
//! ```text
//! models/<name>/claims/<version>          the version number, taken by an exclusive create
//! models/<name>/<version>/model.tar.gz    the model, copied
//! models/<name>/<version>/record.json     written last: a version without it does not exist
//! ```
//!
//! Two registrations racing for a name never get the same version: each takes its number by
//! creating `claims/<version>` exclusively ([`Store::put_new`]), and retries with the next number
//! when another was first. A registration that dies after its claim leaves a gap in the
//! numbers, never a half-registered version.

use std::io::Read;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use shardline_lineage::{FileRecord, PRODUCER};
use shardline_store::Store;

/// What went wrong in the registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] shardline_store::Error),
    /// A name or reference that cannot be used.
    #[error("model registry: {0}")]
    Invalid(String),
    /// The named model or version is not registered.
    #[error("model registry: {0}")]
    NotFound(String),
    /// The source is not a model.
    #[error("model registry: {0}")]
    NotAModel(String),
}

/// `Result` with the registry's error.
pub type Result<T> = std::result::Result<T, Error>;

/// A model and version: `name:3`, `name:latest`, or `name` (the latest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The model's name.
    pub name: String,
    /// The version; `None` is the latest.
    pub version: Option<u64>,
}

impl Reference {
    /// Parses `name[:version|:latest]`.
    pub fn parse(text: &str) -> Result<Reference> {
        let (name, version) = match text.rsplit_once(':') {
            Some((name, "latest")) => (name, None),
            Some((name, version)) => {
                let number = version
                    .parse::<u64>()
                    .ok()
                    .filter(|v| *v > 0)
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "{text:?}: the version must be a number from 1 or \"latest\""
                        ))
                    })?;
                (name, Some(number))
            }
            None => (text, None),
        };
        check_name(name)?;
        Ok(Reference {
            name: name.to_string(),
            version,
        })
    }

    /// Whether `text` names a registered model rather than a store URL: `name:version` or
    /// `name:latest`, with no `/` (a URL or a path always has one, or a scheme).
    pub fn looks_like(text: &str) -> bool {
        !text.contains('/') && text.contains(':') && Reference::parse(text).is_ok()
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.version {
            Some(v) => write!(f, "{}:{v}", self.name),
            None => write!(f, "{}:latest", self.name),
        }
    }
}

/// Model names: 1 to 64 letters, digits, `.`, `_` or `-`, starting with a letter or digit.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{name:?} is not a model name: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )))
    }
}

/// One registered version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The model's name.
    pub name: String,
    /// Its version number.
    pub version: u64,
    /// When it was registered (RFC 3339, UTC).
    pub registered_at: String,
    /// Who registered it.
    pub producer: String,
    /// Where the model was registered from.
    pub source: String,
    /// The registry's copy, relative to the registry root.
    pub artifact: String,
    /// Size and digest of the copy.
    pub model: FileRecord,
    /// A free-text description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Metrics: the model's test accuracy, its last epoch's training metrics, and an evaluation
    /// report when one was given.
    pub metrics: serde_json::Value,
    /// The model's own lineage record (its data, the data's lineage digest, the settings).
    pub lineage: serde_json::Value,
}

impl Record {
    /// Its accuracy for a person: the evaluation report's, else the training's test accuracy.
    pub fn accuracy(&self) -> String {
        self.metrics["evaluation"]["accuracy"]
            .as_f64()
            .or_else(|| self.metrics["test_accuracy"].as_f64())
            .map_or("-".into(), |a| format!("{:.2}%", 100.0 * a))
    }

    /// The record as lines for a person; `copy` is where the registry's copy is.
    pub fn describe(&self, copy: &str) -> Vec<String> {
        let mut lines = vec![
            format!("{}:{}", self.name, self.version),
            format!("  registered  {}", self.registered_at),
            format!("  source      {}", self.source),
            format!("  copy        {copy}"),
            format!(
                "  model       {} bytes, {}",
                self.model.bytes,
                self.model.digest.as_str()
            ),
        ];
        if let Some(d) = &self.description {
            lines.push(format!("  description {d}"));
        }
        lines.push(format!("  accuracy    {}", self.accuracy()));
        for key in ["data", "step", "workers", "settings"] {
            if !self.lineage[key].is_null() {
                lines.push(format!("  {key:<11} {}", self.lineage[key]));
            }
        }
        lines
    }
}

/// Records as a table for a person: name, version, registration time, accuracy, source.
pub fn table(records: &[Record]) -> Vec<String> {
    let width = records
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut lines = vec![format!(
        "{:<width$}  version  registered            accuracy  source",
        "name"
    )];
    lines.extend(records.iter().map(|r| {
        format!(
            "{:<width$}  {:>7}  {:<20}  {:>8}  {}",
            r.name,
            r.version,
            r.registered_at,
            r.accuracy(),
            r.source
        )
    }));
    lines
}

/// A registry rooted in a store.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Store,
}

/// A model archive's members by name, read in one walk, checked for what serving needs: the
/// files `shardline train` packs, the JSON ones readable. Checked before a version number is
/// taken, so that garbage never becomes a version.
fn read_archive(
    tarball: &[u8],
    source: &str,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>> {
    let not = |reason: String| Error::NotAModel(format!("{source}: {reason}"));
    let mut found = std::collections::BTreeMap::new();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tarball));
    let entries = archive.entries().map_err(|e| {
        not(format!(
            "model.tar.gz is not a gzip-compressed tar archive ({e}); register what `shardline train` wrote"
        ))
    })?;
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            not(format!(
                "model.tar.gz is not a gzip-compressed tar archive ({e}); register what `shardline train` wrote"
            ))
        })?;
        let path = entry
            .path()
            .map_err(|e| not(format!("model.tar.gz has an unreadable member name ({e})")))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| not(format!("model.tar.gz's {path} cannot be read ({e})")))?;
        found.insert(path, bytes);
    }
    for name in ["weights.bin", "model.json", "labels.json", "recipe.json"] {
        let Some(bytes) = found.get(name) else {
            return Err(not(format!(
                "model.tar.gz has no {name}; register what `shardline train` wrote"
            )));
        };
        if bytes.is_empty() {
            return Err(not(format!("model.tar.gz's {name} is empty")));
        }
        if name.ends_with(".json") {
            serde_json::from_slice::<serde_json::Value>(bytes)
                .map_err(|e| not(format!("model.tar.gz's {name} is not JSON ({e})")))?;
        }
    }
    Ok(found)
}

/// The last row of a `metrics.csv`, by column.
fn last_epoch(csv: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(csv);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let Some(last) = lines.rfind(|l| !l.trim().is_empty()) else {
        return serde_json::Value::Null;
    };
    header
        .iter()
        .zip(last.split(','))
        .map(|(k, v)| {
            let value = v
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map_or_else(|| serde_json::json!(v), serde_json::Value::Number);
            (k.to_string(), value)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

impl Registry {
    /// The registry at `url` (created on first registration).
    pub fn open(url: &str) -> Result<Registry> {
        Ok(Registry {
            store: Store::open(url)?,
        })
    }

    /// The registry's root URL.
    pub fn uri(&self) -> String {
        self.store.uri()
    }

    /// The URL of a version's `model.tar.gz`.
    pub fn artifact_uri(&self, record: &Record) -> String {
        self.store.uri_of(&record.artifact)
    }

    /// Registers the model at `source` (a directory written by `shardline train`, or a
    /// `model.tar.gz`) as the next version of `name`.
    pub async fn register(
        &self,
        name: &str,
        source: &str,
        evaluation: Option<serde_json::Value>,
        description: Option<String>,
    ) -> Result<Record> {
        check_name(name)?;
        // A directory's own lineage.json and metrics.csv; an archive's are among its members.
        let (tarball, beside, source_uri) = if source.ends_with(".tar.gz") {
            let (dir, file) = source.rsplit_once('/').unwrap_or((".", source));
            let store = Store::open(dir)?;
            let tarball = store.get(file).await?;
            (tarball, None, store.uri_of(file))
        } else {
            let store = Store::open(source)?;
            let tarball = store.get_opt("model.tar.gz").await?.ok_or_else(|| {
                Error::NotAModel(format!(
                    "{} has no model.tar.gz; register a directory written by `shardline train` (or a model.tar.gz)",
                    store.uri()
                ))
            })?;
            let lineage = store.get_opt("lineage.json").await?.map(|b| b.to_vec());
            let csv = store.get_opt("metrics.csv").await?.map(|b| b.to_vec());
            (tarball, Some((lineage, csv)), store.uri())
        };
        let mut members = read_archive(&tarball, &source_uri)?;
        let (lineage, csv) = beside.unwrap_or_else(|| {
            (
                members.remove("lineage.json"),
                members.remove("metrics.csv"),
            )
        });
        let lineage: serde_json::Value = match lineage {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::NotAModel(format!("{source_uri}: lineage.json is not JSON: {e}"))
            })?,
            None => serde_json::Value::Null,
        };
        let mut metrics = serde_json::Map::new();
        if let Some(accuracy) = lineage.get("test_accuracy").filter(|v| !v.is_null()) {
            metrics.insert("test_accuracy".into(), accuracy.clone());
        }
        if let Some(csv) = csv {
            metrics.insert("final_epoch".into(), last_epoch(&csv));
        }
        if let Some(evaluation) = evaluation {
            metrics.insert("evaluation".into(), evaluation);
        }

        // Take the next free version number.
        let claims = format!("models/{name}/claims/");
        let mut version = 0;
        for _ in 0..1000 {
            let taken = self
                .store
                .list_all(&claims)
                .await?
                .iter()
                .filter_map(|o| o.key.rsplit('/').next()?.parse::<u64>().ok())
                .max()
                .unwrap_or(0);
            let next = taken.max(version) + 1;
            if self
                .store
                .put_new(&format!("{claims}{next}"), Bytes::from_static(b""))
                .await?
            {
                version = next;
                break;
            }
            version = next;
        }
        if version == 0 {
            return Err(Error::Invalid(format!(
                "could not take a version number for {name}"
            )));
        }
        let artifact = format!("models/{name}/{version}/model.tar.gz");
        let record = Record {
            name: name.to_string(),
            version,
            registered_at: now(),
            producer: PRODUCER.to_string(),
            source: source_uri,
            artifact: artifact.clone(),
            model: FileRecord::of(&tarball),
            description,
            metrics: metrics.into(),
            lineage,
        };
        self.store.put(&artifact, tarball).await?;
        let text = serde_json::to_vec_pretty(&record).unwrap_or_default();
        self.store
            .put_new(&format!("models/{name}/{version}/record.json"), text.into())
            .await?;
        Ok(record)
    }

    /// Every registered version, of one model or of all, by name then version.
    pub async fn list(&self, name: Option<&str>) -> Result<Vec<Record>> {
        let prefix = match name {
            Some(name) => {
                check_name(name)?;
                format!("models/{name}/")
            }
            None => "models/".to_string(),
        };
        let mut records = Vec::new();
        for object in self.store.list_all(&prefix).await? {
            if object.key.ends_with("/record.json") {
                let bytes = self.store.get(&object.key).await?;
                let record: Record = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Invalid(format!(
                        "{} is damaged: {e}",
                        self.store.uri_of(&object.key)
                    ))
                })?;
                records.push(record);
            }
        }
        records.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        Ok(records)
    }

    /// The record a reference names; the latest version for `name:latest`.
    pub async fn get(&self, reference: &Reference) -> Result<Record> {
        let versions = self.list(Some(&reference.name)).await?;
        let found = match reference.version {
            Some(v) => versions.into_iter().find(|r| r.version == v),
            None => versions.into_iter().last(),
        };
        found.ok_or_else(|| {
            Error::NotFound(format!(
                "{reference} is not registered in {}; `shardline model list` shows what is",
                self.store.uri()
            ))
        })
    }

    /// Resolves a reference to the URL of its `model.tar.gz`, checking the copy's digest.
    pub async fn resolve(&self, reference: &Reference) -> Result<(Record, String)> {
        let record = self.get(reference).await?;
        let bytes = self.store.get(&record.artifact).await?;
        if !record.model.matches(&bytes) {
            return Err(Error::Invalid(format!(
                "{} does not match its record's digest {}; the registry was changed by hand",
                self.store.uri_of(&record.artifact),
                record.model.digest.as_str()
            )));
        }
        let uri = self.artifact_uri(&record);
        Ok((record, uri))
    }
}

fn now() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    chrono::DateTime::from_timestamp(seconds, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_bad_ones_are_named() {
        assert_eq!(
            Reference::parse("pets:3").expect("parse"),
            Reference {
                name: "pets".into(),
                version: Some(3)
            }
        );
        assert_eq!(
            Reference::parse("pets:latest").expect("latest").version,
            None
        );
        assert_eq!(Reference::parse("pets").expect("bare").version, None);
        assert!(Reference::parse("pets:0").is_err());
        assert!(Reference::parse("pets:x").is_err());
        assert!(Reference::parse("../x:1").is_err());
        assert!(Reference::looks_like("pets:2"));
        assert!(!Reference::looks_like("s3://bucket/model"));
        assert!(!Reference::looks_like("models/pets"));
        assert!(!Reference::looks_like("pets"));
    }

    #[test]
    fn the_last_epoch_of_a_metrics_file() {
        let csv = b"epoch,train_loss\n1,0.5\n2,0.25\n";
        assert_eq!(
            last_epoch(csv),
            serde_json::json!({"epoch": 2.0, "train_loss": 0.25})
        );
    }
}
