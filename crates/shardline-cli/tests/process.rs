//! The processing step as a user runs it: the real binary, the local launcher, external launcher
//! identities, mpirun, the script contract, corrupt images and a killed instance.

mod common;

use std::collections::BTreeSet;

use common::{TestDir, files};

fn json(path: std::path::PathBuf) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .expect("json")
}

/// Samples per instance in a channel's index.
fn samples_by_host(index: &serde_json::Value) -> Vec<(String, u64)> {
    index["shardlist"]
        .as_array()
        .expect("shardlist")
        .iter()
        .map(|s| {
            let url = s["url"].as_str().expect("url");
            (
                url[..url.rfind('-').expect("dash")].to_string(),
                s["nsamples"].as_u64().expect("n"),
            )
        })
        .collect()
}

#[test]
fn sharded_by_key_gives_each_instance_a_unique_share() {
    let t = TestDir::new();
    t.manifests(2, 20);
    let stdout = t
        .process(&["--out", "p", "--instances", "3", "--size", "16x16"])
        .ok();
    assert!(
        stdout.contains("40 objects → 40 samples in 3 instance(s)"),
        "{stdout}"
    );
    let index = json(t.path("p/train/index.json"));
    let by_host = samples_by_host(&index);
    assert_eq!(by_host.iter().map(|(_, n)| n).sum::<u64>(), 20);
    let hosts: BTreeSet<&str> = by_host.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(hosts, BTreeSet::from(["algo-1", "algo-2", "algo-3"]));
    for (_, n) in &by_host {
        assert!((6..=7).contains(n), "{by_host:?}");
    }
    // Every source object is in exactly one shard.
    let mut keys = Vec::new();
    for shard in index["shardlist"].as_array().expect("list") {
        let file = std::fs::File::open(t.path("p/train").join(shard["url"].as_str().expect("url")))
            .expect("shard");
        let mut archive = tar::Archive::new(file);
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let name = entry.path().expect("path").display().to_string();
            if name.ends_with(".json") {
                let meta: serde_json::Value = serde_json::from_reader(&mut entry).expect("meta");
                keys.push(meta["key"].as_str().expect("key").to_string());
            }
        }
    }
    keys.sort();
    // WebDataset keys are unique across the channel, whichever instance wrote them.
    let mut sample_keys = BTreeSet::new();
    for shard in index["shardlist"].as_array().expect("list") {
        let url = shard["url"].as_str().expect("url");
        let host = url.rsplit_once('-').expect("algo-<i>-<n>.tar").0;
        let file = std::fs::File::open(t.path("p/train").join(url)).expect("shard");
        for entry in tar::Archive::new(file).entries().expect("entries") {
            let name = entry
                .expect("entry")
                .path()
                .expect("path")
                .display()
                .to_string();
            let key = name.split_once('.').expect("key.ext").0.to_string();
            assert!(key.starts_with(&format!("{host}-")), "{key} in {url}");
            sample_keys.insert(key);
        }
    }
    assert_eq!(sample_keys.len(), 20);
    let mut expected = common::manifest(&t.path("m/train.manifest")).1;
    expected.sort();
    assert_eq!(keys, expected);
    // The recipe, report, lineage and one log per instance.
    let recipe = json(t.path("p/recipe.json"));
    assert_eq!(recipe["width"], 16);
    assert_eq!(recipe["mean"].as_array().expect("mean").len(), 3);
    let lineage = json(t.path("p/lineage.json"));
    assert!(
        lineage["distribution"]
            .as_str()
            .expect("rule")
            .starts_with("ShardedByKey")
    );
    assert_eq!(
        lineage["assignment"]["algo-2"]["train"][0],
        by_host
            .iter()
            .find(|(h, _)| h == "algo-2")
            .expect("algo-2")
            .1
    );
    for host in ["algo-1", "algo-2", "algo-3"] {
        let log = std::fs::read_to_string(t.path(&format!("p/logs/{host}.log"))).expect("log");
        assert!(log.contains("instance finished"), "{log}");
    }
    // A rerun of a finished job is a no-op.
    let stdout = t
        .process(&["--out", "p", "--instances", "3", "--size", "16x16"])
        .ok();
    assert!(stdout.contains("nothing to do"), "{stdout}");
}

#[test]
fn fully_replicated_gives_every_instance_everything() {
    let t = TestDir::new();
    t.manifests(2, 20);
    t.process(&[
        "--out",
        "p",
        "--instances",
        "2",
        "--size",
        "8",
        "--distribution",
        "fully-replicated",
        "--mode",
        "gray",
    ])
    .ok();
    let by_host = samples_by_host(&json(t.path("p/validation/index.json")));
    assert_eq!(
        by_host,
        vec![("algo-1".to_string(), 10), ("algo-2".to_string(), 10)]
    );
    assert_eq!(
        json(t.path("p/recipe.json"))["mean"]
            .as_array()
            .expect("mean")
            .len(),
        1
    );
}

