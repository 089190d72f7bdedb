//! Several hosts for real, on one machine: three network namespaces on a bridge (the testkit's
//! `Hosts` harness), Garage on the first, `mpirun` launching one rank per host over TCP. Needs
//! root (CI runs as root); fails, never skips, without it.

mod common;

use std::collections::BTreeMap;

use shardline_testkit::garage::LocalGarage;
use shardline_testkit::hosts::Hosts;

const SHARDLINE: &str = env!("CARGO_BIN_EXE_shardline");

/// Runs `shardline ARGS` inside host `i` with the S3 environment.
fn shardline(hosts: &Hosts, i: usize, env: &[(&str, String)], args: &[&str]) -> String {
    let mut command = hosts.command(i, SHARDLINE);
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command
        .run()
        .unwrap_or_else(|e| panic!("shardline {args:?} on host {}: {e}", i + 1))
}

/// Every object below `prefix` (relative key → ETag), listed from host 1 with boto3.
fn objects(hosts: &Hosts, env: &[(&str, String)], prefix: &str) -> BTreeMap<String, String> {
    let script = r#"
import json, os, sys, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
bucket, prefix = sys.argv[1], sys.argv[2].rstrip("/") + "/"
out = {}
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
    for o in page.get("Contents", []):
        out[o["Key"][len(prefix):]] = o["ETag"]
print(json.dumps(out))
"#;
    let text = boto3(hosts, env, script, &["lake".as_ref(), prefix.as_ref()]);
    serde_json::from_str(&text).expect("json")
}

/// Three hosts, Garage on the first, and a small dataset with its manifests in it.
fn cluster(t: &common::TestDir) -> (Hosts, LocalGarage, Vec<(&'static str, String)>) {
    let hosts = Hosts::start(3, &t.path("hosts")).expect("three hosts (run as root)");
    let garage = LocalGarage::start_in(
        &t.path("garage"),
        "lake",
        &hosts.host(0).addr.to_string(),
        &hosts.enter(0),
    )
    .expect("garage on host 1");
    let env = garage.env();
    shardline(
        &hosts,
        0,
        &env,
        &[
            "datagen",
            "shapes",
            "--out",
            "s3://lake/raw",
            "--classes",
            "3",
            "--per-class",
            "20",
            "--size",
            "32",
        ],
    );
    shardline(
        &hosts,
        1,
        &env,
        &[
            "manifest",
            "--source",
            "s3://lake/raw",
            "--out",
            "s3://lake/m",
        ],
    );
    (hosts, garage, env)
}

const INPUTS: [&str; 10] = [
    "--input",
    "train=s3://lake/m/train.manifest",
    "--input",
    "validation=s3://lake/m/validation.manifest",
    "--input",
    "test=s3://lake/m/test.manifest",
    "--instances",
    "3",
    "--size",
    "16",
];

/// `mpirun -np 3 shardline ARGS` across the hosts, with the S3 settings passed on (-x).
fn mpirun_command<'h, S: AsRef<str>>(
    hosts: &'h Hosts,
    env: &[(&str, String)],
    args: &[S],
) -> shardline_testkit::hosts::HostCommand<'h> {
    let mut mpi: Vec<String> = Vec::new();
    for (k, _) in env {
        mpi.push("-x".into());
        mpi.push((*k).into());
    }
    mpi.push(SHARDLINE.into());
    mpi.extend(args.iter().map(|a| a.as_ref().to_string()));
    let mut command = hosts.mpirun(3, &mpi);
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

/// Runs [`mpirun_command`] to its end (at most 5 minutes).
fn mpirun(hosts: &Hosts, env: &[(&str, String)], args: &[&str]) -> std::process::Output {
    mpirun_command(hosts, env, args)
        .timeout(std::time::Duration::from_secs(300))
        .output()
        .expect("mpirun")
}

