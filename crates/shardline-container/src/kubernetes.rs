//! Kubernetes launch files for Shardline's stages, the container running the `shardline` binary.
//!
//! - Processing and batch transform: an Indexed Job (`completionMode: Indexed`, `completions` =
//!   `parallelism` = the instances, `backoffLimitPerIndex`, so a failed instance is retried on
//!   its own share) and a headless Service its pods are the subdomain of (stable names
//!   `NAME-<index>.NAME`). Each pod's rank is `JOB_COMPLETION_INDEX`, which Kubernetes sets; the
//!   world size is `SHARDLINE_WORLD_SIZE`, set here to the completions.
//! - Training: a Kubeflow MPIJob (`kubeflow.org/v2beta1`): one launcher running `mpirun` with one
//!   rank per worker (`slotsPerWorker`), the workers running `sshd` for it, as the MPI operator
//!   expects of an image.
//!
//! Pure: documents in, YAML out ([`to_yaml`]); the CLI writes them.

use serde_json::{Value, json};

use crate::Error;

/// What every launch file needs.
#[derive(Debug, Clone, Default)]
pub struct Workload {
    /// The Job's (or MPIJob's) name: a DNS label (lowercase letters, digits, `-`).
    pub name: String,
    /// The namespace, when not the current one.
    pub namespace: Option<String>,
    /// The container image holding the `shardline` binary (and, for training, Open MPI and sshd).
    pub image: String,
    /// The `shardline` arguments: the subcommand and its flags.
    pub args: Vec<String>,
    /// More environment variables for the container (the S3 endpoint, ...).
    pub env: Vec<(String, String)>,
    /// A Secret whose keys become environment variables (AWS credentials).
    pub env_secret: Option<String>,
    /// CPU request per pod (`2`, `500m`).
    pub cpu: Option<String>,
    /// Memory request and limit per pod (`4Gi`).
    pub memory: Option<String>,
    /// The service account the pods run as.
    pub service_account: Option<String>,
}

fn bad(setting: &'static str, reason: String) -> Error {
    Error::Setting {
        stage: "launch",
        setting,
        reason,
    }
}

/// Checks a name Kubernetes must accept as a Job name and pod subdomain (an RFC 1035 label; at
/// most 50 characters, leaving room for the pods' suffixes).
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 50
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(bad(
            "name",
            format!(
                "{name:?} is not a Kubernetes name: use at most 50 lowercase letters, digits and '-', starting with a letter (e.g. shapes-process)"
            ),
        ))
    }
}

impl Workload {
    fn metadata(&self) -> Value {
        let mut m = json!({"name": self.name, "labels": self.labels()});
        if let Some(ns) = &self.namespace {
            m["namespace"] = json!(ns);
        }
        m
    }

    fn labels(&self) -> Value {
        json!({
            "app.kubernetes.io/name": "shardline",
            "app.kubernetes.io/instance": self.name,
            "app.kubernetes.io/component": self.args.first().map_or("shardline", String::as_str),
        })
    }

    fn env(&self, extra: &[(&str, String)]) -> Value {
        let mut env: Vec<Value> = extra
            .iter()
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect();
        env.extend(self.env.iter().map(|(k, v)| json!({"name": k, "value": v})));
        Value::Array(env)
    }

    fn resources(&self) -> Option<Value> {
        let mut requests = serde_json::Map::new();
        let mut limits = serde_json::Map::new();
        if let Some(cpu) = &self.cpu {
            requests.insert("cpu".into(), json!(cpu));
        }
        if let Some(memory) = &self.memory {
            requests.insert("memory".into(), json!(memory));
            limits.insert("memory".into(), json!(memory));
        }
        if requests.is_empty() {
            return None;
        }
        let mut r = json!({"requests": requests});
        if !limits.is_empty() {
            r["limits"] = Value::Object(limits);
        }
        Some(r)
    }

    fn container(&self, name: &str, command: Vec<String>, env: &[(&str, String)]) -> Value {
        let mut c = json!({
            "name": name,
            "image": self.image,
            "command": command,
            "env": self.env(env),
        });
        if let Some(secret) = &self.env_secret {
            c["envFrom"] = json!([{"secretRef": {"name": secret}}]);
        }
        if let Some(r) = self.resources() {
            c["resources"] = r;
        }
        c
    }

