//! Outputs know their owner: a stage refuses, before any work, an `--out` that holds another
//! stage's output, that overlaps its inputs, or that holds a finished, different job of its own
//! kind (unless `--force`); and a new job replaces an old one completely, once it has succeeded.

mod common;

use common::{TestDir, json_file as json};

fn train(t: &TestDir, data: &str, out: &str, extra: &[&str]) -> common::Run {
    let mut args = vec!["train", "--data", data, "--out", out, "--workers", "1"];
    for (flag, value) in [("--epochs", "1"), ("--batch", "8")] {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend_from_slice(extra);
    t.run(&args)
}

/// Each stage pointed at another stage's output is refused and leaves it as it was.
#[test]
fn a_stage_never_writes_into_another_stages_output() {
    let t = TestDir::new();
    t.processed(2, 12, &["--size", "16x16"]);
    train(&t, "p", "model", &[]).ok();
    let before =
        |dir: &str| std::fs::read(t.path(&format!("{dir}/lineage.json"))).expect("lineage");
    let (manifests, processed, model) = (before("m"), before("p"), before("model"));

    let err = t.process(&["--out", "m", "--size", "16x16"]).fails();
    assert!(
        err.contains("holds the output of `shardline manifest`"),
        "{err}"
    );
    let err = t
        .process(&["--out", "model", "--size", "16x16", "--force"])
        .fails();
    assert!(
        err.contains("holds the output of `shardline train`"),
        "{err}"
    );
    // train --out at the processed data overlaps its input; beside another stage's, it is refused.
    let err = train(&t, "p", "p", &[]).fails();
    assert!(err.contains("overlaps the data"), "{err}");
    let err = train(&t, "p", "m", &["--force"]).fails();
    assert!(
        err.contains("holds the output of `shardline manifest`"),
        "{err}"
    );
    let err = t
        .run(&[
            "transform",
            "--model",
            "model",
            "--manifest",
            "m/test.manifest",
            "--out",
            "model",
        ])
        .fails();
    assert!(err.contains("overlaps the model"), "{err}");
    let err = t
        .run(&[
            "transform",
            "--model",
            "model",
            "--manifest",
            "m/test.manifest",
            "--out",
            "p",
        ])
        .fails();
    assert!(
        err.contains("holds the output of `shardline process`"),
        "{err}"
    );
    let err = t
        .run(&["manifest", "--source", "data", "--out", "p", "--force"])
        .fails();
    assert!(
        err.contains("holds the output of `shardline process`"),
        "{err}"
    );

    // A user's training script is the train stage too: refused at another stage's output, and
    // at its own data.
    let script = [
        "--script",
        "mkdir -p $SM_MODEL_DIR && echo w > $SM_MODEL_DIR/w",
    ];
    let err = t
        .run(&[&["train", "--data", "p", "--out", "m"][..], &script[..]].concat())
        .fails();
    assert!(
        err.contains("holds the output of `shardline manifest`"),
        "{err}"
    );
    let err = t
        .run(
            &[
                &["train", "--data", "p", "--out", "p/model"][..],
                &script[..],
            ]
            .concat(),
        )
        .fails();
    assert!(err.contains("overlaps the input"), "{err}");
    t.run(
        &[
            &["train", "--data", "p", "--out", "scripted"][..],
            &script[..],
        ]
        .concat(),
    )
    .ok();
    let err = t
        .run(
            &[&[
                "train", "--data", "p", "--out", "scripted", "--script", "true",
            ][..]]
            .concat(),
        )
        .fails();
    assert!(err.contains("finished, different train job"), "{err}");

    assert_eq!(before("m"), manifests);
    assert_eq!(before("p"), processed);
    assert_eq!(before("model"), model);
}

/// A manifest input's objects live under its prefix: an --out inside the lake is refused.
#[test]
fn process_refuses_an_out_inside_a_manifests_lake() {
    let t = TestDir::new();
    t.manifests(2, 8);
    let err = t.process(&["--out", "data/circle/p"]).fails();
    assert!(
        err.contains("overlaps") && err.contains("data lake"),
        "{err}"
    );
    assert!(!t.path("data/circle/p").exists());
}

/// train without --resume never replaces a finished model of another job silently; the same job
/// is a no-op; --force replaces it; --resume refuses a checkpoint of another batch size.
#[test]
fn train_keeps_a_finished_model_unless_forced() {
    let t = TestDir::new();
    t.processed(2, 12, &["--size", "16x16"]);
    train(&t, "p", "model", &[]).ok();
    let weights = std::fs::read(t.path("model/weights.bin")).expect("weights");
    let stdout = train(&t, "p", "model", &[]).ok();
    assert!(stdout.contains("nothing to do"), "{stdout}");
    let err = train(&t, "p", "model", &["--lr", "0.01"]).fails();
    assert!(
        err.contains("finished, different train job") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(t.path("model/weights.bin")).expect("weights"),
        weights
    );
    let err = train(
        &t,
        "p",
        "model",
        &["--epochs", "2", "--batch", "4", "--resume"],
    )
    .fails();
    assert!(err.contains("another batch size"), "{err}");
    let stdout = train(&t, "p", "model", &["--epochs", "2", "--resume"]).ok();
    assert!(stdout.contains("resuming after epoch 1"), "{stdout}");
    train(&t, "p", "model", &["--lr", "0.01", "--force"]).ok();
    let lineage = json(t.path("model/lineage.json"));
    assert_eq!(lineage["schema"], 1, "{lineage}");
    assert_eq!(lineage["settings"]["lr"], 0.01, "{lineage}");
    let owner = json(t.path("model/.shardline/owner.json"));
    assert_eq!(owner["stage"], "train");
    assert_eq!(owner["job"], lineage["job"]);
}

/// Another instance count is another transform job: refused without --force, and with it the
/// earlier job's extra instance leaves nothing behind.
#[test]
fn a_transform_with_other_instances_is_another_job() {
    let t = TestDir::new();
    t.processed(2, 12, &["--size", "16x16"]);
    train(&t, "p", "model", &[]).ok();
    let transform = |instances: &str, extra: &[&str]| {
        let mut args = vec![
            "transform",
            "--model",
            "model",
            "--manifest",
            "m/train.manifest",
            "--out",
            "tx",
            "--instances",
            instances,
        ];
        args.extend_from_slice(extra);
        t.run(&args)
    };
    transform("3", &[]).ok();
    assert!(t.path("tx/predictions/algo-3.jsonl").is_file());
    let err = transform("2", &[]).fails();
    assert!(err.contains("finished, different transform job"), "{err}");
    transform("2", &["--force"]).ok();
    assert!(!t.path("tx/predictions/algo-3.jsonl").exists());
    let summary = json(t.path("tx/summary.json"));
    assert_eq!(summary["objects"], summary["predicted"], "{summary}");
    assert_eq!(summary["instances"].as_array().expect("instances").len(), 2);
}

/// A process job that drops a channel removes that channel's index once it succeeds.
#[test]
fn a_dropped_channel_loses_its_index() {
    let t = TestDir::new();
    t.processed(2, 12, &["--size", "16x16"]);
    assert!(t.path("p/test/index.json").is_file());
    t.run(&[
        "process",
        "--input",
        "train=m/train.manifest",
        "--out",
        "p",
        "--size",
        "16x16",
        "--force",
    ])
    .ok();
    assert!(t.path("p/train/index.json").is_file());
    assert!(!t.path("p/test/index.json").exists());
    assert!(!t.path("p/validation/index.json").exists());
}