#[test]
fn processing_across_three_hosts_equals_a_single_host_run() {
    let t = common::TestDir::new();
    let (hosts, garage, env) = cluster(&t);
    let inputs = INPUTS;
    // One host, its local launcher: the reference.
    let mut args = vec!["process", "--out", "s3://lake/one"];
    args.extend(inputs);
    shardline(&hosts, 0, &env, &args);

    // One instance per host under mpirun, over TCP; the S3 settings travel with -x.
    let mut args = vec!["process", "--out", "s3://lake/three"];
    args.extend(inputs);
    let output = mpirun(&hosts, &env, &args);
    assert!(
        output.status.success(),
        "mpirun across hosts failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // Each instance ran on its own host.
    let logs = objects(&hosts, &env, "three/logs");
    for host in ["algo-1.log", "algo-2.log", "algo-3.log"] {
        assert!(logs.contains_key(host), "no {host} in {logs:?}");
    }
    // Shard for shard, digest for digest (the ETags of single-part uploads are their MD5s).
    let data = |all: BTreeMap<String, String>| -> BTreeMap<String, String> {
        all.into_iter()
            .filter(|(k, _)| k.ends_with(".tar") || k.ends_with("index.json") || k == "recipe.json")
            .collect()
    };
    let one = data(objects(&hosts, &env, "one"));
    let three = data(objects(&hosts, &env, "three"));
    assert!(
        one.keys().filter(|k| k.ends_with(".tar")).count() >= 9,
        "{one:?}"
    );
    assert_eq!(
        one, three,
        "the three-host output differs from the one-host output"
    );
    drop(garage);
    hosts.stop().expect("the hosts are torn down completely");
}

/// Downloads `key` of the bucket into `path`, from host 1.
fn download(hosts: &Hosts, env: &[(&str, String)], key: &str, path: &std::path::Path) {
    let script = r#"
import os, sys, boto3
body = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).get_object(Bucket="lake", Key=sys.argv[1])["Body"].read()
open(sys.argv[2], "wb").write(body)
"#;
    boto3(hosts, env, script, &[key.as_ref(), path.as_os_str()]);
}

/// Runs a boto3 `script` with `args` on host 1 with the S3 environment.
fn boto3(hosts: &Hosts, env: &[(&str, String)], script: &str, args: &[&std::ffi::OsStr]) -> String {
    let mut command = hosts.command(0, "python3");
    command.args(["-c", script]).args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command
        .run()
        .unwrap_or_else(|e| panic!("boto3 on host 1: {e}"))
}

#[test]
fn training_across_three_hosts_reaches_the_in_process_weights() {
    let t = common::TestDir::new();
    let (hosts, garage, env) = cluster(&t);
    let mut args = vec!["process", "--out", "s3://lake/p"];
    args.extend(INPUTS);
    shardline(&hosts, 0, &env, &args);
    let schedule = ["--epochs", "2", "--batch", "8", "--seed", "3"];
    // Three in-process workers on one host, then three ranks on three hosts over TCP.
    let mut args = vec![
        "train",
        "--data",
        "s3://lake/p",
        "--out",
        "s3://lake/inproc",
        "--workers",
        "3",
    ];
    args.extend(schedule);
    shardline(&hosts, 0, &env, &args);
    let mut args = vec!["train", "--data", "s3://lake/p", "--out", "s3://lake/mpi"];
    args.extend(schedule);
    let output = mpirun(&hosts, &env, &args);
    assert!(
        output.status.success(),
        "training across hosts failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    download(&hosts, &env, "inproc/weights.bin", &t.path("inproc.bin"));
    download(&hosts, &env, "mpi/weights.bin", &t.path("mpi.bin"));
    assert_same_weights(&t.path("inproc.bin"), &t.path("mpi.bin"));
    drop(garage);
    hosts.stop().expect("the hosts are torn down completely");
}

/// Asserts that two models' weights agree within float tolerance (1e-3 relative), and are not
/// all zero.
fn assert_same_weights(a: &std::path::Path, b: &std::path::Path) {
    let read = |path: &std::path::Path| {
        shardline_train::weights::decode_parameters(&std::fs::read(path).expect("read weights"))
            .expect("weights")
    };
    let (a, b) = (read(a), read(b));
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for ((sa, va), (sb, vb)) in a.iter().zip(&b) {
        assert_eq!(sa, sb);
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((x - y).abs() / x.abs().max(1.0));
        }
    }
    assert!(worst < 1e-3, "weights differ by up to {worst} (relative)");
    assert!(
        a.iter()
            .zip(&b)
            .any(|((_, va), _)| va.iter().any(|x| *x != 0.0))
    );
}

