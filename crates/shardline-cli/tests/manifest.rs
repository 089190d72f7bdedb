//! The manifest step as a user runs it: the real binary over local files.

mod common;

use std::collections::{HashMap, HashSet};

use common::{TestDir, files, json_file, manifest};
use parquet::file::reader::{FileReader, SerializedFileReader};
use shardline_lineage::Digest;

const OUTPUTS: [&str; 7] = [
    "dataset.csv",
    "dataset.parquet",
    "labels.json",
    "lineage.json",
    "test.manifest",
    "train.manifest",
    "validation.manifest",
];

/// What an output directory holds: the outputs and the owner record.
const LISTED: [&str; 8] = [
    ".shardline/owner.json",
    "dataset.csv",
    "dataset.parquet",
    "labels.json",
    "lineage.json",
    "test.manifest",
    "train.manifest",
    "validation.manifest",
];

#[test]
fn writes_manifests_table_labels_and_lineage() {
    let t = TestDir::new();
    t.shapes("data", 3, 40);
    let stdout = t
        .run(&["manifest", "--source", "data", "--out", "out"])
        .ok();
    assert!(stdout.contains("120 objects in 3 classes"), "{stdout}");
    assert_eq!(files(&t.path("out")), LISTED);

    // One manifest per channel, prefixed with the source URI, covering every object once.
    let source_uri = format!("file://{}/", t.arg("data"));
    let mut seen = HashSet::new();
    let mut per_channel = HashMap::new();
    for channel in ["train", "validation", "test"] {
        let (prefix, keys) = manifest(&t.path(&format!("out/{channel}.manifest")));
        assert_eq!(prefix, source_uri);
        for key in &keys {
            assert!(t.path("data").join(key).is_file(), "{key}");
            assert!(seen.insert(key.clone()), "{key} in two channels");
        }
        per_channel.insert(channel, keys.len());
    }
    assert_eq!(seen.len(), 120);
    assert_eq!(per_channel["train"], 96);
    assert_eq!(per_channel["validation"], 12);
    assert_eq!(per_channel["test"], 12);

    // Labels by sorted name.
    let labels: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.path("out/labels.json")).expect("read"))
            .expect("json");
    assert_eq!(
        labels["classes"],
        serde_json::json!(["circle", "square", "triangle"])
    );
    assert_eq!(labels["ids"]["triangle"], 2);

    // The lineage record's digests match the files, and its counts are stratified.
    let lineage: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.path("out/lineage.json")).expect("read"))
            .expect("json");
    assert_eq!(lineage["source"], source_uri.as_str());
    assert_eq!(lineage["listing"]["objects"], 120);
    for (name, record) in lineage["outputs"].as_object().expect("outputs") {
        let content = std::fs::read(t.path("out").join(name)).expect("output");
        assert_eq!(record["digest"], Digest::of(&content).as_str(), "{name}");
    }
    for class in ["circle", "square", "triangle"] {
        assert_eq!(
            lineage["counts"][class],
            serde_json::json!({"train": 32, "validation": 4, "test": 4})
        );
    }

    // The table: one row per object with the documented columns.
    let bytes = std::fs::read(t.path("out/dataset.parquet")).expect("parquet");
    let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).expect("reader");
    assert_eq!(reader.metadata().file_metadata().num_rows(), 120);
    let csv = std::fs::read_to_string(t.path("out/dataset.csv")).expect("csv");
    assert!(csv.starts_with("key,class_label,label,channel,size,etag,last_modified\n"));
    assert_eq!(csv.lines().count(), 121);
}

