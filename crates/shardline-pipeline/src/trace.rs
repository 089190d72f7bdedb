//! Lineage queries over the store's edges: where an artifact came from (upstream, to the raw
//! listing, with each step's settings) and what used it (downstream, to models, registrations
//! and transforms). An artifact is named by URI (a file inside a step's output folder counts as
//! that output) or by content digest.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::db::{Db, DbError, Edge};

/// A step run that wrote or read an artifact.
#[derive(Debug, Clone, Serialize)]
pub struct StepRun {
    /// The execution.
    pub execution: String,
    /// The step.
    pub step: String,
    /// Its kind.
    pub kind: String,
    /// Its resolved settings.
    pub settings: serde_json::Value,
    /// Its status (`cached`: the run reused an earlier run's outputs).
    pub status: String,
}

/// One artifact in a lineage tree.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// Its URI.
    pub uri: String,
    /// Its content digest.
    pub digest: String,
    /// The run that wrote it (upstream trees) or read it (downstream trees).
    pub run: Option<StepRun>,
    /// Upstream: the run's inputs; downstream: the run's outputs.
    pub next: Vec<Node>,
}

/// Normalises a location as the store names it, without a trailing slash.
pub fn normal(uri: &str) -> String {
    shardline_store::Store::open(uri)
        .map(|s| s.uri())
        .unwrap_or_else(|_| uri.to_string())
        .trim_end_matches('/')
        .to_string()
}

fn step_run(db: &Db, e: &Edge) -> Result<StepRun, DbError> {
    let row = db
        .steps(&e.execution)?
        .into_iter()
        .find(|s| s.step == e.step);
    Ok(StepRun {
        execution: e.execution.clone(),
        step: e.step.clone(),
        kind: row.as_ref().map(|r| r.kind.clone()).unwrap_or_default(),
        status: row.as_ref().map(|r| r.status.clone()).unwrap_or_default(),
        settings: row.and_then(|r| r.settings).unwrap_or_default(),
    })
}

/// The runs that wrote `artifact` (or a folder holding it), the original run first: a cached
/// step's copy of the same edge comes after.
fn producers(db: &Db, artifact: &str) -> Result<Vec<Edge>, DbError> {
    let mut edges: Vec<Edge> = db
        .edges_of(artifact)?
        .into_iter()
        .filter(|e| e.direction == "out")
        .collect();
    if edges.is_empty() {
        edges = db.edges_containing(artifact, "out")?.into_iter().collect();
    }
    let mut keyed = Vec::with_capacity(edges.len());
    for e in edges {
        let cached = step_run(db, &e)?.status == "cached";
        keyed.push((cached, e));
    }
    keyed.sort_by_key(|(cached, _)| *cached);
    Ok(keyed.into_iter().map(|(_, e)| e).collect())
}

/// Where `artifact` came from.
pub fn upstream(db: &Db, artifact: &str) -> Result<Option<Node>, DbError> {
    let artifact = if artifact.starts_with("sha256:") {
        artifact.to_string()
    } else {
        normal(artifact)
    };
    let mut seen = BTreeSet::new();
    up(db, &artifact, None, &mut seen, 0)
}

fn up(
    db: &Db,
    artifact: &str,
    digest: Option<&str>,
    seen: &mut BTreeSet<String>,
    depth: usize,
) -> Result<Option<Node>, DbError> {
    let found = producers(db, artifact)?;
    let edge = match digest {
        Some(d) => found.iter().find(|e| e.digest == d).or(found.first()),
        None => found.first(),
    };
    let Some(edge) = edge.cloned() else {
        return Ok(None);
    };
    let uri = if artifact.starts_with("sha256:") {
        edge.uri.clone()
    } else {
        artifact.to_string()
    };
    let mut node = Node {
        uri,
        digest: digest.map_or(edge.digest.clone(), str::to_string),
        run: Some(step_run(db, &edge)?),
        next: Vec::new(),
    };
    if depth > 32 || !seen.insert(format!("{}/{}", edge.execution, edge.step)) {
        return Ok(Some(node));
    }
    for input in db
        .edges_of_step(&edge.execution, &edge.step)?
        .into_iter()
        .filter(|e| e.direction == "in")
    {
        let child = up(db, &input.uri, Some(&input.digest), seen, depth + 1)?;
        node.next.push(child.unwrap_or(Node {
            uri: input.uri,
            digest: input.digest,
            run: None,
            next: Vec::new(),
        }));
    }
    Ok(Some(node))
}

