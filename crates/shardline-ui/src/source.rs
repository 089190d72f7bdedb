//! What the pages read, and only through ids: executions and steps by id from the execution
//! store (opened read-only), log files by (execution, step, attempt) through the store's log
//! table, training metrics from the `metrics.csv` of the model a train step recorded as its
//! output, registries named by a register step's settings or by the dashboard's options.
//! Nothing here takes a file path from a request.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use shardline_pipeline::db::{Db, Edge, Execution, StepRow};
use shardline_registry::{Record, Reference, Registry};

use crate::Error;

/// The execution store and the registries the dashboard may read.
pub struct Source {
    db: Db,
    registries: Vec<String>,
}

/// A step's logs: the attempts that have logs, the attempt chosen, and its logs as
/// (instance, file), by instance.
pub struct Logs {
    /// Attempts with logs, in order.
    pub attempts: Vec<i64>,
    /// The attempt these files are of.
    pub attempt: i64,
    /// (instance, log file), algo-2 before algo-10.
    pub files: Vec<(String, PathBuf)>,
}

/// One registry's versions, or why they could not be read.
pub struct RegistryModels {
    /// Its index in [`Source::registries`].
    pub index: usize,
    /// Its URL.
    pub url: String,
    /// Its versions, by name then version.
    pub records: Result<Vec<Record>, String>,
}

/// One epoch's row of `metrics.csv` (every numeric column by name).
pub type Epoch = BTreeMap<String, f64>;

/// A train step's curves: its name and its epochs.
pub struct Training {
    /// The step.
    pub step: String,
    /// Where its model is.
    pub model: String,
    /// Its epochs in order.
    pub epochs: Vec<Epoch>,
}

impl Source {
    /// Opens the store in `state` read-only; `registries` are registry URLs shown beside those
    /// the store's register steps name.
    pub fn open(state: &Path, registries: Vec<String>) -> Result<Source, Error> {
        Ok(Source {
            db: Db::open_read_only(state)?,
            registries,
        })
    }

    /// The store.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Executions, newest first, of `pipeline` and with `status` when given.
    pub fn executions(
        &self,
        pipeline: Option<&str>,
        status: Option<&str>,
    ) -> Result<Vec<Execution>, Error> {
        Ok(self
            .db
            .executions()?
            .into_iter()
            .filter(|e| pipeline.is_none_or(|p| p.is_empty() || e.pipeline == p))
            .filter(|e| status.is_none_or(|s| s.is_empty() || e.shown_status() == s))
            .collect())
    }

    /// One execution by id (404 when there is none).
    pub fn execution(&self, id: &str) -> Result<Execution, Error> {
        self.db
            .execution(id)?
            .ok_or_else(|| Error::NotFound(format!("no execution {id:?} in the store")))
    }