#[test]
fn fewer_objects_than_instances_leaves_some_empty() {
    let t = TestDir::new();
    t.shapes("data", 1, 3);
    let manifest = format!(
        "[{{\"prefix\":\"file://{}/\"}},\"circle/000000.jpg\",\"circle/000001.jpg\"]",
        t.arg("data")
    );
    std::fs::write(t.path("tiny.manifest"), manifest).expect("write");
    let stdout = t
        .run(&[
            "process",
            "--input",
            &format!("train={}", t.arg("tiny.manifest")),
            "--out",
            "p",
            "--instances",
            "3",
            "--size",
            "8",
        ])
        .ok();
    assert!(stdout.contains("algo-3 received no object"), "{stdout}");
    assert_eq!(
        samples_by_host(&json(t.path("p/train/index.json"))).len(),
        2
    );
}

/// The error of `process --input INPUT --out OUT`, which must fail.
fn refused(t: &TestDir, input: &str, out: &str) -> String {
    t.run(&["process", "--input", input, "--out", out]).fails()
}

#[test]
fn bad_inputs_fail_before_any_work() {
    let t = TestDir::new();
    t.manifests(2, 20);
    let m = t.arg("m");
    let err = t
        .run(&[
            "process",
            "--input",
            &format!("train={m}/train.manifest"),
            "--input",
            &format!("train={m}/test.manifest"),
            "--out",
            "p",
        ])
        .fails();
    assert!(err.contains("given twice"), "{err}");
    std::fs::write(t.path("empty.manifest"), "[{\"prefix\":\"file:///tmp/\"}]").expect("write");
    let err = refused(&t, &format!("train={}", t.arg("empty.manifest")), "p");
    assert!(err.contains("lists no objects"), "{err}");
    // The same object twice, and a channel that would land on the logs.
    std::fs::write(
        t.path("twice.manifest"),
        format!("[{{\"prefix\":\"file://{m}/\"}},\"a.jpg\",\"a.jpg\"]"),
    )
    .expect("write");
    let err = refused(&t, &format!("train={}", t.arg("twice.manifest")), "p");
    assert!(err.contains("more than once"), "{err}");
    let err = refused(
        &t,
        &format!("train={}", t.arg("twice.manifest")),
        "memory://x/",
    );
    assert!(err.contains("process of its own"), "{err}");
    let err = refused(&t, &format!("logs={}", t.arg("twice.manifest")), "p");
    assert!(err.contains("instances' logs"), "{err}");
    std::fs::write(
        t.path("escape.manifest"),
        format!("[{{\"prefix\":\"file://{m}/\"}},\"../../etc/passwd\"]"),
    )
    .expect("write");
    let err = refused(&t, &format!("train={}", t.arg("escape.manifest")), "p");
    assert!(err.contains("not a plain relative path"), "{err}");
    std::fs::write(
        t.path("moved.manifest"),
        "[{\"prefix\":\"file:///nowhere/\"},\"circle/000000.jpg\"]",
    )
    .expect("write");
    let err = refused(&t, &format!("train={}", t.arg("moved.manifest")), "p");
    assert!(
        err.contains("does not exist; is the manifest's prefix right?"),
        "{err}"
    );
    let err = refused(&t, "train=missing.manifest", "p");
    assert!(err.contains("does not exist"), "{err}");
    // An --out inside an input prefix: the next run would read the outputs as a class.
    let err = refused(&t, "train=data", "data/processed");
    assert!(
        err.contains("train=data") && err.contains("--out is inside this input prefix"),
        "{err}"
    );
    assert!(!t.path("data/processed").exists());
    assert!(!t.path("p").exists());
}

