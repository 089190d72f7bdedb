//! Training as a user runs it, beyond Shardline's own loop: a SageMaker script-mode program
//! under 2 processes, a rank killed mid-run, and checkpoints that do not fit the run.

mod common;

use std::io::Read;

use common::{TestDir, json_file as json};

/// Shapes (2 classes x 20), manifests and processed 16x16 shards from 2 instances at `p`.
fn processed(t: &TestDir, extra: &[&str]) {
    let mut flags = vec!["--instances", "2", "--size", "16x16"];
    flags.extend_from_slice(extra);
    t.processed(2, 20, &flags);
}

/// The members of a `.tar.gz`, with their contents.
fn untar(path: std::path::PathBuf) -> Vec<(String, Vec<u8>)> {
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut out = Vec::new();
    for entry in archive.entries().expect("tar") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read");
        out.push((name, bytes));
    }
    out.sort();
    out
}

/// An unchanged SageMaker script-mode program (Python, numpy) runs as 2 MPI processes on the
/// processed channels; its model directory comes back as model.tar.gz with the lineage of the
/// channels; a failing run publishes no model and quotes the program's failure file.
#[test]
fn a_sagemaker_training_script_runs_under_two_processes() {
    let mut t = TestDir::new();
    processed(&t, &[]);
    t.env = vec![("OMPI_MCA_btl_vader_single_copy_mechanism", "none".into())];
    let script = format!(
        "python3 {}/tests/data/sagemaker_training.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let stdout = t
        .run(&[
            "train",
            "--data",
            "p",
            "--out",
            "sm",
            "--script",
            &script,
            "--processes-per-host",
            "2",
            "--hyperparameter",
            "epochs=2",
            "--hyperparameter",
            "learning-rate=0.05",
        ])
        .ok();
    assert!(
        stdout.contains("--epochs 2 --learning-rate 0.05"),
        "{stdout}"
    );
    let model = untar(t.path("sm/model.tar.gz"));
    let names: Vec<&str> = model.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["means.npy", "metrics.json"]);
    let metrics: serde_json::Value = serde_json::from_slice(&model[1].1).expect("metrics");
    assert_eq!(metrics["ranks"], 2, "{metrics}");
    assert_eq!(
        metrics["train_samples"],
        t.samples("p/train/index.json"),
        "{metrics}"
    );
    assert_eq!(
        metrics["test_samples"],
        t.samples("p/test/index.json"),
        "{metrics}"
    );
    // Both ranks wrote their share to SM_OUTPUT_DATA_DIR.
    let output: Vec<String> = untar(t.path("sm/output.tar.gz"))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(output, ["rank-0.json", "rank-1.json"]);
    let log = std::fs::read_to_string(t.path("sm/logs/algo-1.log")).expect("log");
    assert!(
        log.contains("rank 1/2") && log.contains("rank 0/2"),
        "{log}"
    );
    // Lineage: every channel file by digest, the hyperparameters typed as in SM_HPS.
    let lineage = json(t.path("sm/lineage.json"));
    assert_eq!(lineage["hyperparameters"]["epochs"], 2);
    assert_eq!(lineage["processes_per_host"], 2);
    let files = &lineage["channels"]["train"]["files"];
    assert!(
        files["index.json"]["digest"]
            .as_str()
            .expect("digest")
            .starts_with("sha256:")
    );
    for channel in ["train", "validation", "test"] {
        assert!(lineage["channels"][channel]["uri"].is_string(), "{lineage}");
    }

    // A failing program: its failure file is quoted, its log kept, no model published.
    let err = t
        .run(&[
            "train",
            "--data",
            "p",
            "--out",
            "failed",
            "--script",
            &script,
            "--hyperparameter",
            "fail=yes",
        ])
        .fails();
    assert!(err.contains("the script was asked to fail"), "{err}");
    assert!(t.path("failed/logs/algo-1.log").is_file());
    assert!(!t.path("failed/model.tar.gz").exists() && !t.path("failed/lineage.json").exists());

    // Bad inputs, named.
    std::fs::create_dir_all(t.path("empty")).expect("mkdir");
    let err = t
        .run(&[
            "train",
            "--out",
            "x",
            "--script",
            &script,
            "--channel",
            &format!("train={}", t.arg("empty")),
        ])
        .fails();
    assert!(
        err.contains("channel train") && err.contains("is empty"),
        "{err}"
    );
    let err = t
        .run(&[
            "train",
            "--data",
            "p",
            "--out",
            "x",
            "--script",
            &script,
            "--hyperparameter",
            "lr",
        ])
        .fails();
    assert!(err.contains("\"lr\" must look like NAME=VALUE"), "{err}");
}

