//! The manifest step against a real S3-compatible server: a single-node Garage on loopback,
//! started by this test (which fails, never skips, when Garage is missing).

mod common;

use common::{TestDir, manifest};
use shardline_testkit::garage::LocalGarage;

#[test]
fn manifest_from_and_to_s3() {
    let mut t = TestDir::new();
    let garage = LocalGarage::start(&t.path("garage"), "lake").expect("start garage");
    t.env = garage.env();

    let source = garage.url("pets");
    t.shapes(&source, 3, 30);
    let out = garage.url("datasets/pets-v1");
    let stdout = t
        .run(&["manifest", "--source", &source, "--out", &out])
        .ok();
    assert!(stdout.contains("90 objects in 3 classes"), "{stdout}");

    // Read the outputs back through a local copy made by a second run: S3 in, local out.
    t.run(&["manifest", "--source", &source, "--out", "local-out"])
        .ok();
    let (prefix, keys) = manifest(&t.path("local-out/train.manifest"));
    assert_eq!(prefix, "s3://lake/pets/");
    assert_eq!(keys.len(), 72);
    assert!(
        keys.iter().all(|k| !k.starts_with("pets/")),
        "keys are relative to the prefix"
    );
    let lineage: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.path("local-out/lineage.json")).expect("read"))
            .expect("json");
    assert_eq!(lineage["source"], "s3://lake/pets/");
    assert_eq!(
        lineage["totals"],
        serde_json::json!({"train": 72, "validation": 9, "test": 9})
    );

    // The S3 output holds the same bytes as the local one, and a rerun is a no-op.
    let stdout = t
        .run(&["manifest", "--source", &source, "--out", &out])
        .ok();
    assert!(stdout.contains("unchanged"), "{stdout}");

    // Objects without a class prefix, on S3.
    t.run(&[
        "datagen",
        "shapes",
        "--out",
        &garage.url("flat"),
        "--classes",
        "1",
        "--per-class",
        "2",
        "--size",
        "8",
    ])
    .ok();
    let err = t
        .run(&["manifest", "--source", &garage.url(""), "--out", "x"])
        .fails();
    assert!(
        err.contains("directly under s3://lake/") || err.contains("class"),
        "{err}"
    );

    // An empty prefix and a missing bucket.
    let err = t
        .run(&[
            "manifest",
            "--source",
            &garage.url("nothing-here"),
            "--out",
            "x",
        ])
        .fails();
    assert!(err.contains("holds no objects"), "{err}");
    let err = t
        .run(&[
            "manifest",
            "--source",
            "s3://no-such-bucket/pets",
            "--out",
            "x",
        ])
        .fails();
    assert!(err.contains("no-such-bucket"), "{err}");
}

#[test]
fn bad_credentials_and_unreachable_stores_are_reported() {
    let mut t = TestDir::new();
    let garage = LocalGarage::start(&t.path("garage"), "lake").expect("start garage");
    t.env = garage.env();
    t.shapes(&garage.url("pets"), 2, 10);

    t.env.push(("AWS_SECRET_ACCESS_KEY", "0".repeat(64)));
    let err = t
        .run(&["manifest", "--source", &garage.url("pets"), "--out", "out"])
        .fails();
    assert!(
        err.contains("access denied") && err.contains("AWS_ACCESS_KEY_ID"),
        "{err}"
    );
    assert!(!t.path("out").exists());

    t.env = garage.env();
    t.env
        .push(("AWS_ENDPOINT_URL", "http://127.0.0.1:9".to_string()));
    let err = t
        .run(&["manifest", "--source", &garage.url("pets"), "--out", "out"])
        .fails();
    assert!(
        err.contains("reachable") && err.contains("AWS_ENDPOINT_URL"),
        "{err}"
    );
    assert!(!t.path("out").exists());
}