/// Processes the cluster's dataset on host 1 into `s3://lake/p`.
fn processed(hosts: &Hosts, env: &[(&str, String)]) {
    let mut args = vec!["process", "--out", "s3://lake/p"];
    args.extend(INPUTS);
    shardline(hosts, 0, env, &args);
}

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn a_rank_killed_on_another_host_ends_the_job_naming_it() {
    let t = common::TestDir::new();
    let (hosts, garage, mut env) = cluster(&t);
    processed(&hosts, &env);
    env.push(("SHARDLINE_FAULT", "rank-1:epoch-1-step-2".into()));
    let output = mpirun(
        &hosts,
        &env,
        &[
            "train",
            "--data",
            "s3://lake/p",
            "--out",
            "s3://lake/killed",
            "--epochs",
            "3",
            "--batch",
            "4",
        ],
    );
    let text = text(&output);
    assert!(!output.status.success(), "{text}");
    assert_ne!(output.status.code(), Some(124), "the job hung:\n{text}");
    assert!(text.contains("aborting rank-1 at epoch-1-step-2"), "{text}");
    assert!(text.contains("rank 1"), "the error names the rank:\n{text}");
    drop(garage);
    hosts.stop().expect("the hosts are torn down completely");
}

#[test]
fn a_host_cut_off_for_good_ends_training_within_the_collective_timeout() {
    let t = common::TestDir::new();
    let (hosts, garage, env) = cluster(&t);
    processed(&hosts, &env);
    let mut command = mpirun_command(
        &hosts,
        &env,
        &[
            "train",
            "--data",
            "s3://lake/p",
            "--out",
            "s3://lake/cut",
            "--epochs",
            "200",
            "--batch",
            "4",
            "--collective-timeout",
            "15",
        ],
    );
    let child = command
        .timeout(std::time::Duration::from_secs(240))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("mpirun");
    // Let the ranks connect and train a while, then take host 3's link down for good.
    std::thread::sleep(std::time::Duration::from_secs(20));
    let veth = hosts.host(2).veth.clone();
    let status = std::process::Command::new("ip")
        .args(["link", "set", &veth, "down"])
        .status()
        .expect("ip link");
    assert!(status.success());
    let output = child.wait_with_output().expect("wait");
    let text = text(&output);
    assert!(!output.status.success(), "{text}");
    assert_ne!(
        output.status.code(),
        Some(124),
        "the job waited for Open MPI's keepalive instead of the collective timeout:\n{text}"
    );
    // Whichever notices first (Shardline's collective timeout on rank 0, which names the rank
    // whose header did not come, or mpirun's keepalive on the daemon it lost), the job ends
    // naming the host that is gone.
    assert!(
        text.contains("on node h3") || text.contains("rank 2 (on h3) did not reach"),
        "the unreachable host is not named:\n{text}"
    );
    drop(garage);
    hosts.stop().expect("the hosts are torn down completely");
}