/// Runs the job as the given external launcher would, each rank a separate process, rank 0 last
/// so that it finds the others finished.
fn run_as(t: &TestDir, out: &str, env: &dyn Fn(usize) -> Vec<(&'static str, String)>) {
    for rank in [1, 0] {
        let mut args: Vec<String> = vec!["process".into()];
        args.extend(t.inputs());
        args.extend(["--out", out, "--size", "16x16", "--wait-timeout", "60"].map(String::from));
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_shardline"))
            .args(&args)
            .current_dir(t.dir.path())
            .envs(env(rank))
            .output()
            .expect("run");
        assert!(
            output.status.success(),
            "rank {rank}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn every_launcher_identity_produces_the_same_shards() {
    let t = TestDir::new();
    t.manifests(2, 20);
    t.process(&["--out", "local", "--instances", "2", "--size", "16x16"])
        .ok();
    let expected = std::fs::read(t.path("local/train/index.json")).expect("index");

    run_as(&t, "ompi", &|rank| {
        vec![
            ("OMPI_COMM_WORLD_RANK", rank.to_string()),
            ("OMPI_COMM_WORLD_SIZE", "2".into()),
        ]
    });
    run_as(&t, "slurm", &|rank| {
        vec![
            ("SLURM_PROCID", rank.to_string()),
            ("SLURM_NTASKS", "2".into()),
        ]
    });
    run_as(&t, "k8s", &|rank| {
        vec![
            ("JOB_COMPLETION_INDEX", rank.to_string()),
            ("SHARDLINE_WORLD_SIZE", "2".into()),
        ]
    });
    let configs = t.path("configs");
    std::fs::create_dir_all(&configs).expect("mkdir");
    for rank in 0..2 {
        let text = format!(
            "{{\"current_host\": \"algo-{}\", \"hosts\": [\"algo-1\", \"algo-2\"]}}",
            rank + 1
        );
        std::fs::write(configs.join(format!("rc{rank}.json")), text).expect("write");
    }
    let rc = |rank: usize| configs.join(format!("rc{rank}.json")).display().to_string();
    run_as(&t, "sagemaker", &|rank| {
        vec![("SHARDLINE_RESOURCE_CONFIG", rc(rank))]
    });
    for out in ["ompi", "slurm", "k8s", "sagemaker"] {
        assert_eq!(
            std::fs::read(t.path(out).join("train/index.json")).expect("index"),
            expected,
            "{out}"
        );
        assert!(t.path(out).join("lineage.json").is_file(), "{out}");
        assert!(t.path(out).join("logs/algo-2.log").is_file(), "{out}");
    }

    // A rerun of the finished job under the launcher touches nothing: logs, report, lineage.
    let files = || -> Vec<Vec<u8>> {
        [
            "logs/algo-1.log",
            "logs/algo-2.log",
            "report.json",
            "lineage.json",
        ]
        .iter()
        .map(|name| std::fs::read(t.path("slurm").join(name)).expect(name))
        .collect()
    };
    let before = files();
    run_as(&t, "slurm", &|rank| {
        vec![
            ("SLURM_PROCID", rank.to_string()),
            ("SLURM_NTASKS", "2".into()),
        ]
    });
    let after = files();
    assert!(
        before == after,
        "a rerun under the launcher rewrote the job's files"
    );

    // --quiet under a launcher: nothing on the terminal, every line still in the instance's log.
    let mut args: Vec<String> = vec!["--quiet".into(), "process".into()];
    args.extend(t.inputs());
    args.extend(["--out", "quiet", "--size", "16x16"].map(String::from));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(&args)
        .current_dir(t.dir.path())
        .envs([("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")])
        .output()
        .expect("run");
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "");
    let log = std::fs::read_to_string(t.path("quiet/logs/algo-1.log")).expect("log");
    assert!(log.contains("instance finished"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "no terminal colours in a log file: {log}"
    );
}

#[test]
fn mpirun_starts_one_instance_per_rank() {
    let t = TestDir::new();
    t.manifests(2, 20);
    t.process(&["--out", "local", "--instances", "2", "--size", "16x16"])
        .ok();
    let mut args: Vec<String> = [
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        "2",
        env!("CARGO_BIN_EXE_shardline"),
        "process",
    ]
    .map(String::from)
    .to_vec();
    args.extend(t.inputs());
    args.extend(["--out", "mpi", "--size", "16x16"].map(String::from));
    let output = std::process::Command::new("mpirun")
        .args(&args)
        .current_dir(t.dir.path())
        // Each job its own Open MPI session folder: 4.1's mkdir of the shared one races.
        .env("TMPDIR", t.dir.path())
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .output()
        .expect("mpirun runs (install openmpi-bin; see .ci/run)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        std::fs::read(t.path("mpi/train/index.json")).expect("index"),
        std::fs::read(t.path("local/train/index.json")).expect("index")
    );
}

#[test]
fn a_sagemaker_processing_script_runs_unchanged() {
    let t = TestDir::new();
    t.manifests(2, 20);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/sagemaker_processing.py"
    );
    let command = format!("python3 {script} --base {{root}}/processing --config {{root}}/config");
    let stdout = t
        .process(&["--out", "s", "--instances", "2", "--script", &command])
        .ok();
    assert!(
        stdout.contains("the script ran on 2 instance(s)"),
        "{stdout}"
    );
    let mut seen = 0;
    for host in ["algo-1", "algo-2"] {
        let summary = json(t.path(&format!("s/train/{host}/summary.json")));
        assert_eq!(summary["host"], host);
        seen += summary["files"].as_array().expect("files").len();
        let log = std::fs::read_to_string(t.path(&format!("s/logs/{host}.log"))).expect("log");
        assert!(log.contains(&format!("{host}: processed")), "{log}");
    }
    assert_eq!(seen, 20, "the two instances saw disjoint halves of train");
    assert!(t.path("s/lineage.json").is_file());
    // A rerun of the finished script job is a no-op: the script's own log lines stay.
    let log = std::fs::read(t.path("s/logs/algo-1.log")).expect("log");
    let stdout = t
        .process(&["--out", "s", "--instances", "2", "--script", &command])
        .ok();
    assert!(stdout.contains("nothing to do"), "{stdout}");
    assert!(std::fs::read(t.path("s/logs/algo-1.log")).expect("log") == log);

    let failing = format!("{command} --fail");
    let err = t
        .process(&[
            "--out",
            "f",
            "--instances",
            "1",
            "--max-attempts",
            "1",
            "--script",
            &failing,
        ])
        .fails();
    assert!(
        err.contains("bad hyperparameters") && err.contains("algo-1"),
        "{err}"
    );
}

#[test]
fn corrupt_objects_are_quarantined_within_the_error_budget() {
    let t = TestDir::new();
    t.shapes("data", 2, 20);
    std::fs::write(
        t.path("data/circle/zz-garbage.jpg"),
        b"this is not an image",
    )
    .expect("write");
    let good = std::fs::read(t.path("data/square/000000.jpg")).expect("read");
    std::fs::write(
        t.path("data/square/zz-truncated.jpg"),
        &good[..good.len() / 2],
    )
    .expect("write");
    t.run(&[
        "manifest", "--source", "data", "--out", "m", "--split", "train=1",
    ])
    .ok();
    let train = format!("train={}/train.manifest", t.arg("m"));
    let err = t
        .run(&[
            "process",
            "--input",
            &train,
            "--out",
            "p",
            "--instances",
            "2",
            "--size",
            "8",
        ])
        .fails();
    assert!(
        err.contains("2 of 42 objects could not be processed") && err.contains("report.json"),
        "{err}"
    );
    assert!(
        !t.path("p/lineage.json").exists(),
        "a failed job has no lineage record"
    );
    let report = json(t.path("p/report.json"));
    assert_eq!(report["status"], "failed");

    t.run(&[
        "process",
        "--input",
        &train,
        "--out",
        "p",
        "--instances",
        "2",
        "--size",
        "8",
        "--error-budget",
        "0.1",
    ])
    .ok();
    let report = json(t.path("p/report.json"));
    assert_eq!(report["quarantined"], 2);
    let reasons: Vec<String> = report["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .flat_map(|i| {
            i["quarantine"]
                .as_array()
                .expect("q")
                .iter()
                .map(|q| format!("{} {}", q["uri"], q["reason"]))
        })
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("zz-garbage.jpg") && r.contains("not a JPEG or PNG")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("zz-truncated.jpg")),
        "{reasons:?}"
    );
}