#[test]
fn process_on_s3_survives_an_instance_killed_mid_upload() {
    let mut t = TestDir::new();
    let garage = LocalGarage::start(&t.path("garage"), "lake").expect("start garage");
    t.env = garage.env();
    let source = garage.url("pets");
    t.shapes(&source, 2, 20);
    let manifests = garage.url("datasets/pets");
    t.run(&[
        "manifest",
        "--source",
        &source,
        "--out",
        &manifests,
        "--split",
        "train=0.5,validation=0.25,test=0.25",
    ])
    .ok();

    // algo-1 dies after uploading its shards to staging and before committing them.
    t.env
        .push(("SHARDLINE_FAULT", "algo-1:before-publish".into()));
    let out = garage.url("processed");
    let mut args = vec!["process".to_string()];
    for channel in ["train", "validation", "test"] {
        args.push("--input".into());
        args.push(format!("{channel}={manifests}/{channel}.manifest"));
    }
    args.extend(["--out", &out, "--instances", "2", "--size", "16x16"].map(String::from));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let stdout = t.run(&refs).ok();
    assert!(stdout.contains("retried algo-1 attempt 1"), "{stdout}");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let store = shardline_store::Store::open_with(&out, &garage.env()).expect("open");
    let keys: Vec<String> = runtime
        .block_on(store.list_all(""))
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(keys.iter().all(|k| !k.contains("staging")), "{keys:?}");
    for expected in [
        "lineage.json",
        "recipe.json",
        "report.json",
        "train/index.json",
        "logs/algo-1.log",
        "logs/algo-2.log",
    ] {
        assert!(
            keys.iter().any(|k| k == expected),
            "{expected} missing from {keys:?}"
        );
    }
    let index: serde_json::Value = serde_json::from_slice(
        &runtime
            .block_on(store.get("train/index.json"))
            .expect("index"),
    )
    .expect("json");
    let samples: u64 = index["shardlist"]
        .as_array()
        .expect("list")
        .iter()
        .map(|s| s["nsamples"].as_u64().expect("n"))
        .sum();
    assert_eq!(samples, 20);
    let shards = keys
        .iter()
        .filter(|k| k.starts_with("train/") && k.ends_with(".tar"))
        .count();
    assert_eq!(
        shards,
        index["shardlist"].as_array().expect("list").len(),
        "no duplicate or partial shards"
    );
}

