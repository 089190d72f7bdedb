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

/// Checks what Kubernetes would refuse only when the file is applied: the namespace, Secret and
/// service account names, environment variable names, CPU and memory quantities.
fn check_workload(w: &Workload) -> Result<(), Error> {
    check_name(&w.name)?;
    let label = |setting: &'static str, v: &str| {
        let ok = !v.is_empty()
            && v.len() <= 63
            && v.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && !v.ends_with('-')
            && v.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(())
        } else {
            Err(bad(
                setting,
                format!(
                    "{v:?} is not a Kubernetes name: at most 63 lowercase letters, digits and '-'"
                ),
            ))
        }
    };
    if let Some(ns) = &w.namespace {
        label("namespace", ns)?;
    }
    for (setting, name) in [
        ("env-secret", &w.env_secret),
        ("service-account", &w.service_account),
    ] {
        if let Some(name) = name {
            // A DNS subdomain: labels joined by dots.
            if name.len() > 253 || name.split('.').any(|part| label(setting, part).is_err()) {
                return Err(bad(
                    setting,
                    format!(
                        "{name:?} is not a Kubernetes name: lowercase letters, digits, '-' and '.'"
                    ),
                ));
            }
        }
    }
    for (key, _) in &w.env {
        let ok = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(bad(
                "env",
                format!("{key:?} is not an environment variable name (letters, digits, '_')"),
            ));
        }
    }
    for (setting, quantity) in [("cpu", &w.cpu), ("memory", &w.memory)] {
        if let Some(q) = quantity
            && !is_quantity(q)
        {
            return Err(bad(
                setting,
                format!("{q:?} is not a Kubernetes quantity (e.g. 2, 500m, 4Gi, 1.5G)"),
            ));
        }
    }
    Ok(())
}

/// Whether `q` is a Kubernetes resource quantity: a positive decimal number with an optional
/// binary (Ki .. Ei), decimal (m, k, M .. E) or exponent suffix.
fn is_quantity(q: &str) -> bool {
    let digits = q.trim_start_matches('+');
    let end = digits
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(digits.len());
    let (number, suffix) = digits.split_at(end);
    let number_ok = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && number.parse::<f64>().is_ok_and(|v| v > 0.0);
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || suffix.strip_prefix(['e', 'E']).is_some_and(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    });
    number_ok && suffix_ok
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
    check_workload(w)?;
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
    check_workload(w)?;
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
    let command = match &w.env_secret {
        None => {
            mpirun.extend(w.shardline_command());
            mpirun
        }
        // The Secret's keys are known only in the cluster (a session token, a region, an
        // endpoint, ...): the launcher passes on every AWS_ variable it has, whatever the Secret
        // holds. The ranks' command goes through "$@", never through the shell's parsing.
        Some(_) => {
            let script = format!(
                "exec {} $(env | sed -n 's/^\\(AWS_[A-Za-z0-9_]*\\)=.*/-x \\1/p') \"$@\"",
                mpirun.join(" ")
            );
            ["sh".to_string(), "-c".into(), script, "sh".into()]
                .into_iter()
                .chain(w.shardline_command())
                .collect()
        }
    };
    let root = [
        ("OMPI_ALLOW_RUN_AS_ROOT", "1".to_string()),
        ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1".to_string()),
    ];
    let mut launcher = w.container("launcher", command, &root);
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
    fn quantities_and_names_kubernetes_refuses_are_refused_here() {
        for q in ["2", "500m", "4Gi", "1.5G", "0.5", "1e3", "128974848"] {
            assert!(is_quantity(q), "{q}");
        }
        for q in ["", "4GB", "two", "-1", "0", "1..5", "4 Gi", "m"] {
            assert!(!is_quantity(q), "{q}");
        }
        let refused = |change: &dyn Fn(&mut Workload)| {
            let mut w = workload();
            change(&mut w);
            indexed_job(&w, 2, 0).unwrap_err().to_string()
        };
        assert!(refused(&|w| w.memory = Some("4GB".into())).contains("quantity"));
        assert!(refused(&|w| w.cpu = Some("lots".into())).contains("quantity"));
        assert!(refused(&|w| w.namespace = Some("Prod".into())).contains("namespace"));
        assert!(refused(&|w| w.env_secret = Some("aws_keys".into())).contains("env-secret"));
        assert!(refused(&|w| w.env.push(("BAD-NAME".into(), "1".into()))).contains("env"));
    }

    #[test]
    fn an_mpijob_with_a_secret_passes_on_every_aws_variable_the_launcher_has() {
        let mut w = workload();
        w.env_secret = Some("aws-keys".into());
        w.args = vec!["train".into(), "--out".into(), "s3://lake/m o".into()];
        let doc = mpijob(&w, 2, 1).unwrap();
        let launcher =
            &doc["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0];
        let command: Vec<String> = launcher["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(command[..2], ["sh", "-c"]);
        // Run it, with an `mpirun` that prints what it was given.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("mpirun");
        std::fs::write(
            &fake,
            "#!/bin/sh\nfor a in \"$@\"; do echo \"[$a]\"; done\n",
        )
        .unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&fake)
            .status()
            .unwrap();
        let out = std::process::Command::new(&command[0])
            .args(&command[1..])
            .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
            .env("AWS_SESSION_TOKEN", "t")
            .env("AWS_REGION", "eu-west-1")
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout);
        for expected in [
            "[-x]\n[AWS_SESSION_TOKEN]",
            "[-x]\n[AWS_REGION]",
            "[s3://lake/m o]",
            "[-np]\n[2]",
        ] {
            assert!(printed.contains(expected), "{expected:?} in {printed}");
        }
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