#[test]
fn a_killed_instance_is_retried_on_exactly_its_share() {
    let mut t = TestDir::new();
    t.manifests(2, 20);
    t.process(&["--out", "clean", "--instances", "2", "--size", "16x16"])
        .ok();
    t.env = vec![("SHARDLINE_FAULT", "algo-2:after-4".into())];
    let stdout = t
        .process(&["--out", "p", "--instances", "2", "--size", "16x16"])
        .ok();
    assert!(
        stdout.contains("retried algo-2 attempt 1 was killed by signal"),
        "{stdout}"
    );
    let log2 = std::fs::read_to_string(t.path("p/logs/algo-2.log")).expect("log");
    assert!(
        log2.contains("attempt 2") && log2.contains("aborting algo-2"),
        "{log2}"
    );
    let log1 = std::fs::read_to_string(t.path("p/logs/algo-1.log")).expect("log");
    assert!(!log1.contains("attempt 2"), "algo-1 was not redone: {log1}");
    // The retried output is exactly the uninterrupted one: same shards, nothing left over.
    for channel in ["train", "validation", "test"] {
        assert_eq!(
            std::fs::read(t.path(&format!("p/{channel}/index.json"))).expect("index"),
            std::fs::read(t.path(&format!("clean/{channel}/index.json"))).expect("index"),
        );
    }
    let left: Vec<String> = files(&t.path("p"))
        .into_iter()
        .filter(|f| f.contains("staging"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // An instance that keeps dying fails the job, naming it and its log.
    t.env = vec![("SHARDLINE_FAULT", "algo-1:before-publish".into())];
    let err = t
        .process(&[
            "--out",
            "q",
            "--instances",
            "2",
            "--size",
            "16x16",
            "--max-attempts",
            "1",
        ])
        .fails();
    assert!(
        err.contains("instance algo-1 failed after 1 attempt(s)")
            && err.contains("logs/algo-1.log"),
        "{err}"
    );
    assert!(!t.path("q/lineage.json").exists());
}

#[test]
fn augmented_manifests_and_prefixes_are_inputs_too() {
    let t = TestDir::new();
    t.shapes("data", 2, 10);
    t.run(&[
        "manifest",
        "--source",
        "data",
        "--out",
        "m",
        "--augmented",
        "--split",
        "train=0.5,test=0.5",
    ])
    .ok();
    // An augmented manifest carries each object's full URI, class and class id.
    let stdout = t
        .run(&[
            "process",
            "--input",
            &format!("train={}/train.augmented.manifest", t.arg("m")),
            "--out",
            "a",
            "--size",
            "8",
        ])
        .ok();
    assert!(stdout.contains("10 objects → 10 samples"), "{stdout}");
    // A store prefix: every object below it, the first path component being the class.
    let stdout = t
        .run(&[
            "process",
            "--input",
            &format!("train={}", t.arg("data")),
            "--out",
            "b",
            "--size",
            "8",
            "--instances",
            "2",
        ])
        .ok();
    assert!(
        stdout.contains("20 objects → 20 samples in 2 instance(s)"),
        "{stdout}"
    );
    let lineage = json(t.path("b/lineage.json"));
    assert_eq!(lineage["labels"], serde_json::json!(["circle", "square"]));
}

/// A manifest whose keys are sorted (as the manifest step writes them) is streamed by each
/// instance; one that is not is read into memory and sorted by the distribution rule. Both give
/// every instance the same objects and the same shards.
#[test]
fn an_unsorted_manifest_gives_the_same_shares_as_its_sorted_copy() {
    let t = TestDir::new();
    t.manifests(3, 14);
    let sorted = std::fs::read(t.path("m/train.manifest")).expect("manifest");
    let mut entries: Vec<serde_json::Value> = serde_json::from_slice(&sorted).expect("json");
    let keys: Vec<String> = entries[1..]
        .iter()
        .map(|k| k.as_str().expect("key").to_string())
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "the manifest step writes sorted keys"
    );
    entries[1..].reverse();
    std::fs::write(
        t.path("m/unsorted.manifest"),
        serde_json::to_vec(&entries).expect("json"),
    )
    .expect("write");
    for (manifest, out) in [("train.manifest", "s"), ("unsorted.manifest", "u")] {
        t.run(&[
            "process",
            "--input",
            &format!("train={}/{manifest}", t.arg("m")),
            "--out",
            out,
            "--instances",
            "3",
            "--size",
            "8",
        ])
        .ok();
    }
    let (s, u) = (
        json(t.path("s/train/index.json")),
        json(t.path("u/train/index.json")),
    );
    assert_eq!(s["shardlist"], u["shardlist"]);
    for shard in s["shardlist"].as_array().expect("list") {
        let url = shard["url"].as_str().expect("url");
        assert_eq!(
            std::fs::read(t.path("s/train").join(url)).expect("shard"),
            std::fs::read(t.path("u/train").join(url)).expect("shard"),
            "{url}"
        );
    }
    for host in ["algo-1", "algo-2", "algo-3"] {
        let (a, b) = (
            json(t.path(&format!("s/.shardline/instances/{host}.json"))),
            json(t.path(&format!("u/.shardline/instances/{host}.json"))),
        );
        assert_eq!(
            a["channels"]["train"]["assignment"],
            b["channels"]["train"]["assignment"]
        );
    }
}

#[test]
fn objects_named_with_any_characters_are_processed() {
    let t = TestDir::new();
    t.shapes("data", 1, 1);
    let image = std::fs::read_dir(t.path("data/circle"))
        .expect("class dir")
        .next()
        .expect("one image")
        .expect("entry")
        .path();
    let names = [
        "café/é.jpg",
        "café/a#b.jpg",
        "café/a%b.jpg",
        "café/a%41b.jpg",
        "café/a?b.jpg",
        "café/a[b].jpg",
        "my class/a b.jpg",
        "my class/a+b.jpg",
    ];
    for name in names {
        let path = t.path(&format!("odd/{name}"));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&image, path).expect("copy");
    }
    // Through a manifest (the URIs it writes), and straight from the prefix.
    t.run(&[
        "manifest",
        "--source",
        "odd",
        "--out",
        "m",
        "--split",
        "train=1",
        "--min-per-class",
        "0",
    ])
    .ok();
    for (input, out) in [
        (format!("train={}/train.manifest", t.arg("m")), "a"),
        (format!("train={}", t.arg("odd")), "b"),
    ] {
        let stdout = t
            .run(&[
                "process",
                "--input",
                &input,
                "--out",
                out,
                "--size",
                "8",
                "--instances",
                "2",
            ])
            .ok();
        assert!(
            stdout.contains("8 objects → 8 samples"),
            "{input}: {stdout}"
        );
        let lineage = json(t.path(&format!("{out}/lineage.json")));
        assert_eq!(lineage["labels"], serde_json::json!(["café", "my class"]));
    }
}