#[test]
fn the_same_data_and_settings_give_byte_identical_outputs() {
    let t = TestDir::new();
    t.shapes("data", 2, 30);
    t.run(&["manifest", "--source", "data", "--out", "a"]).ok();
    t.run(&["manifest", "--source", "data", "--out", "b"]).ok();
    for name in OUTPUTS {
        assert_eq!(
            std::fs::read(t.path("a").join(name)).expect("a"),
            std::fs::read(t.path("b").join(name)).expect("b"),
            "{name}"
        );
    }
    // A rerun into the same output is a no-op.
    let before = std::fs::metadata(t.path("a/lineage.json"))
        .expect("meta")
        .modified()
        .expect("mtime");
    let stdout = t.run(&["manifest", "--source", "data", "--out", "a"]).ok();
    assert!(stdout.contains("unchanged"), "{stdout}");
    let after = std::fs::metadata(t.path("a/lineage.json"))
        .expect("meta")
        .modified()
        .expect("mtime");
    assert_eq!(before, after);
    // Another seed gives another assignment.
    t.run(&["manifest", "--source", "data", "--out", "c", "--seed", "7"])
        .ok();
    assert_ne!(
        std::fs::read(t.path("a/train.manifest")).expect("a"),
        std::fs::read(t.path("c/train.manifest")).expect("c")
    );
}

#[test]
fn new_objects_never_move_existing_ones() {
    let t = TestDir::new();
    t.shapes("data", 2, 50);
    t.run(&["manifest", "--source", "data", "--out", "out"])
        .ok();
    let before: HashMap<String, &str> = ["train", "validation", "test"]
        .into_iter()
        .flat_map(|c| {
            manifest(&t.path(&format!("out/{c}.manifest")))
                .1
                .into_iter()
                .map(move |k| (k, c))
        })
        .collect();
    // The source grows by 40% (same seed, same layout, more images).
    t.shapes("data", 2, 70);
    let stdout = t
        .run(&["manifest", "--source", "data", "--out", "out"])
        .ok();
    assert!(
        stdout.contains("updated: 40 new object(s), 0 removed"),
        "{stdout}"
    );
    let mut after = HashMap::new();
    for channel in ["train", "validation", "test"] {
        for key in manifest(&t.path(&format!("out/{channel}.manifest"))).1 {
            after.insert(key, channel);
        }
    }
    assert_eq!(after.len(), 140);
    for (key, channel) in &before {
        assert_eq!(after[key], *channel, "{key} moved");
    }
    let lineage: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.path("out/lineage.json")).expect("read"))
            .expect("json");
    assert_eq!(
        lineage["totals"],
        serde_json::json!({"train": 112, "validation": 14, "test": 14})
    );
    assert!(
        lineage["previous"]
            .as_str()
            .expect("previous")
            .starts_with("sha256:")
    );
}

fn assert_nothing_written(t: &TestDir, out: &str) {
    let written = files(&t.path(out));
    assert!(written.is_empty(), "{out} holds {written:?}");
}