/// What used `artifact`: every run that read it (or a file inside it), and onward.
pub fn downstream(db: &Db, artifact: &str) -> Result<Node, DbError> {
    let artifact = if artifact.starts_with("sha256:") {
        db.edges_of(artifact)?
            .first()
            .map_or(artifact.to_string(), |e| e.uri.clone())
    } else {
        normal(artifact)
    };
    let mut seen = BTreeSet::new();
    let digest = producers(db, &artifact)?
        .first()
        .map(|e| e.digest.clone())
        .unwrap_or_default();
    down(db, &artifact, digest, &mut seen, 0)
}

fn down(
    db: &Db,
    artifact: &str,
    digest: String,
    seen: &mut BTreeSet<String>,
    depth: usize,
) -> Result<Node, DbError> {
    let mut node = Node {
        uri: artifact.to_string(),
        digest,
        run: None,
        next: Vec::new(),
    };
    if depth > 32 {
        return Ok(node);
    }
    let mut readers: Vec<Edge> = db.edges_of(artifact)?;
    readers.extend(db.edges_containing_inside(artifact, "in")?);
    readers.retain(|e| e.direction == "in");
    for reader in readers {
        if !seen.insert(format!("{}/{}", reader.execution, reader.step)) {
            continue;
        }
        let run = step_run(db, &reader)?;
        if run.status == "cached" {
            // The same work as an earlier run, which is listed.
            continue;
        }
        let mut outputs = Vec::new();
        for out in db
            .edges_of_step(&reader.execution, &reader.step)?
            .into_iter()
            .filter(|e| e.direction == "out")
        {
            outputs.push(down(db, &out.uri, out.digest.clone(), seen, depth + 1)?);
        }
        node.next.push(Node {
            uri: format!("{} / {}", reader.execution, reader.step),
            digest: String::new(),
            run: Some(run),
            next: outputs,
        });
    }
    Ok(node)
}

/// A tree as indented lines.
pub fn render(node: &Node, upstream: bool) -> Vec<String> {
    let mut lines = Vec::new();
    walk(node, upstream, 0, &mut lines);
    lines
}

fn settings_line(settings: &serde_json::Value) -> String {
    let Some(map) = settings.as_object() else {
        return String::new();
    };
    let shown: Vec<String> = map
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "out" | "source" | "data" | "inputs" | "model" | "manifest"
            )
        })
        .map(|(k, v)| {
            let v = v.to_string();
            if v.chars().count() > 40 {
                format!("{k}={}…", v.chars().take(40).collect::<String>())
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    shown.join(" ")
}

fn walk(node: &Node, upstream: bool, depth: usize, lines: &mut Vec<String>) {
    let pad = "    ".repeat(depth);
    if upstream || node.run.is_none() {
        let digest = node.digest.strip_prefix("sha256:").unwrap_or(&node.digest);
        let digest = &digest[..digest.len().min(12)];
        if digest.is_empty() {
            lines.push(format!("{pad}{}", node.uri));
        } else {
            lines.push(format!("{pad}{}  ({digest})", node.uri));
        }
    }
    if let Some(run) = &node.run {
        let arrow = if upstream {
            "← written by"
        } else {
            "→ read by"
        };
        let indent = if upstream {
            format!("{pad}  ")
        } else {
            pad.clone()
        };
        lines.push(format!(
            "{indent}{arrow} step `{}` ({}) of execution {}  {}",
            run.step,
            run.kind,
            run.execution,
            settings_line(&run.settings)
        ));
    } else if upstream && depth > 0 {
        lines.push(format!("{pad}  (raw input: written by no step)"));
    }
    for child in &node.next {
        walk(child, upstream, depth + 1, lines);
    }
}
