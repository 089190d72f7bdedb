//! `shardline launch kubernetes`: the files it writes pass the vendored Kubernetes and Kubeflow
//! MPIJob schemas in their strict form (an unknown field is an error; `schemas/kubernetes/`),
//! and carry the world size, the command and the environment the stage needs.

mod common;

use std::path::Path;

const VALIDATE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../schemas/kubernetes/validate.py"
);

/// Validates `file` with the vendored schemas; `Err` with the validator's report.
fn validate(file: &Path) -> Result<String, String> {
    let out = std::process::Command::new("python3")
        .arg(VALIDATE)
        .arg(file)
        .output()
        .expect("python3");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// The YAML documents of `file` as JSON (PyYAML reads them).
fn documents(file: &Path) -> Vec<serde_json::Value> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))"])
        .arg(file)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

#[test]
fn processing_is_an_indexed_job_that_passes_the_strict_schemas() {
    let t = common::TestDir::new();
    let file = t.arg("process.yaml");
    t.run(&[
        "launch",
        "kubernetes",
        "process",
        "--name",
        "shapes-process",
        "--image",
        "registry.example/shardline:0.1",
        "--instances",
        "4",
        "--env",
        "AWS_ENDPOINT_URL=http://garage:3900",
        "--env-secret",
        "s3-credentials",
        "--cpu",
        "2",
        "--memory",
        "4Gi",
        "--out",
        &file,
        "--",
        "--input",
        "train=s3://lake/manifests/train.manifest",
        "--out",
        "s3://lake/processed",
    ])
    .ok();
    let report = validate(Path::new(&file)).unwrap_or_else(|e| panic!("invalid: {e}"));
    assert!(
        report.contains("ok") && report.contains("Job shapes-process"),
        "{report}"
    );
    let docs = documents(Path::new(&file));
    assert_eq!(docs[0]["kind"], "Service");
    assert_eq!(docs[0]["spec"]["clusterIP"], "None");
    let job = &docs[1];
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    assert_eq!(job["spec"]["completions"], 4);
    assert_eq!(job["spec"]["parallelism"], 4);
    assert_eq!(job["spec"]["backoffLimitPerIndex"], 2);
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["subdomain"], "shapes-process");
    let c = &pod["containers"][0];
    assert_eq!(
        strings(&c["command"]),
        [
            "shardline",
            "process",
            "--input",
            "train=s3://lake/manifests/train.manifest",
            "--out",
            "s3://lake/processed"
        ]
    );
    let env: Vec<(String, String)> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        env.contains(&("SHARDLINE_WORLD_SIZE".into(), "4".into())),
        "{env:?}"
    );
    assert!(
        env.contains(&("AWS_ENDPOINT_URL".into(), "http://garage:3900".into())),
        "{env:?}"
    );
    assert_eq!(c["envFrom"][0]["secretRef"]["name"], "s3-credentials");

    // The schemas are strict: the same file with one unknown field fails.
    let text = std::fs::read_to_string(&file).unwrap();
    let bad = text.replacen(
        "completionMode: Indexed",
        "completionMode: Indexed\n  bogus: 1",
        1,
    );
    assert_ne!(bad, text);
    std::fs::write(t.path("bad.yaml"), bad).unwrap();
    let err = validate(&t.path("bad.yaml")).expect_err("an unknown field must fail");
    assert!(err.contains("bogus"), "{err}");
}