#[test]
fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let t = TestDir::new();
    // Missing and empty sources.
    let err = t
        .run(&["manifest", "--source", "nowhere", "--out", "out"])
        .fails();
    assert!(
        err.contains("does not exist") && err.contains("nowhere"),
        "{err}"
    );
    std::fs::create_dir(t.path("empty")).expect("mkdir");
    let err = t
        .run(&["manifest", "--source", "empty", "--out", "out"])
        .fails();
    assert!(err.contains("holds no objects"), "{err}");

    // Objects directly under the source.
    t.shapes("data", 2, 20);
    std::fs::write(t.path("data/stray.jpg"), b"x").expect("write");
    let err = t
        .run(&["manifest", "--source", "data", "--out", "out"])
        .fails();
    assert!(
        err.contains("1 object(s) sit directly under") && err.contains("stray.jpg"),
        "{err}"
    );
    std::fs::remove_file(t.path("data/stray.jpg")).expect("rm");

    // A class with too few objects for the minimum.
    let err = t
        .run(&[
            "manifest",
            "--source",
            "data",
            "--out",
            "out",
            "--min-per-class",
            "3",
        ])
        .fails();
    assert!(
        err.contains("class \"circle\" has 20 object(s)") && err.contains("validation=2"),
        "{err}"
    );

    // Bad splits.
    let err = t
        .run(&[
            "manifest",
            "--source",
            "data",
            "--out",
            "out",
            "--split",
            "train=0.8,dev=0.2",
        ])
        .fails();
    assert!(err.contains("unknown channel \"dev\""), "{err}");
    let err = t
        .run(&[
            "manifest",
            "--source",
            "data",
            "--out",
            "out",
            "--split",
            "train=0.8,test=0.1",
        ])
        .fails();
    assert!(err.contains("sum to 0.9"), "{err}");

    // An output inside the source.
    let err = t
        .run(&["manifest", "--source", "data", "--out", "data/manifests"])
        .fails();
    assert!(err.contains("inside the source"), "{err}");
    assert!(!t.path("data/manifests").exists());
    assert_nothing_written(&t, "out");

    // An unknown scheme.
    let err = t
        .run(&["manifest", "--source", "gs://b/x", "--out", "out"])
        .fails();
    assert!(err.contains("gs:// is not supported"), "{err}");

    // Names that later stages would spell differently: refused here, naming them.
    for name in ["tab\there.jpg", "back\\slash.jpg", "new\nline.jpg"] {
        std::fs::write(t.path("data/circle").join(name), b"x").expect("write");
        let err = t
            .run(&["manifest", "--source", "data", "--out", "out"])
            .fails();
        assert!(
            err.contains("1 object(s)") && err.contains("rename them"),
            "{name:?}: {err}"
        );
        std::fs::remove_file(t.path("data/circle").join(name)).expect("rm");
    }
    // One class: nothing to classify.
    std::fs::create_dir_all(t.path("single/circle")).expect("mkdir");
    std::fs::write(t.path("single/circle/1.jpg"), b"x").expect("write");
    let err = t
        .run(&["manifest", "--source", "single", "--out", "out"])
        .fails();
    assert!(
        err.contains("has one class") && err.contains("at least 2"),
        "{err}"
    );
    assert_nothing_written(&t, "out");
}

#[test]
fn an_output_holding_another_dataset_is_refused_unless_forced() {
    let t = TestDir::new();
    t.shapes("data", 2, 30);
    t.shapes("other", 3, 30);
    t.run(&["manifest", "--source", "data", "--out", "out"])
        .ok();
    let original = std::fs::read(t.path("out/lineage.json")).expect("read");

    let err = t
        .run(&["manifest", "--source", "other", "--out", "out"])
        .fails();
    assert!(
        err.contains("already holds a dataset of another source") && err.contains("--force"),
        "{err}"
    );
    let err = t
        .run(&[
            "manifest", "--source", "data", "--out", "out", "--seed", "1",
        ])
        .fails();
    assert!(err.contains("with other settings"), "{err}");
    assert_eq!(
        std::fs::read(t.path("out/lineage.json")).expect("read"),
        original
    );

    let stdout = t
        .run(&["manifest", "--source", "other", "--out", "out", "--force"])
        .ok();
    assert!(stdout.contains("replaced"), "{stdout}");
    let (_, keys) = manifest(&t.path("out/train.manifest"));
    assert!(keys.iter().any(|k| k.starts_with("triangle/")));

    // Files that look like outputs but have no lineage record are not overwritten either.
    std::fs::create_dir(t.path("foreign")).expect("mkdir");
    std::fs::write(t.path("foreign/train.manifest"), b"[]").expect("write");
    let err = t
        .run(&["manifest", "--source", "data", "--out", "foreign"])
        .fails();
    assert!(err.contains("without a Shardline lineage record"), "{err}");
}

#[test]
fn a_changed_output_is_detected_by_its_digests() {
    let t = TestDir::new();
    t.shapes("data", 2, 30);
    t.run(&["manifest", "--source", "data", "--out", "out"])
        .ok();
    let path = t.path("out/test.manifest");
    let mut text = std::fs::read_to_string(&path).expect("read");
    text = text.replace("]\n", ",\n\"circle/extra.jpg\"]\n");
    std::fs::write(&path, text).expect("write");
    let err = t
        .run(&["manifest", "--source", "data", "--out", "out"])
        .fails();
    assert!(
        err.contains("test.manifest") && err.contains("does not match its lineage record"),
        "{err}"
    );
}