/// The S3 server restarted while processing runs: algo-1 stops after its fifth object (with
/// shards already uploaded), the server goes down, algo-1 carries on while it is down (its
/// requests fail and are retried) and after it is back. Nothing is lost and nothing is written
/// twice: the output is, file for file, an uninterrupted run's.
#[test]
fn process_on_s3_survives_the_server_restarting_mid_run() {
    let mut t = TestDir::new();
    let mut garage = LocalGarage::start(&t.path("garage"), "lake").expect("start garage");
    t.env = garage.env();
    let source = garage.url("pets");
    t.shapes(&source, 2, 24);
    let manifests = garage.url("datasets/pets");
    t.run(&["manifest", "--source", &source, "--out", &manifests])
        .ok();
    let args = |out: &str| -> Vec<String> {
        let mut args = vec!["process".to_string()];
        for channel in ["train", "validation", "test"] {
            args.push("--input".into());
            args.push(format!("{channel}={manifests}/{channel}.manifest"));
        }
        let flags = ["--out", out, "--instances", "2", "--size", "16x16"];
        args.extend(flags.map(String::from));
        // Small shards: several uploads before the pause and after it.
        args.extend(["--shard-size", "4000"].map(String::from));
        args
    };
    let steady = garage.url("steady");
    let steady_args = args(&steady);
    t.run(&steady_args.iter().map(String::as_str).collect::<Vec<_>>())
        .ok();

    let resume = t.path("resume");
    t.env
        .push(("SHARDLINE_FAULT", "algo-1:pause-after-5".into()));
    t.env
        .push(("SHARDLINE_FAULT_RESUME", resume.display().to_string()));
    let restarted = garage.url("restarted");
    let restarted_args = args(&restarted);
    let refs: Vec<&str> = restarted_args.iter().map(String::as_str).collect();
    let paused = t.path("resume.paused");
    let t = &t;
    let run = std::thread::scope(|scope| {
        let job = scope.spawn(|| t.run(&refs));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while !paused.exists() {
            assert!(
                std::time::Instant::now() < deadline && !job.is_finished(),
                "algo-1 never paused"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // algo-1 goes on half a second into the server's two seconds down.
        let go = scope.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(500));
            std::fs::write(&resume, b"").expect("resume");
        });
        garage
            .restart(std::time::Duration::from_secs(2))
            .expect("garage restarts");
        go.join().expect("resume thread");
        job.join().expect("process thread")
    });
    // Carried through by retried requests, not by the launcher starting algo-1's share again.
    let stdout = run.ok();
    assert!(!stdout.contains("retried algo-1"), "{stdout}");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let env = garage.env();
    let files = |url: &str| -> Vec<(String, Vec<u8>)> {
        let store = shardline_store::Store::open_with(url, &env).expect("open");
        let mut keys: Vec<String> = runtime
            .block_on(store.list_all(""))
            .expect("list")
            .into_iter()
            .map(|o| o.key)
            .collect();
        keys.sort();
        keys.into_iter()
            .map(|k| {
                let bytes = runtime.block_on(store.get(&k)).expect("get").to_vec();
                (k, bytes)
            })
            .collect()
    };
    let log = String::from_utf8_lossy(
        &files(&restarted)
            .into_iter()
            .find(|(k, _)| k == "logs/algo-1.log")
            .expect("algo-1's log")
            .1,
    )
    .into_owned();
    assert!(log.contains("pausing algo-1"), "{log}");
    assert!(!log.contains("algo-1 attempt 2"), "{log}");
    assert!(
        log.contains("retry 1 of"),
        "the restart was not felt (no request was retried):\n{log}"
    );
    // Shards, indexes and recipe byte for byte; logs, timings and lineage differ by nature.
    let data = |url: &str| -> Vec<(String, Vec<u8>)> {
        files(url)
            .into_iter()
            .filter(|(k, _)| k.ends_with(".tar") || k.ends_with("index.json") || k == "recipe.json")
            .collect()
    };
    let (a, b) = (data(&steady), data(&restarted));
    assert!(
        a.iter().filter(|(k, _)| k.ends_with(".tar")).count() >= 6,
        "{:?}",
        a.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert_eq!(
        a.iter().map(|f| &f.0).collect::<Vec<_>>(),
        b.iter().map(|f| &f.0).collect::<Vec<_>>(),
        "the same files, no duplicates"
    );
    assert!(
        a == b,
        "the restarted run's shards differ from the steady run's"
    );
    assert!(
        files(&restarted)
            .iter()
            .all(|(k, _)| !k.contains("staging")),
        "staging left behind"
    );
}

/// A model trained into S3, registered in an S3 registry and used from there by batch
/// transform (which loads models exactly as `shardline serve` does), with its predictions on S3.
#[test]
fn models_train_to_register_in_and_predict_from_s3() {
    let mut t = TestDir::new();
    t.processed(2, 12, &["--size", "16x16"]);
    let garage = LocalGarage::start(&t.path("garage"), "models").expect("start garage");
    t.env = garage.env();
    let model = garage.url("shapes/v1");
    t.train_one_epoch("p", &model);
    let registry = garage.url("registry");
    let out = t
        .run(&[
            "model",
            "register",
            "--name",
            "shapes",
            "--model",
            &model,
            "--registry",
            &registry,
        ])
        .ok();
    assert!(out.contains("registered shapes:1"), "{out}");
    for (source, predictions) in [
        (model.clone(), garage.url("tx-direct")),
        ("shapes:latest".to_string(), garage.url("tx-registered")),
    ] {
        let out = t
            .run(&[
                "transform",
                "--model",
                &source,
                "--registry",
                &registry,
                "--manifest",
                "m/test.manifest",
                "--out",
                &predictions,
            ])
            .ok();
        assert!(out.contains("(0 unreadable)"), "{out}");
    }
    // The same predictions from the model and from its registered copy, read back from S3.
    let settings: Vec<(&str, String)> = garage.env();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let read = |name: &str| -> String {
        let store = shardline_store::Store::open_with(&garage.url(name), &settings).expect("open");
        let bytes = runtime
            .block_on(store.get("predictions/algo-1.jsonl"))
            .expect("predictions on S3");
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    };
    let direct = read("tx-direct");
    assert_eq!(direct.lines().count(), 6, "{direct}");
    assert_eq!(direct, read("tx-registered"));
}