/// A checkpoint is resumed only by the run that wrote it: same model, classes and recipe.
#[test]
fn a_checkpoint_from_another_model_or_recipe_is_refused() {
    let t = TestDir::new();
    processed(&t, &[]);
    let train = |data: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--data",
            data,
            "--out",
            "a",
            "--workers",
            "1",
            "--batch",
            "8",
        ];
        args.extend_from_slice(extra);
        t.run(&args)
    };
    train("p", &["--epochs", "1"]).ok();
    let err = train("p", &["--epochs", "2", "--resume", "--model", "mlp"]).fails();
    assert!(err.contains("belongs to another model"), "{err}");
    // The same images processed with another recipe (mirrored): same shape, other data.
    t.process(&["--out", "q", "--size", "16x16", "--augment", "flip"])
        .ok();
    let err = train("q", &["--epochs", "2", "--resume"]).fails();
    assert!(err.contains("another recipe"), "{err}");
    // The right run resumes.
    let stdout = train("p", &["--epochs", "2", "--resume"]).ok();
    assert!(stdout.contains("resuming after epoch 1"), "{stdout}");
}

/// `mpirun -np 2 shardline train` with rank 1 killed in the middle of an epoch: the job stops
/// with an error that names the rank, instead of rank 0 waiting forever in the allreduce.
#[cfg(feature = "mpi")]
#[test]
fn a_rank_killed_mid_run_stops_the_job() {
    let t = TestDir::new();
    processed(&t, &[]);
    let output = std::process::Command::new("timeout")
        .args([
            "300",
            "mpirun",
            "--allow-run-as-root",
            "--oversubscribe",
            "-x",
            "SHARDLINE_FAULT",
            "-np",
            "2",
            env!("CARGO_BIN_EXE_shardline"),
        ])
        .args([
            "train", "--data", "p", "--out", "killed", "--epochs", "3", "--batch", "4",
        ])
        .current_dir(t.dir.path())
        // Each job its own Open MPI session folder: 4.1's mkdir of the shared one races.
        .env("TMPDIR", t.dir.path())
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("SHARDLINE_FAULT", "rank-1:epoch-2-step-2")
        .output()
        .expect("mpirun runs (install openmpi-bin; see .ci/run)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "{text}");
    assert_ne!(output.status.code(), Some(124), "the job hung:\n{text}");
    assert!(text.contains("aborting rank-1 at epoch-2-step-2"), "{text}");
    assert!(text.contains("rank 1"), "mpirun names the rank:\n{text}");
    // Epoch 1's checkpoint stays; no model that looks complete.
    assert!(t.path("killed/checkpoint/state.json").is_file());
    assert!(!t.path("killed/weights.bin").exists());
}

/// A trained model registered twice gets versions 1 and 2, with its evaluation and lineage;
/// `list` and `show` read them back; unknown versions are named.
#[test]
fn trained_models_are_registered_with_versions_metrics_and_lineage() {
    let t = TestDir::new();
    processed(&t, &[]);
    t.train_one_epoch("p", "model");
    t.run(&[
        "evaluate",
        "--model",
        "model",
        "--data",
        "p",
        "--json",
        "eval.json",
    ])
    .ok();
    let register = |extra: &[&str]| {
        let mut args = vec![
            "model",
            "register",
            "--name",
            "shapes",
            "--model",
            "model",
            "--registry",
            "reg",
        ];
        args.extend_from_slice(extra);
        t.run(&args)
    };
    let out = register(&["--metrics", "eval.json"]).ok();
    assert!(out.contains("registered shapes:1"), "{out}");
    let out = register(&[]).ok();
    assert!(out.contains("registered shapes:2"), "{out}");
    let list = t.run(&["model", "list", "--registry", "reg"]).ok();
    assert_eq!(
        list.lines().filter(|l| l.starts_with("shapes")).count(),
        2,
        "{list}"
    );
    let shown = t
        .run(&["model", "show", "shapes:1", "--json", "--registry", "reg"])
        .ok();
    let record: serde_json::Value = serde_json::from_str(&shown).expect("record");
    let evaluation = json(t.path("eval.json"));
    assert_eq!(record["metrics"]["evaluation"], evaluation);
    assert_eq!(record["lineage"]["step"], "train");
    assert_eq!(
        std::fs::read(t.path("reg/models/shapes/1/model.tar.gz")).expect("copy"),
        std::fs::read(t.path("model/model.tar.gz")).expect("model")
    );
    let err = t
        .run(&["model", "show", "shapes:7", "--registry", "reg"])
        .fails();
    assert!(err.contains("shapes:7 is not registered"), "{err}");
    // Garbage, or an archive whose weights do not fit its model, never becomes a version.
    std::fs::create_dir_all(t.path("junk")).expect("mkdir");
    std::fs::write(t.path("junk/model.tar.gz"), b"garbage").expect("write");
    let err = t
        .run(&[
            "model",
            "register",
            "--name",
            "shapes",
            "--model",
            "junk",
            "--registry",
            "reg",
        ])
        .fails();
    assert!(
        err.contains("model register:") && err.contains("junk"),
        "{err}"
    );
    let mut wrong = std::fs::read(t.path("model/weights.bin")).expect("weights");
    wrong.truncate(wrong.len() / 2);
    std::fs::create_dir_all(t.path("half")).expect("mkdir");
    for name in ["model.json", "labels.json", "recipe.json"] {
        std::fs::copy(
            t.path(&format!("model/{name}")),
            t.path(&format!("half/{name}")),
        )
        .expect("copy");
    }
    std::fs::write(t.path("half/weights.bin"), wrong).expect("write");
    let err = t
        .run(&[
            "model",
            "register",
            "--name",
            "shapes",
            "--model",
            "half",
            "--registry",
            "reg",
        ])
        .fails();
    assert!(err.contains("half"), "{err}");
    let list = t.run(&["model", "list", "--registry", "reg"]).ok();
    assert_eq!(
        list.lines().filter(|l| l.starts_with("shapes")).count(),
        2,
        "{list}"
    );
}

/// Early stopping as a user sees it: training ends `--patience` epochs after the best validation
/// accuracy (or at `--epochs`), the model holds the best epoch's weights (it scores on the
/// validation channel what that epoch scored), and its lineage says which epoch it kept and why.
#[test]
fn early_stopping_keeps_the_best_epoch_and_records_it() {
    let t = TestDir::new();
    processed(&t, &[]);
    let max = 12;
    t.run(&[
        "train",
        "--data",
        "p",
        "--out",
        "model",
        "--workers",
        "2",
        "--batch",
        "4",
        "--epochs",
        &max.to_string(),
        "--patience",
        "2",
    ])
    .ok();
    let text = std::fs::read_to_string(t.path("model/metrics.csv")).expect("metrics.csv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let (loss, accuracy) = (column("validation_loss"), column("validation_accuracy"));
    let rows: Vec<(f64, f64)> = lines
        .map(|l| {
            let v: Vec<f64> = l.split(',').map(|x| x.parse().expect("number")).collect();
            (v[accuracy], v[loss])
        })
        .collect();
    // The rule: the highest validation accuracy, the lowest loss between equals, the earliest.
    let mut best = 0;
    for (i, &(a, l)) in rows.iter().enumerate() {
        if a > rows[best].0 || (a == rows[best].0 && l < rows[best].1) {
            best = i;
        }
    }
    let kept = json(t.path("model/lineage.json"))["kept"].clone();
    assert_eq!(kept["epochs_run"], rows.len(), "{kept}");
    assert_eq!(kept["epoch"], best + 1, "{kept} {rows:?}");
    if rows.len() < max {
        // Stopped early: exactly `patience` epochs without a better one.
        assert_eq!(rows.len(), best + 1 + 2, "{rows:?}");
        assert!(
            kept["reason"]
                .as_str()
                .unwrap_or("")
                .contains("stopped early"),
            "{kept}"
        );
    }
    t.run(&[
        "evaluate",
        "--model",
        "model",
        "--data",
        "p",
        "--channel",
        "validation",
        "--json",
        "e.json",
    ])
    .ok();
    let scored = json(t.path("e.json"))["accuracy"]
        .as_f64()
        .expect("accuracy");
    assert!((scored - rows[best].0).abs() < 1e-6, "{scored} vs {rows:?}");
}

/// The defaults agree end to end: `process` with its default instance count (one instance: a
/// single shard per channel here) followed by `train` with its default workers trains, each
/// rank on its part of the samples, and evaluates.
#[test]
fn default_process_then_default_train_works() {
    let t = TestDir::new();
    t.processed(2, 20, &["--size", "16x16"]);
    assert_eq!(
        json(t.path("p/train/index.json"))["shardlist"]
            .as_array()
            .expect("shards")
            .len(),
        1
    );
    let out = t
        .run(&[
            "train", "--data", "p", "--out", "model", "--epochs", "1", "--batch", "4",
        ])
        .ok();
    assert!(out.contains("test accuracy"), "{out}");
    assert!(t.path("model/model.tar.gz").is_file());
}

/// Records that should be reproducible are: two identical runs (2 workers) write byte-identical
/// lineage.json and model.tar.gz; their timings, which differ, are in timings.csv, which neither
/// the lineage record nor the archive holds.
#[test]
fn identical_runs_write_identical_records_and_keep_timings_apart() {
    let t = TestDir::new();
    processed(&t, &[]);
    for out in ["a", "b"] {
        t.run(&[
            "train",
            "--data",
            "p",
            "--out",
            out,
            "--workers",
            "2",
            "--epochs",
            "2",
            "--batch",
            "4",
        ])
        .ok();
    }
    for file in ["lineage.json", "model.tar.gz", "metrics.csv", "weights.bin"] {
        let a = std::fs::read(t.path("a").join(file)).expect("a");
        let b = std::fs::read(t.path("b").join(file)).expect("b");
        assert!(a == b, "{file} differs between identical runs");
    }
    let timings = std::fs::read_to_string(t.path("a/timings.csv")).expect("timings");
    assert!(timings.starts_with("epoch,samples_per_second"), "{timings}");
    assert_eq!(timings.lines().count(), 3, "{timings}");
    let lineage = std::fs::read_to_string(t.path("a/lineage.json")).expect("lineage");
    assert!(!lineage.contains("timings.csv"), "{lineage}");
}

/// A tmpfs of a given size mounted on a path; unmounted when dropped (even when a test fails).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: std::path::PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&path).expect("mkdir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount (the tests run as root, as .ci/run does)");
        assert!(status.success(), "mount a tmpfs on {}", path.display());
        SmallDisk(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A full disk at any point of training leaves either the whole model (lineage last) or no
/// model at all: no lineage.json, and no staged files behind (a resumable checkpoint may stay).
#[test]
fn a_full_disk_leaves_nothing_that_looks_complete() {
    let t = TestDir::new();
    processed(&t, &[]);
    let mut failures = 0;
    for (i, size) in ["120k", "400k", "700k", "1000k", "1300k", "4m"]
        .iter()
        .enumerate()
    {
        let disk = SmallDisk::mount(t.path(&format!("disk{i}")), size);
        let out = disk.0.join("model");
        let run = t.run(&[
            "train",
            "--data",
            "p",
            "--out",
            out.to_str().expect("utf-8"),
            "--epochs",
            "1",
            "--batch",
            "4",
            "--workers",
            "1",
        ]);
        let staged: Vec<String> = common::files(&out.join(".shardline"))
            .into_iter()
            .filter(|f| f.contains("staging"))
            .collect();
        assert!(staged.is_empty(), "{size}: staged files left: {staged:?}");
        if run.output.status.success() {
            assert!(out.join("lineage.json").is_file() && out.join("model.tar.gz").is_file());
        } else {
            failures += 1;
            assert!(
                run.stderr().contains("No space left"),
                "{size}: {}",
                run.stderr()
            );
            for file in ["lineage.json", "model.tar.gz", "weights.bin", "model.json"] {
                assert!(
                    !out.join(file).exists(),
                    "{size}: {file} left by a failed run"
                );
            }
        }
    }
    assert!(
        failures > 0,
        "no size was too small: the test checked nothing"
    );
}