#[test]
fn the_s3_server_restarted_mid_training_loses_nothing() {
    let t = common::TestDir::new();
    let (hosts, mut garage, env) = cluster(&t);
    processed(&hosts, &env);
    let train = |out: &str| -> Vec<String> {
        [
            "train",
            "--data",
            "s3://lake/p",
            "--out",
            out,
            "--epochs",
            "6",
            "--batch",
            "4",
            "--seed",
            "5",
        ]
        .map(String::from)
        .to_vec()
    };
    // The reference: the same job with the server up throughout.
    let args = train("s3://lake/steady");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = mpirun(&hosts, &env, &args);
    assert!(output.status.success(), "{}", text(&output));

    let child = mpirun_command(&hosts, &env, &train("s3://lake/restarted"))
        .timeout(std::time::Duration::from_secs(300))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("mpirun");
    // Epoch checkpoints go to the server while it is down for a moment.
    std::thread::sleep(std::time::Duration::from_secs(6));
    garage
        .restart(std::time::Duration::from_secs(2))
        .expect("garage restarts");
    let output = child.wait_with_output().expect("wait");
    let log = text(&output);
    assert!(output.status.success(), "{log}");
    assert!(
        log.contains("retry"),
        "the restart was not felt (no request was retried):\n{log}"
    );
    download(&hosts, &env, "steady/weights.bin", &t.path("steady.bin"));
    download(
        &hosts,
        &env,
        "restarted/weights.bin",
        &t.path("restarted.bin"),
    );
    assert_eq!(
        std::fs::read(t.path("steady.bin")).expect("read"),
        std::fs::read(t.path("restarted.bin")).expect("read"),
        "the model trained through a server restart differs from the steady one"
    );
    drop(garage);
    hosts.stop().expect("the hosts are torn down completely");
}

/// The text of one object, from host 1.
fn read_text(hosts: &Hosts, env: &[(&str, String)], key: &str) -> String {
    let path = hosts.dir().join(key.replace('/', "_"));
    download(hosts, env, key, &path);
    std::fs::read_to_string(&path).expect("read")
}

#[test]
fn a_processing_instance_that_dies_on_its_host_is_redone_alone() {
    let t = common::TestDir::new();
    let (hosts, garage, mut env) = cluster(&t);
    let mut args = vec!["process", "--out", "s3://lake/one"];
    args.extend(INPUTS);
    shardline(&hosts, 0, &env, &args);

    let mut args = vec!["process", "--out", "s3://lake/three"];
    args.extend(INPUTS);
    env.push(("SHARDLINE_FAULT", "algo-3:after-2".into()));
    let output = mpirun(&hosts, &env, &args);
    let log = text(&output);
    assert!(!output.status.success(), "{log}");
    assert!(log.contains("aborting algo-3 at after-2"), "{log}");
    env.pop();
    // The launcher (a scheduler, a person) starts the job again: only algo-3 has work left.
    assert_only_algo3_redone(&hosts, &env, &args, "three");
    drop(garage);
    hosts.stop().expect("the hosts are torn down completely");
}