#[test]
fn processed_shards_feed_the_training_reader() {
    use shardline_contract::recipe::Recipe;
    use shardline_dataset::{Normalise, Prefetcher, plan_epoch};
    use shardline_process::shards::Index;

    let t = TestDir::new();
    t.manifests(2, 20);
    t.process(&["--out", "p", "--instances", "2", "--size", "8x8"])
        .ok();
    let index: Index = serde_json::from_value(json(t.path("p/train/index.json"))).expect("index");
    let recipe: Recipe = serde_json::from_value(json(t.path("p/recipe.json"))).expect("recipe");
    // Two workers, one processing instance each: rank r reads algo-<r+1>'s shards.
    let plan = plan_epoch(&index.shardlist, 2, 4, 0, 0).expect("plan");
    assert_eq!(plan.samples, vec![10, 10]);
    assert_eq!(plan.steps, 2);
    let store = shardline_store::Store::open(&t.arg("p/train")).expect("store");
    let mut labels = Vec::new();
    for rank in 0..2 {
        let urls = plan.shards[rank]
            .iter()
            .map(|&i| index.shardlist[i].clone())
            .collect();
        let mut reader = Prefetcher::spawn(store.clone(), urls, Normalise::from_recipe(&recipe), 8);
        for _ in 0..plan.steps {
            let batch = reader.next_batch(4).expect("read").expect("a full batch");
            assert_eq!(batch.images.len(), 4 * 3 * 8 * 8);
            // Normalised with the training mean and std: values centred near 0.
            let mean: f32 = batch.images.iter().sum::<f32>() / batch.images.len() as f32;
            assert!(mean.abs() < 1.5, "{mean}");
            labels.extend(batch.labels);
        }
    }
    assert_eq!(labels.len(), 16);
    assert!(labels.iter().all(|&l| l < 2));
}