    fn pod_spec(&self, containers: Vec<Value>, restart: &str) -> Value {
        let mut spec = json!({"restartPolicy": restart, "containers": containers});
        if let Some(sa) = &self.service_account {
            spec["serviceAccountName"] = json!(sa);
        }
        spec
    }

    fn shardline_command(&self) -> Vec<String> {
        std::iter::once("shardline".to_string())
            .chain(self.args.iter().cloned())
            .collect()
    }
}

/// A headless Service and an Indexed Job of `instances` pods, each one instance of the stage
/// (`retries` more tries per index).
pub fn indexed_job(w: &Workload, instances: usize, retries: u32) -> Result<Vec<Value>, Error> {
    check_name(&w.name)?;
    if instances == 0 {
        return Err(bad("instances", "must be at least 1".into()));
    }
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": w.metadata(),
        "spec": {
            "clusterIP": "None",
            "selector": {"job-name": w.name},
            "publishNotReadyAddresses": true,
        },
    });
    let container = w.container(
        "shardline",
        w.shardline_command(),
        &[("SHARDLINE_WORLD_SIZE", instances.to_string())],
    );
    let mut pod = w.pod_spec(vec![container], "Never");
    pod["subdomain"] = json!(w.name);
    let job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": w.metadata(),
        "spec": {
            "completionMode": "Indexed",
            "completions": instances,
            "parallelism": instances,
            "backoffLimitPerIndex": retries,
            "template": {
                "metadata": {"labels": w.labels()},
                "spec": pod,
            },
        },
    });
    Ok(vec![service, job])
}

/// A Kubeflow MPIJob of `workers` ranks: the launcher runs `mpirun -np WORKERS shardline ARGS`,
/// the environment passed to every rank.
pub fn mpijob(w: &Workload, workers: usize, slots_per_worker: usize) -> Result<Value, Error> {
    check_name(&w.name)?;
    if workers == 0 {
        return Err(bad("workers", "must be at least 1".into()));
    }
    if slots_per_worker == 0 {
        return Err(bad("slots-per-worker", "must be at least 1".into()));
    }
    let ranks = workers * slots_per_worker;
    let mut mpirun: Vec<String> = [
        "mpirun",
        "--allow-run-as-root",
        "--bind-to",
        "none",
        "-np",
        &ranks.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (k, _) in &w.env {
        mpirun.push("-x".into());
        mpirun.push(k.clone());
    }
    if w.env_secret.is_some() {
        for k in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            mpirun.push("-x".into());
            mpirun.push(k.into());
        }
    }
    mpirun.extend(w.shardline_command());
    let root = [
        ("OMPI_ALLOW_RUN_AS_ROOT", "1".to_string()),
        ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1".to_string()),
    ];
    let mut launcher = w.container("launcher", mpirun, &root);
    // The launcher only starts the ranks: it needs no more than the default resources.
    if let Some(obj) = launcher.as_object_mut() {
        obj.remove("resources");
    }
    let worker = w.container("worker", vec!["/usr/sbin/sshd".into(), "-De".into()], &[]);
    Ok(json!({
        "apiVersion": "kubeflow.org/v2beta1",
        "kind": "MPIJob",
        "metadata": w.metadata(),
        "spec": {
            "slotsPerWorker": slots_per_worker,
            "mpiImplementation": "OpenMPI",
            "launcherCreationPolicy": "WaitForWorkersReady",
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": 0},
            "mpiReplicaSpecs": {
                "Launcher": {
                    "replicas": 1,
                    "restartPolicy": "Never",
                    "template": {
                        "metadata": {"labels": w.labels()},
                        "spec": w.pod_spec(vec![launcher], "Never"),
                    },
                },
                "Worker": {
                    "replicas": workers,
                    "restartPolicy": "Never",
                    "template": {
                        "metadata": {"labels": w.labels()},
                        "spec": w.pod_spec(vec![worker], "Never"),
                    },
                },
            },
        },
    }))
}

/// The documents as one YAML stream (`---` between documents).
pub fn to_yaml(docs: &[Value]) -> String {
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        emit(doc, 0, &mut out);
    }
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let plain = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:".contains(c))
                && !s.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.' || c == ':')
                && !s.ends_with(':')
                && !matches!(
                    s.to_ascii_lowercase().as_str(),
                    "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n" | "~"
                );
            if plain {
                s.clone()
            } else {
                // A JSON string is a YAML double-quoted scalar, but for the characters YAML also
                // reads as line breaks, which JSON leaves unescaped: YAML's own escapes.
                Value::String(s.clone())
                    .to_string()
                    .replace('\u{85}', "\\N")
                    .replace('\u{2028}', "\\L")
                    .replace('\u{2029}', "\\P")
            }
        }
        other => other.to_string(),
    }
}