#[test]
fn a_processing_host_cut_off_ends_the_job_and_only_its_share_is_redone() {
    let t = common::TestDir::new();
    let (hosts, garage, mut env) = cluster(&t);
    let mut args = vec!["process", "--out", "s3://lake/one"];
    args.extend(INPUTS);
    shardline(&hosts, 0, &env, &args);

    let mut args = vec!["process", "--out", "s3://lake/cut"];
    args.extend(INPUTS);
    // algo-3 stops after two objects, as a host does whose link is about to go.
    env.push(("SHARDLINE_FAULT", "algo-3:stall-after-2".into()));
    let child = mpirun_command(&hosts, &env, &args)
        .timeout(std::time::Duration::from_secs(240))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("mpirun");
    env.pop();
    // The other instances finish their shares (their records are in the store); then host 3's
    // link goes down for good.
    let started = std::time::Instant::now();
    while !{
        let done = objects(&hosts, &env, "cut/.shardline/instances");
        done.contains_key("algo-1.json") && done.contains_key("algo-2.json")
    } {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "algo-1 and algo-2 did not finish"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    let veth = hosts.host(2).veth.clone();
    let link = |state: &str| {
        let status = std::process::Command::new("ip")
            .args(["link", "set", &veth, state])
            .status()
            .expect("ip link");
        assert!(status.success());
    };
    link("down");
    let output = child.wait_with_output().expect("wait");
    let log = text(&output);
    assert!(!output.status.success(), "{log}");
    assert_ne!(
        output.status.code(),
        Some(124),
        "mpirun did not notice the lost host:\n{log}"
    );
    assert!(
        log.contains("h3"),
        "the unreachable host is not named:\n{log}"
    );
    // The link comes back; the job is started again: only algo-3 has work left.
    link("up");
    assert_only_algo3_redone(&hosts, &env, &args, "cut");
    drop(garage);
    hosts.stop().expect("the hosts are torn down completely");
}

/// Runs the processing job `args` (into `s3://lake/OUT`) again and checks that only algo-3 did its
/// work again, and that the output equals the one-host run's in `s3://lake/one`.
fn assert_only_algo3_redone(hosts: &Hosts, env: &[(&str, String)], args: &[&str], out: &str) {
    let output = mpirun(hosts, env, args);
    assert!(output.status.success(), "{}", text(&output));
    for host in ["algo-1", "algo-2"] {
        let log = read_text(hosts, env, &format!("{out}/logs/{host}.log"));
        assert!(
            log.contains("already finished this job"),
            "{host} was redone:\n{log}"
        );
    }
    let log = read_text(hosts, env, &format!("{out}/logs/algo-3.log"));
    assert!(!log.contains("already finished this job"), "{log}");
    let data = |all: BTreeMap<String, String>| -> BTreeMap<String, String> {
        all.into_iter()
            .filter(|(k, _)| k.ends_with(".tar") || k.ends_with("index.json"))
            .collect()
    };
    assert_eq!(
        data(objects(hosts, env, "one")),
        data(objects(hosts, env, out)),
        "the redone job's output differs from a one-host run's"
    );
}

/// Copies every object below `prefix` into `dir`, as SageMaker fills a FullyReplicated channel.
fn download_prefix(hosts: &Hosts, env: &[(&str, String)], prefix: &str, dir: &std::path::Path) {
    let script = r#"
import os, sys, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
prefix, out = sys.argv[1].rstrip("/") + "/", sys.argv[2]
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="lake", Prefix=prefix):
    for o in page.get("Contents", []):
        path = os.path.join(out, o["Key"][len(prefix):])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s3.download_file("lake", o["Key"], path)
"#;
    boto3(hosts, env, script, &[prefix.as_ref(), dir.as_os_str()]);
}