#[test]
fn train_learns_from_processed_shards_with_two_workers() {
    let t = TestDir::new();
    t.shapes("data", 2, 40);
    t.run(&[
        "manifest",
        "--source",
        "data",
        "--out",
        "m",
        "--split",
        "train=0.6,validation=0.2,test=0.2",
    ])
    .ok();
    let m = t.arg("m");
    t.run(&[
        "process",
        "--input",
        &format!("train={m}/train.manifest"),
        "--input",
        &format!("validation={m}/validation.manifest"),
        "--input",
        &format!("test={m}/test.manifest"),
        "--out",
        "p",
        "--instances",
        "2",
        "--size",
        "16x16",
    ])
    .ok();
    let stdout = t
        .run(&[
            "train",
            "--data",
            "p",
            "--out",
            "model",
            "--workers",
            "2",
            "--epochs",
            "3",
            "--batch",
            "8",
        ])
        .ok();
    assert!(
        stdout.contains("epoch   3:") && stdout.contains("test accuracy"),
        "{stdout}"
    );
    for file in [
        "model.json",
        "weights.bin",
        "labels.json",
        "recipe.json",
        "metrics.csv",
        "training.svg",
        "model.tar.gz",
        "lineage.json",
    ] {
        assert!(t.path("model").join(file).is_file(), "{file}");
    }
    // model.tar.gz holds the model directory's files.
    let packed = std::fs::File::open(t.path("model/model.tar.gz")).expect("tarball");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(packed));
    let names: Vec<String> = archive
        .entries()
        .expect("entries")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .display()
                .to_string()
        })
        .collect();
    assert!(
        names.contains(&"weights.bin".to_string()) && names.contains(&"model.json".to_string()),
        "{names:?}"
    );
    assert!(
        std::fs::read_to_string(t.path("model/training.svg"))
            .expect("svg")
            .starts_with("<svg")
    );
    let metrics = std::fs::read_to_string(t.path("model/metrics.csv")).expect("metrics");
    assert_eq!(metrics.lines().count(), 4, "{metrics}");
    // The saved weights load into the saved model config and nothing else.
    let config: shardline_train::ModelConfig =
        serde_json::from_value(json(t.path("model/model.json"))).expect("config");
    let bytes = std::fs::read(t.path("model/weights.bin")).expect("weights");
    let device = shardline_train::device::by_name("cpu").expect("cpu");
    assert!(shardline_train::weights::decode(config.init(&device), &bytes).is_ok());
    let other = shardline_train::ModelConfig::mlp(config.input, config.classes);
    assert!(shardline_train::weights::decode(other.init(&device), &bytes).is_err());

    // Evaluation on the test channel: every test sample counted once, per-class figures.
    let stdout = t
        .run(&[
            "evaluate",
            "--model",
            "model",
            "--data",
            "p",
            "--json",
            &t.arg("eval.json"),
        ])
        .ok();
    assert!(stdout.contains("confusion matrix"), "{stdout}");
    let report = json(t.path("eval.json"));
    let matrix = report["confusion_matrix"].as_array().expect("matrix");
    let counted: u64 = matrix
        .iter()
        .flat_map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|v| v.as_u64().expect("n"))
        })
        .sum();
    assert_eq!(counted, 16);
    assert_eq!(report["classes"].as_array().expect("classes").len(), 2);

    // Bad input: not processed data, and a model that does not fit.
    let err = t.run(&["train", "--data", "m", "--out", "x"]).fails();
    assert!(
        err.contains("must be the output of `shardline process`"),
        "{err}"
    );
    std::fs::write(
        t.path("big.json"),
        r#"{"kind":"cnn","input":[3,16,16],"classes":2,"widths":[4,4,4,4,4,4]}"#,
    )
    .expect("write");
    let err = t
        .run(&[
            "train",
            "--data",
            "p",
            "--out",
            "x",
            "--model-config",
            &t.arg("big.json"),
        ])
        .fails();
    assert!(err.contains("needs inputs of at least 64x64"), "{err}");
}