    /// An execution's steps and, for each, the steps it depends on (by index), from the
    /// definition the execution ran (as the store recorded it).
    pub fn graph(&self, e: &Execution) -> Result<(Vec<StepRow>, Vec<Vec<usize>>), Error> {
        let steps = self.db.steps(&e.id)?;
        let definition = self
            .db
            .pipeline_text(&e.pipeline, &e.digest)?
            .and_then(|(text, file)| shardline_pipeline::parse(&file, &text).ok());
        let index: BTreeMap<&str, usize> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.step.as_str(), i))
            .collect();
        let deps = steps
            .iter()
            .map(|s| {
                definition
                    .as_ref()
                    .and_then(|d| d.step(&s.step))
                    .map(|d| {
                        d.deps
                            .iter()
                            .filter_map(|n| index.get(n.as_str()).copied())
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect();
        Ok((steps, deps))
    }

    /// One step of an execution (404 when there is none).
    pub fn step(&self, e: &Execution, step: &str) -> Result<StepRow, Error> {
        self.db
            .steps_by_name(&e.id)?
            .remove(step)
            .ok_or_else(|| Error::NotFound(format!("execution {} has no step {step:?}", e.id)))
    }

    /// A step's logs of `attempt` (default the latest).
    pub fn logs(&self, e: &Execution, step: &str, attempt: Option<i64>) -> Result<Logs, Error> {
        let all = self.db.logs(&e.id, step)?;
        let attempts: Vec<i64> = all
            .iter()
            .map(|(a, _, _)| *a)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let chosen = attempt.or(attempts.last().copied()).unwrap_or(1);
        if attempt.is_some() && !attempts.contains(&chosen) {
            return Err(Error::NotFound(format!(
                "step {step:?} of execution {} has no log of attempt {chosen}",
                e.id
            )));
        }
        let mut logs: Vec<(String, PathBuf)> = all
            .into_iter()
            .filter(|(a, _, _)| *a == chosen)
            .map(|(_, i, p)| (i, p))
            .collect();
        // algo-2 before algo-10; the step's own log (no number) first.
        logs.sort_by_key(|(i, _)| {
            (
                i.rsplit('-').next().and_then(|n| n.parse::<u64>().ok()),
                i.clone(),
            )
        });
        Ok(Logs {
            attempts,
            attempt: chosen,
            files: logs,
        })
    }

    /// The curves of an execution's train steps, from each model's `metrics.csv` and
    /// `timings.csv`.
    pub async fn training(&self, e: &Execution) -> Result<Vec<Training>, Error> {
        let mut out = Vec::new();
        for s in self
            .db
            .steps(&e.id)?
            .into_iter()
            .filter(|s| s.kind == "train")
        {
            let Some(model) = s.outputs.as_ref().and_then(|o| o["model"].as_str()) else {
                continue;
            };
            let store = shardline_store::Store::open(model)?;
            let Some(csv) = store.get_opt("metrics.csv").await? else {
                continue;
            };
            // What was learnt is in metrics.csv, how fast in timings.csv: one row per epoch each.
            let mut epochs = parse_metrics(&csv);
            if let Some(timings) = store.get_opt("timings.csv").await? {
                for (epoch, row) in epochs.iter_mut().zip(parse_metrics(&timings)) {
                    epoch.extend(row);
                }
            }
            out.push(Training {
                step: s.step.clone(),
                model: model.to_string(),
                epochs,
            });
        }
        Ok(out)
    }

    /// What the execution's data steps recorded beside their outputs: each manifest step's
    /// `lineage.json` (objects per class and channel) and each process step's `report.json`
    /// (per instance: throughput, time, memory, objects per channel, quarantined objects), as
    /// (step, kind, the record); steps whose record cannot be read are left out.
    pub async fn data(
        &self,
        e: &Execution,
    ) -> Result<Vec<(String, String, serde_json::Value)>, Error> {
        let mut out = Vec::new();
        for s in self.db.steps(&e.id)? {
            let file = match s.kind.as_str() {
                "manifest" => "lineage.json",
                "process" => "report.json",
                _ => continue,
            };
            let Some(dir) = s.outputs.as_ref().and_then(|o| o["out"].as_str()) else {
                continue;
            };
            let Some(bytes) = shardline_store::Store::open(dir)?.get_opt(file).await? else {
                continue;
            };
            if let Ok(record) = serde_json::from_slice(&bytes) {
                out.push((s.step.clone(), s.kind.clone(), record));
            }
        }
        Ok(out)
    }

    /// Every registry the dashboard may read: those given, then those the store's register
    /// steps name, each once, in that order. A registry is addressed by its index here.
    pub fn registries(&self) -> Result<Vec<String>, Error> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let mut named = Vec::new();
        for e in self.db.executions()? {
            for s in self.db.steps(&e.id)? {
                if let Some(r) = s.settings.as_ref().and_then(|v| v["registry"].as_str())
                    && s.kind == "register"
                {
                    named.push(r.to_string());
                }
            }
        }
        for r in self.registries.iter().cloned().chain(named) {
            if seen.insert(r.clone()) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The registry at `index` of [`Source::registries`] (404 past the end).
    pub fn registry(&self, index: usize) -> Result<(String, Registry), Error> {
        let url = self
            .registries()?
            .into_iter()
            .nth(index)
            .ok_or_else(|| Error::NotFound(format!("no registry {index}")))?;
        let registry = Registry::open(&url)?;
        Ok((url, registry))
    }

    /// Every version in every registry.
    pub async fn models(&self) -> Result<Vec<RegistryModels>, Error> {
        let mut out = Vec::new();
        for (i, url) in self.registries()?.into_iter().enumerate() {
            let records = match Registry::open(&url) {
                Ok(r) => r.list(None).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            out.push(RegistryModels {
                index: i,
                url,
                records,
            });
        }
        Ok(out)
    }

    /// One version of a model in registry `index`.
    pub async fn model(&self, index: usize, name: &str, version: u64) -> Result<Record, Error> {
        let (_, registry) = self.registry(index)?;
        let reference = Reference {
            name: name.to_string(),
            version: Some(version),
        };
        registry
            .get(&reference)
            .await
            .map_err(|e| Error::NotFound(format!("{name}:{version}: {e}")))
    }

    /// The name the edges know an artifact by: as given (a URI or digest), or as the store
    /// normalises its location (`/data` → `file:///data`). 404 when no edge names it.
    pub fn artifact(&self, artifact: &str) -> Result<String, Error> {
        if !self.db.edges_of(artifact)?.is_empty() {
            return Ok(artifact.to_string());
        }
        let normal = shardline_pipeline::trace::normal(artifact);
        if !self.db.edges_of(&normal)?.is_empty() {
            return Ok(normal);
        }
        Err(Error::NotFound(format!(
            "no step run read or wrote {artifact:?}"
        )))
    }

    /// The lineage neighbourhood of an artifact (a URI or digest the edges name): the step runs
    /// up to `depth` hops upstream and downstream and the artifacts they read and wrote, as
    /// edges. `artifact` is named as [`Source::artifact`] resolved it.
    pub fn neighbourhood(&self, artifact: &str, depth: usize) -> Result<Vec<Edge>, Error> {
        let first = self.db.edges_of(artifact)?;
        let mut edges: BTreeMap<(String, String, String, String), Edge> = BTreeMap::new();
        let mut runs_seen = BTreeSet::new();
        // Upstream follows "out" edges into the run that wrote an artifact, then that run's
        // inputs; downstream follows "in" edges into a reader, then its outputs.
        for (toward, back) in [("out", "in"), ("in", "out")] {
            let mut frontier: Vec<String> = first.iter().map(|e| e.uri.clone()).collect();
            frontier.dedup();
            for _ in 0..depth {
                let mut next = Vec::new();
                for uri in &frontier {
                    for e in self
                        .db
                        .edges_of(uri)?
                        .into_iter()
                        .filter(|e| e.direction == toward)
                    {
                        let run = (e.execution.clone(), e.step.clone());
                        if runs_seen.insert((run.clone(), toward)) {
                            for f in self.db.edges_of_step(&run.0, &run.1)? {
                                if f.direction == back {
                                    next.push(f.uri.clone());
                                    edges.insert(edge_key(&f), f);
                                }
                            }
                        }
                        edges.insert(edge_key(&e), e);
                    }
                }
                frontier = next;
            }
        }
        Ok(edges.into_values().collect())
    }
}

fn edge_key(e: &Edge) -> (String, String, String, String) {
    (
        e.execution.clone(),
        e.step.clone(),
        e.direction.clone(),
        e.uri.clone(),
    )
}

/// The numeric columns of `metrics.csv`, one map per row; cells that are not numbers are left out.
pub fn parse_metrics(csv: &[u8]) -> Vec<Epoch> {
    let mut reader = csv::Reader::from_reader(csv);
    let Ok(header) = reader.headers().cloned() else {
        return Vec::new();
    };
    reader
        .records()
        .filter_map(Result::ok)
        .map(|row| {
            header
                .iter()
                .zip(row.iter())
                .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse::<f64>().ok()?)))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_csv_parses_by_column() {
        let rows = parse_metrics(b"epoch,train_loss,lr\n1,0.5,0.01\n2,0.25,\n");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1]["train_loss"], 0.25);
        assert!(!rows[1].contains_key("lr"));
        assert!(parse_metrics(b"").is_empty());
    }
}