#[test]
fn each_host_a_sagemaker_training_instance_with_its_own_opt_ml() {
    let t = common::TestDir::new();
    let (hosts, garage, env) = cluster(&t);
    processed(&hosts, &env);
    let schedule = ["--epochs", "2", "--batch", "8", "--seed", "3"];
    let mut args = vec![
        "train",
        "--data",
        "s3://lake/p",
        "--out",
        "s3://lake/inproc",
        "--workers",
        "3",
    ];
    args.extend(schedule);
    shardline(&hosts, 0, &env, &args);
    // As SageMaker starts a training job of three instances: the same container and arguments
    // on each host, its own /opt/ml (the channel copied in, its resourceconfig.json), no
    // launcher. The first host starts the ranks with mpirun (the rsh agent standing in for
    // SageMaker's ssh); the others wait for their MPI daemon to come and go.
    let mut children = Vec::new();
    for i in 0..3 {
        let root = t.path(&format!("opt-ml-{i}"));
        std::fs::create_dir_all(root.join("input/config")).unwrap();
        std::fs::create_dir_all(root.join("model")).unwrap();
        std::fs::write(
            root.join("input/config/resourceconfig.json"),
            format!(
                r#"{{"current_host": "algo-{}", "hosts": ["algo-1", "algo-2", "algo-3"], "network_interface_name": "eth0"}}"#,
                i + 1
            ),
        )
        .unwrap();
        download_prefix(&hosts, &env, "p", &root.join("input/data/data"));
        assert!(root.join("input/data/data/recipe.json").exists());
        hosts
            .bind(i, &root, std::path::Path::new("/opt/ml"))
            .expect("a per-host /opt/ml");
        let seen = hosts
            .exec(i, &["cat", "/opt/ml/input/config/resourceconfig.json"])
            .expect("its /opt/ml");
        assert!(seen.contains(&format!("\"algo-{}\"", i + 1)), "{seen}");
    }
    for i in 0..3 {
        let mut command = hosts.command(i, SHARDLINE);
        command.args([
            "train",
            "--data",
            "/opt/ml/input/data/data",
            "--out",
            "/opt/ml/model",
        ]);
        command.args(schedule);
        command.envs(hosts.mpirun_env());
        for (k, v) in &env {
            command.env(k, v);
        }
        command
            .timeout(std::time::Duration::from_secs(300))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        children.push(command.spawn().expect("spawn an instance"));
    }
    let mut outputs = Vec::new();
    for (i, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output().expect("wait");
        assert!(
            output.status.success(),
            "instance algo-{} failed:\n{}",
            i + 1,
            text(&output)
        );
        outputs.push(text(&output));
    }
    assert!(
        outputs[0].contains("leading a SageMaker job of 3 hosts"),
        "{}",
        outputs[0]
    );
    assert!(
        outputs[1].contains("its rank is started by algo-1"),
        "{}",
        outputs[1]
    );
    // The model is on the first host only, and it is the in-process run's.
    download(&hosts, &env, "inproc/weights.bin", &t.path("inproc.bin"));
    assert_same_weights(&t.path("inproc.bin"), &t.path("opt-ml-0/model/weights.bin"));
    for i in 1..3 {
        let model = t.path(&format!("opt-ml-{i}/model"));
        assert!(
            std::fs::read_dir(&model).unwrap().next().is_none(),
            "a follower wrote into its model directory {}",
            model.display()
        );
    }
    drop(garage);
    hosts.stop().expect("the hosts are torn down completely");
}

#[test]
fn each_host_a_sagemaker_processing_instance_with_its_own_resourceconfig() {
    let t = common::TestDir::new();
    let (hosts, garage, env) = cluster(&t);
    let mut args = vec!["process", "--out", "s3://lake/one"];
    args.extend(INPUTS);
    shardline(&hosts, 0, &env, &args);
    // As SageMaker starts a processing job: every instance on its own host, started on its own
    // (no mpirun), told who it is by /opt/ml/config/resourceconfig.json.
    let mut children = Vec::new();
    for i in 0..3 {
        let config = t.path(&format!("resourceconfig-{i}.json"));
        std::fs::write(
            &config,
            format!(
                r#"{{"current_host": "algo-{}", "hosts": ["algo-1", "algo-2", "algo-3"]}}"#,
                i + 1
            ),
        )
        .expect("resourceconfig");
        let mut command = hosts.command(i, SHARDLINE);
        command.args(["process", "--out", "s3://lake/sagemaker"]);
        command.args(INPUTS);
        command.env("SHARDLINE_RESOURCE_CONFIG", &config);
        for (k, v) in &env {
            command.env(k, v);
        }
        command
            .timeout(std::time::Duration::from_secs(300))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        children.push(command.spawn().expect("spawn an instance"));
    }
    for (i, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output().expect("wait");
        assert!(
            output.status.success(),
            "instance algo-{} failed:\n{}",
            i + 1,
            text(&output)
        );
    }
    let data = |all: BTreeMap<String, String>| -> BTreeMap<String, String> {
        all.into_iter()
            .filter(|(k, _)| k.ends_with(".tar") || k.ends_with("index.json") || k == "recipe.json")
            .collect()
    };
    assert_eq!(
        data(objects(&hosts, &env, "one")),
        data(objects(&hosts, &env, "sagemaker")),
        "the SageMaker-style job's output differs from a one-host run's"
    );
    drop(garage);
    hosts.stop().expect("the hosts are torn down completely");
}