#[test]
fn training_is_an_mpijob_with_a_rank_per_slot() {
    let t = common::TestDir::new();
    let file = t.arg("train.yaml");
    t.run(&[
        "launch",
        "kubernetes",
        "train",
        "--name",
        "shapes-train",
        "--image",
        "registry.example/shardline:0.1",
        "--workers",
        "3",
        "--slots-per-worker",
        "2",
        "--env",
        "AWS_ENDPOINT_URL=http://garage:3900",
        "--out",
        &file,
        "--",
        "--data",
        "s3://lake/processed",
        "--out",
        "s3://lake/model",
        "--epochs",
        "10",
    ])
    .ok();
    validate(Path::new(&file)).unwrap_or_else(|e| panic!("invalid: {e}"));
    let docs = documents(Path::new(&file));
    assert_eq!(docs.len(), 1);
    let spec = &docs[0]["spec"];
    assert_eq!(docs[0]["apiVersion"], "kubeflow.org/v2beta1");
    assert_eq!(spec["slotsPerWorker"], 2);
    assert_eq!(spec["mpiReplicaSpecs"]["Worker"]["replicas"], 3);
    let launcher = &spec["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0];
    let command = strings(&launcher["command"]).join(" ");
    assert_eq!(
        command,
        "mpirun --allow-run-as-root --bind-to none -np 6 -x AWS_ENDPOINT_URL shardline train --data s3://lake/processed --out s3://lake/model --epochs 10"
    );
    let worker = &spec["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0];
    assert_eq!(strings(&worker["command"]), ["/usr/sbin/sshd", "-De"]);
}

#[test]
fn a_transform_is_an_indexed_job_too() {
    let t = common::TestDir::new();
    let file = t.arg("transform.yaml");
    t.run(&[
        "launch",
        "kubernetes",
        "transform",
        "--name",
        "shapes-predict",
        "--image",
        "registry.example/shardline:0.1",
        "--instances",
        "3",
        "--out",
        &file,
        "--",
        "--model",
        "shapes:2",
        "--registry",
        "s3://lake/registry",
        "--manifest",
        "s3://lake/manifests/test.manifest",
        "--out",
        "s3://lake/predictions",
    ])
    .ok();
    validate(Path::new(&file)).unwrap_or_else(|e| panic!("invalid: {e}"));
    let docs = documents(Path::new(&file));
    let c = &docs[1]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(strings(&c["command"])[..2], ["shardline", "transform"]);
    assert_eq!(docs[1]["spec"]["completions"], 3);
}

#[test]
fn launch_files_refuse_what_pods_cannot_run() {
    let t = common::TestDir::new();
    let refused = |args: &[&str], needle: &str| {
        let mut argv = vec!["launch", "kubernetes"];
        argv.extend_from_slice(args);
        let err = t.run(&argv).fails();
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    let process = |extra: &[&str], stage: &[&str], needle: &str| {
        let mut args = vec!["process", "--name", "p", "--image", "i"];
        args.extend_from_slice(extra);
        args.push("--");
        args.extend_from_slice(stage);
        refused(&args, needle);
    };
    let input = ["--input", "train=s3://l/t.manifest"];
    process(
        &[],
        &["--input", "train=s3://l/t.manifest", "--out", "processed"],
        "--out processed is not an s3:// location, and pods share no file system",
    );
    process(
        &[],
        &[
            "--input",
            "train=file:///data/t.manifest",
            "--out",
            "s3://l/o",
        ],
        "--input train=file:///data/t.manifest is not an s3:// location",
    );
    process(
        &[],
        &["--input", "train=s3://l/t.manifest", "--out", "memory://x"],
        "--out memory://x is not an s3:// location",
    );
    // Flags `shardline process` does not take would fail every pod.
    process(
        &[],
        &["--train", "s3://l/t.manifest", "--out", "s3://l/o"],
        "are not ones `shardline process` takes",
    );
    let mut with_instances = input.to_vec();
    with_instances.extend(["--out", "s3://l/o", "--instances", "3"]);
    process(
        &["--instances", "4"],
        &with_instances,
        "give --instances before `--`",
    );
    let mut ok = input.to_vec();
    ok.extend(["--out", "s3://l/o"]);
    process(
        &["--workers", "3"],
        &ok,
        "--workers and --slots-per-worker are for train",
    );
    process(
        &["--env", "SHARDLINE_WORLD_SIZE=7"],
        &ok,
        "is set by the launch file",
    );
    process(
        &["--env", "1ABC=x"],
        &ok,
        "is not an environment variable name",
    );
    let mut named = vec!["process", "--name", "Shapes_1", "--image", "i", "--"];
    named.extend_from_slice(&ok);
    refused(&named, "\"Shapes_1\" is not a Kubernetes name");
    let train = |extra: &[&str], stage: &[&str], needle: &str| {
        let mut args = vec!["train", "--name", "t", "--image", "i"];
        args.extend_from_slice(extra);
        args.push("--");
        args.extend_from_slice(stage);
        refused(&args, needle);
    };
    train(
        &[],
        &["--data", "s3://l/p", "--out", "s3://l/m", "--workers", "4"],
        "give --workers before `--`",
    );
    train(
        &["--instances", "5"],
        &["--data", "s3://l/p", "--out", "s3://l/m"],
        "--instances is for process and transform",
    );
    train(
        &[],
        &[
            "--data",
            "s3://l/p",
            "--out",
            "s3://l/m",
            "--model-config",
            "cfg.json",
        ],
        "--model-config cfg.json is not an s3:// location",
    );
    // Nothing was written on refusal.
    assert!(std::fs::read_dir(t.dir.path()).unwrap().next().is_none());
}

/// `--out` names a file the way a user expects: a link is followed (its target replaced), a
/// device such as /dev/stdout is written to, and a new file is readable by others (0644).
#[test]
fn launch_files_follow_links_and_write_to_devices() {
    use std::os::unix::fs::PermissionsExt;
    let t = common::TestDir::new();
    let args = |out: &str| -> Vec<String> {
        [
            "launch",
            "kubernetes",
            "process",
            "--name",
            "p",
            "--image",
            "i",
            "--out",
            out,
            "--",
            "--input",
            "train=s3://l/t.manifest",
            "--out",
            "s3://l/o",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |out: &str| {
        let a = args(out);
        t.run(&a.iter().map(String::as_str).collect::<Vec<_>>())
            .ok()
    };
    run(&t.arg("new.yaml"));
    let mode = std::fs::metadata(t.path("new.yaml"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o644);
    std::fs::write(t.path("target.yaml"), "old").unwrap();
    std::os::unix::fs::symlink(t.path("target.yaml"), t.path("link.yaml")).unwrap();
    run(&t.arg("link.yaml"));
    assert!(
        std::fs::symlink_metadata(t.path("link.yaml"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        std::fs::read_to_string(t.path("target.yaml"))
            .unwrap()
            .contains("kind: Job")
    );
    // A device is written to, not replaced.
    run("/dev/null");
    assert!(!std::fs::metadata("/dev/null").unwrap().is_file());
}