/// `mpirun -np 2 shardline train` (one rank per process, MPI collectives) ends with the same
/// weights as 2 in-process workers: same seeded start, same shards, same sums.
#[cfg(feature = "mpi")]
#[test]
fn an_mpi_run_matches_the_in_process_run() {
    let t = TestDir::new();
    t.manifests(2, 20);
    t.process(&["--out", "p", "--instances", "2", "--size", "16x16"])
        .ok();
    t.run(&[
        "train",
        "--data",
        "p",
        "--out",
        "threads",
        "--workers",
        "2",
        "--epochs",
        "2",
        "--batch",
        "4",
    ])
    .ok();
    let output = std::process::Command::new("timeout")
        .args([
            "300",
            "mpirun",
            "--allow-run-as-root",
            "--oversubscribe",
            "-np",
            "2",
            env!("CARGO_BIN_EXE_shardline"),
        ])
        .args([
            "train", "--data", "p", "--out", "mpi", "--epochs", "2", "--batch", "4",
        ])
        .current_dir(t.dir.path())
        // Each job its own Open MPI session folder: 4.1's mkdir of the shared one races.
        .env("TMPDIR", t.dir.path())
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .output()
        .expect("mpirun runs (install openmpi-bin; see .ci/run)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("2 MPI ranks"));
    let config: shardline_train::ModelConfig =
        serde_json::from_value(json(t.path("threads/model.json"))).expect("config");
    let device = shardline_train::device::by_name("cpu").expect("cpu");
    let load = |dir: &str| {
        let bytes = std::fs::read(t.path(dir).join("weights.bin")).expect("weights");
        let model = shardline_train::weights::decode(config.init(&device), &bytes).expect("decode");
        shardline_train::sync::parameters(&model)
    };
    let (a, b) = (load("threads"), load("mpi"));
    let max_diff = a
        .iter()
        .zip(&b)
        .flat_map(|((_, x), (_, y))| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0f32, f32::max);
    assert!(max_diff < 1e-5, "weights differ by {max_diff}");
}

#[test]
fn a_killed_training_resumes_to_the_same_result() {
    let mut t = TestDir::new();
    t.manifests(2, 20);
    t.process(&["--out", "p", "--instances", "2", "--size", "16x16"])
        .ok();
    let train = [
        "train",
        "--data",
        "p",
        "--workers",
        "2",
        "--epochs",
        "3",
        "--batch",
        "4",
    ];
    let with_out = |out: &str, extra: &[&str]| -> Vec<String> {
        train
            .iter()
            .chain(["--out", out].iter())
            .chain(extra.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let args = with_out("full", &[]);
    t.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .ok();
    // Killed right after the checkpoint of epoch 2.
    t.env = vec![("SHARDLINE_FAULT", "train:after-epoch-2".into())];
    let args = with_out("part", &[]);
    t.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .fails();
    assert!(!t.path("part/weights.bin").exists() && t.path("part/checkpoint/state.json").is_file());
    t.env.clear();
    let args = with_out("part", &["--resume"]);
    let stdout = t
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .ok();
    assert!(
        stdout.contains("resuming after epoch 2") && !stdout.contains("epoch   2:"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(t.path("full/weights.bin")).expect("full"),
        std::fs::read(t.path("part/weights.bin")).expect("resumed"),
        "a resumed run ends where an uninterrupted one does"
    );
    // A diverging loss stops training with a clear error; the finished epochs' checkpoint stays.
    let err = t
        .run(&[
            "train",
            "--data",
            "p",
            "--out",
            "part",
            "--workers",
            "2",
            "--epochs",
            "5",
            "--batch",
            "4",
            "--resume",
            "--lr",
            "1e8",
        ])
        .fails();
    assert!(err.contains("(diverging); lower --lr"), "{err}");
    assert!(t.path("part/checkpoint/state.json").is_file());
    let err = t
        .run(&["train", "--data", "p", "--out", "nothing-here", "--resume"])
        .fails();
    assert!(err.contains("--resume needs a checkpoint"), "{err}");
}

#[test]
fn bench_process_runs_on_a_source_directory() {
    let t = TestDir::new();
    t.shapes("data", 2, 6);
    let peer = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/peer_process.py");
    let bench = |source: &str| {
        t.run_program(
            env!("CARGO_BIN_EXE_shardline-bench"),
            &[
                "--shardline",
                env!("CARGO_BIN_EXE_shardline"),
                "process",
                "--source",
                source,
                "--dir",
                "b",
                "--size",
                "8",
                "--peer",
                peer,
            ],
        )
    };
    let stdout = bench("data").ok();
    assert!(stdout.contains("12 images from "), "{stdout}");
    for row in [
        "| python peer (Pillow + numpy) | 1 |",
        "| shardline, 1 instance | 1 |",
        "| shardline, 2 instances | 2 |",
        "scaling 1 -> 2 instances",
        "decoding alone",
    ] {
        assert!(stdout.contains(row), "{row} missing:\n{stdout}");
    }
    // Every case processed every image: one instance, both instances together, and the peer.
    for out in ["out-1", "out-2"] {
        let dirs: Vec<_> = std::fs::read_dir(t.path("b"))
            .expect("bench dir")
            .map(|e| e.expect("entry").path().join(out))
            .filter(|p| p.is_dir())
            .collect();
        assert_eq!(dirs.len(), 1, "{out}: {dirs:?}");
        let report = json(dirs[0].join("report.json"));
        assert_eq!(report["written"], 12, "{out}: {report}");
    }

    let err = bench("no-such-dir").fails();
    assert!(
        err.contains("--source no-such-dir cannot be read")
            && err.contains("one sub-directory per class"),
        "{err}"
    );
}

#[test]
fn augmentations_apply_to_the_train_channel_only() {
    let t = TestDir::new();
    t.manifests(2, 20);
    let digests = |out: &str, channel: &str| -> Vec<String> {
        json(t.path(&format!("{out}/{channel}/index.json")))["shardlist"]
            .as_array()
            .expect("shardlist")
            .iter()
            .map(|s| s["sha256"].as_str().expect("sha256").to_string())
            .collect()
    };
    let base = ["--size", "16x16", "--instances", "1"];
    t.process(&[&base[..], &["--out", "plain"]].concat()).ok();
    t.process(
        &[
            &base[..],
            &["--out", "aug", "--augment", "flip", "--seed", "7"],
        ]
        .concat(),
    )
    .ok();
    // Validation and test keep their real images; train is mirrored (here, some of it).
    assert_ne!(digests("plain", "train"), digests("aug", "train"));
    for channel in ["validation", "test"] {
        assert_eq!(
            digests("plain", channel),
            digests("aug", channel),
            "{channel}"
        );
    }
    // The seed and the augmented channels are in the lineage: the tensors can be made again.
    let lineage = json(t.path("aug/lineage.json"));
    assert_eq!(lineage["seed"], 7);
    assert_eq!(lineage["augment_channels"], serde_json::json!(["train"]));
    assert_eq!(lineage["recipe"]["augment"], serde_json::json!(["flip"]));

    // Other channels only when named.
    t.process(
        &[
            &base[..],
            &[
                "--out",
                "both",
                "--augment",
                "flip",
                "--seed",
                "7",
                "--augment-channels",
                "train,test",
            ],
        ]
        .concat(),
    )
    .ok();
    assert_eq!(digests("aug", "train"), digests("both", "train"));
    assert_ne!(digests("plain", "test"), digests("both", "test"));
    assert_eq!(
        digests("plain", "validation"),
        digests("both", "validation")
    );

    let err = t
        .process(
            &[
                &base[..],
                &[
                    "--out",
                    "bad",
                    "--augment",
                    "crop",
                    "--augment-channels",
                    "training",
                ],
            ]
            .concat(),
        )
        .fails();
    assert!(
        err.contains("\"training\"")
            && err.contains("not an input")
            && err.contains("--augment-channels"),
        "{err}"
    );
    assert!(!t.path("bad").exists());
}

#[test]
fn a_new_job_in_the_same_out_leaves_none_of_the_old_outputs() {
    let t = TestDir::new();
    t.manifests(2, 20);
    let files = |dir: &str| common::files(&t.path(dir));
    t.process(&["--out", "p", "--instances", "3", "--size", "8"])
        .ok();
    assert_eq!(
        files("p/train"),
        [
            "algo-1-000000.tar",
            "algo-2-000000.tar",
            "algo-3-000000.tar",
            "index.json"
        ]
    );
    // The same data with two instances: algo-3's shards, log and result go.
    t.process(&["--out", "p", "--instances", "2", "--size", "8", "--force"])
        .ok();
    for channel in ["train", "validation", "test"] {
        assert_eq!(
            files(&format!("p/{channel}")),
            ["algo-1-000000.tar", "algo-2-000000.tar", "index.json"],
            "{channel}"
        );
    }
    assert_eq!(files("p/logs"), ["algo-1.log", "algo-2.log"]);
    assert_eq!(t.samples("p/train/index.json"), 20);

    // A script's output files: a new job's run replaces the earlier run's set.
    let script = |name: &str| {
        format!(
            "sh -c 'mkdir -p {{root}}/processing/output/o && echo x > {{root}}/processing/output/o/{name}'"
        )
    };
    for (name, instances) in [("old.txt", "2"), ("new.txt", "1")] {
        t.process(&[
            "--out",
            "s",
            "--instances",
            instances,
            "--script",
            &script(name),
            // Another job in the same --out replaces the finished one only when told.
            "--force",
        ])
        .ok();
    }
    assert_eq!(files("s/o"), ["algo-1/new.txt"]);
    assert_eq!(files("s/logs"), ["algo-1.log"]);
}

/// Many instances on few cores run in waves of --max-parallel (one per core by default), and an
/// absurd instance count is refused before anything starts.
#[test]
fn instances_are_bounded_and_run_in_waves() {
    let t = TestDir::new();
    t.manifests(2, 10);
    let running = t.path("running");
    std::fs::create_dir_all(&running).expect("mkdir");
    let script = t.path("count.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntouch {r}/$$\nls {r} | wc -l >> {c}\nsleep 0.3\nrm {r}/$$\n",
            r = running.display(),
            c = t.path("counts").display()
        ),
    )
    .expect("write");
    let mut permissions = std::fs::metadata(&script).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&script, permissions).expect("chmod");
    let out = t
        .process(&[
            "--out",
            "s",
            "--instances",
            "6",
            "--max-parallel",
            "2",
            "--script",
            script.to_str().expect("utf-8"),
        ])
        .ok();
    assert!(out.contains("ran on 6 instance(s)"), "{out}");
    let counts = std::fs::read_to_string(t.path("counts")).expect("counts");
    let most = counts
        .lines()
        .filter_map(|l| l.trim().parse::<usize>().ok())
        .max();
    assert_eq!(counts.lines().count(), 6, "{counts}");
    assert!(most <= Some(2), "more than 2 at once: {counts}");
    let err = t
        .process(&["--out", "big", "--instances", "100000"])
        .fails();
    assert!(err.contains("more than the 4096"), "{err}");
    assert!(!t.path("big").exists());
}