#[test]
fn an_interrupted_commit_is_finished_before_anything_else() {
    let t = TestDir::new();
    t.shapes("data", 2, 30);
    t.run(&["manifest", "--source", "data", "--out", "out"])
        .ok();
    // Simulate a crash after the commit record was written and before the files were moved:
    // the staged files and the record are on disk, the published ones are stale.
    let staged = t.path("out/.shardline/staging/c1");
    std::fs::create_dir_all(&staged).expect("mkdir");
    for name in OUTPUTS {
        std::fs::copy(t.path("out").join(name), staged.join(name)).expect("copy");
    }
    std::fs::write(
        t.path("out/train.manifest"),
        b"[{\"prefix\":\"file:///x/\"}]",
    )
    .expect("write");
    let record = serde_json::json!({"id": "c1", "files": OUTPUTS});
    std::fs::write(t.path("out/.shardline/commit.json"), record.to_string()).expect("write");
    let stdout = t
        .run(&["manifest", "--source", "data", "--out", "out"])
        .ok();
    assert!(stdout.contains("unchanged"), "{stdout}");
    assert_eq!(files(&t.path("out")), LISTED);
}

#[test]
fn augmented_manifests_carry_the_label() {
    let t = TestDir::new();
    t.shapes("data", 2, 20);
    t.run(&[
        "manifest",
        "--source",
        "data",
        "--out",
        "out",
        "--augmented",
        "--split",
        "train=0.5,test=0.5",
    ])
    .ok();
    let text = std::fs::read_to_string(t.path("out/train.augmented.manifest")).expect("read");
    let first: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("line")).expect("json");
    let source_ref = first["source-ref"].as_str().expect("source-ref");
    assert!(
        source_ref.starts_with(&format!("file://{}/", t.arg("data"))),
        "{source_ref}"
    );
    assert_eq!(
        first["class-id"],
        if first["class"] == "circle" { 0 } else { 1 }
    );
    assert_eq!(text.lines().count(), 20);
    assert!(!t.path("out/validation.manifest").exists());
}