fn emit(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, value) in map {
                let key = scalar(&Value::String(k.clone()));
                match value {
                    Value::Object(m) if !m.is_empty() => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        emit(value, indent + 2, out);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        emit(value, indent, out);
                    }
                    _ => out.push_str(&format!("{pad}{key}: {}\n", inline(value))),
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        let mut inner = String::new();
                        emit(item, indent + 2, &mut inner);
                        // The first line of the item goes after the dash.
                        let body = inner
                            .strip_prefix(&" ".repeat(indent + 2))
                            .unwrap_or(&inner);
                        out.push_str(&format!("{pad}- {body}"));
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push_str(&format!("{pad}-\n"));
                        emit(item, indent + 2, out);
                    }
                    _ => out.push_str(&format!("{pad}- {}\n", inline(item))),
                }
            }
        }
        _ => out.push_str(&format!("{pad}{}\n", inline(v))),
    }
}

fn inline(v: &Value) -> String {
    match v {
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        other => scalar(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> Workload {
        Workload {
            name: "shapes-process".into(),
            image: "registry.example/shardline:1".into(),
            args: vec![
                "process".into(),
                "--out".into(),
                "s3://lake/processed".into(),
            ],
            env: vec![("AWS_ENDPOINT_URL".into(), "http://s3:3900".into())],
            cpu: Some("2".into()),
            memory: Some("4Gi".into()),
            ..Workload::default()
        }
    }

    #[test]
    fn an_indexed_job_has_a_pod_per_instance_and_the_world_size() {
        let docs = indexed_job(&workload(), 4, 2).unwrap();
        assert_eq!(docs[0]["kind"], "Service");
        assert_eq!(docs[0]["spec"]["clusterIP"], "None");
        let spec = &docs[1]["spec"];
        assert_eq!(spec["completions"], 4);
        assert_eq!(spec["parallelism"], 4);
        assert_eq!(spec["completionMode"], "Indexed");
        let c = &spec["template"]["spec"]["containers"][0];
        assert_eq!(c["command"][0], "shardline");
        assert_eq!(c["command"][1], "process");
        assert_eq!(c["env"][0]["name"], "SHARDLINE_WORLD_SIZE");
        assert_eq!(c["env"][0]["value"], "4");
        assert_eq!(spec["template"]["spec"]["subdomain"], "shapes-process");
    }

    #[test]
    fn an_mpijob_starts_one_rank_per_slot() {
        let mut w = workload();
        w.args = vec!["train".into(), "--data".into(), "s3://lake/p".into()];
        let doc = mpijob(&w, 3, 2).unwrap();
        let launcher =
            &doc["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0];
        let command: Vec<&str> = launcher["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let line = command.join(" ");
        assert!(line.starts_with("mpirun --allow-run-as-root --bind-to none -np 6 -x AWS_ENDPOINT_URL shardline train"), "{line}");
        assert_eq!(doc["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"], 3);
        assert_eq!(doc["spec"]["slotsPerWorker"], 2);
    }

    #[test]
    fn names_kubernetes_refuses_are_refused_here() {
        for name in ["", "Shapes", "1st", "a_b", "ends-", &"x".repeat(51)] {
            assert!(check_name(name).is_err(), "{name:?}");
        }
        check_name("shapes-process-2").unwrap();
    }

    #[test]
    fn yaml_quotes_what_would_change_meaning() {
        let doc = json!({"a": "true", "b": "1", "c": "plain-word", "d": ["x", {"k": "v", "n": 2}], "e": {}, "f": "a b: c"});
        let text = to_yaml(&[doc]);
        assert_eq!(
            to_yaml(&[json!({"k": "a\u{85}b\u{2028}c"})]),
            "k: \"a\\Nb\\Lc\"\n"
        );
        assert_eq!(
            text,
            "a: \"true\"\nb: \"1\"\nc: plain-word\nd:\n- x\n- k: v\n  \"n\": 2\ne: {}\nf: \"a b: c\"\n"
        );
    }
}