#[test]
fn pandas_reads_the_table() {
    let t = TestDir::new();
    t.shapes("data", 2, 20);
    t.run(&["manifest", "--source", "data", "--out", "out"])
        .ok();
    let script = "import sys, pandas as pd\n\
        df = pd.read_parquet(sys.argv[1])\n\
        assert list(df.columns) == ['key','class_label','label','channel','size','etag','last_modified'], df.columns\n\
        assert len(df) == 40 and set(df.channel) == {'train','validation','test'}\n\
        assert str(df.last_modified.dtype).startswith('datetime64'), df.dtypes\n\
        print('pandas ok')";
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(t.path("out/dataset.parquet"))
        .output()
        .expect("python3 runs (install pandas and pyarrow: pip install -r bench/requirements.txt)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_reader_that_goes_away_does_not_break_the_step() {
    // `shardline manifest ... | head -0`: stdout closes before the summary is printed.
    let t = TestDir::new();
    t.shapes("data", 2, 10);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(["manifest", "--source", "data", "--out", "out"])
        .current_dir(t.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(files(&t.path("out")), LISTED);
}

/// A channel larger than `--part-keys` is written as parts behind an index at the manifest's own
/// path; processing takes the index as it takes a manifest (transform and the pipeline's digests
/// read it through the same `read_manifest`) and writes the same shards as from one file; a rerun
/// keeps the assignment.
#[test]
fn large_channels_are_written_in_parts_that_every_command_takes() {
    let t = TestDir::new();
    t.shapes("data", 3, 20);
    let manifest_run = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "manifest",
            "--source",
            "data",
            "--out",
            out,
            "--split",
            "train=0.5,validation=0.25,test=0.25",
        ];
        args.extend_from_slice(extra);
        t.run(&args)
    };
    let manifest = |out: &str, extra: &[&str]| manifest_run(out, extra).ok();
    manifest("whole", &[]);
    manifest("parts", &["--part-keys", "7"]);
    let index = json_file(t.path("parts/train.manifest"));
    assert_eq!(index["shardline_manifest_index"], 1);
    let whole = std::fs::read_to_string(t.path("whole/train.manifest")).unwrap();
    let keys = whole.matches(",\n").count() as u64;
    assert_eq!(index["keys"], keys);
    let parts = index["parts"].as_array().unwrap();
    assert_eq!(parts.len() as u64, keys.div_ceil(7));
    for part in parts {
        let name = part["manifest"].as_str().unwrap();
        assert!(name.starts_with("train.manifest.part-"), "{name}");
        // Each part is a SageMaker manifest of its own.
        let text = std::fs::read_to_string(t.path(&format!("parts/{name}"))).unwrap();
        assert!(text.starts_with("[{\"prefix\":"), "{text}");
    }
    // The same objects processed from the index as from the single file.
    let process = |m: &str, out: &str| {
        let mut args = vec!["process".to_string()];
        for c in ["train", "validation", "test"] {
            args.push("--input".into());
            args.push(format!("{c}={}/{c}.manifest", t.arg(m)));
        }
        args.extend([
            "--out".to_string(),
            out.to_string(),
            "--instances".into(),
            "2".into(),
        ]);
        t.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .ok()
    };
    process("whole", "p-whole");
    process("parts", "p-parts");
    for channel in ["train", "validation", "test"] {
        assert_eq!(
            t.samples(&format!("p-whole/{channel}/index.json")),
            t.samples(&format!("p-parts/{channel}/index.json")),
            "{channel}"
        );
    }
    let shards = |p: &str| -> Vec<String> {
        json_file(t.path(&format!("{p}/train/index.json")))["shardlist"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["sha256"].to_string())
            .collect()
    };
    assert_eq!(shards("p-whole"), shards("p-parts"));
    // A rerun reads its parts back and keeps every object's channel.
    let again = manifest("parts", &["--part-keys", "7"]);
    assert!(!again.contains("error"), "{again}");
    assert_eq!(json_file(t.path("parts/train.manifest")), index);
    // A part deleted behind the step's back: refused, and rebuilt with --force.
    std::fs::remove_file(t.path("parts/train.manifest.part-00001")).unwrap();
    let err = manifest_run("parts", &["--part-keys", "7"]).fails();
    assert!(
        err.contains("train.manifest in") && err.contains("--force rebuilds"),
        "{err}"
    );
    manifest("parts", &["--part-keys", "7", "--force"]);
    assert!(t.path("parts/train.manifest.part-00001").exists());
    assert_eq!(json_file(t.path("parts/train.manifest")), index);
}

/// `datagen` never writes over another lake: a rerun of the same command is a no-op, other
/// settings or other objects in --out are refused unless --force.
#[test]
fn datagen_refuses_to_overwrite_a_lake() {
    let t = TestDir::new();
    let shapes = |extra: &[&str]| {
        let mut args = vec![
            "datagen",
            "shapes",
            "--out",
            "lake",
            "--classes",
            "2",
            "--per-class",
            "3",
        ];
        args.extend_from_slice(extra);
        t.run(&args)
    };
    shapes(&[]).ok();
    let first = std::fs::read(
        t.path("lake/circle")
            .join(&files(&t.path("lake/circle"))[0]),
    )
    .expect("file");
    shapes(&[]).ok();
    let err = shapes(&["--seed", "9"]).fails();
    assert!(
        err.contains("made with other settings") && err.contains("--force"),
        "{err}"
    );
    let again = std::fs::read(
        t.path("lake/circle")
            .join(&files(&t.path("lake/circle"))[0]),
    )
    .expect("file");
    assert!(first == again, "a refused run wrote over the lake");
    std::fs::create_dir_all(t.path("photos/cat")).expect("mkdir");
    std::fs::write(t.path("photos/cat/1.jpg"), b"mine").expect("write");
    let err = t
        .run(&[
            "datagen",
            "shapes",
            "--out",
            "photos",
            "--classes",
            "2",
            "--per-class",
            "3",
        ])
        .fails();
    assert!(
        err.contains("does not write") && err.contains("cat/1.jpg"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(t.path("photos/cat/1.jpg")).expect("kept"),
        b"mine"
    );
    shapes(&["--seed", "9", "--force"]).ok();
}
