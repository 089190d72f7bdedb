//! The registry on local files: versions in order, no two registrations with one number, the
//! latest, digests checked, bad sources named.

use shardline_registry::{Reference, Registry};

/// A model directory as `shardline train` writes it: model.tar.gz, lineage.json, metrics.csv.
fn model_dir(dir: &std::path::Path, accuracy: f64) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let lineage =
        serde_json::json!({"step": "train", "data": "file:///p/", "test_accuracy": accuracy});
    let csv = "epoch,train_loss,validation_accuracy\n1,0.9,0.5\n2,0.1,0.95\n";
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    for (name, bytes) in [
        ("weights.bin", b"weights".to_vec()),
        ("model.json", br#"{"kind": "mlp"}"#.to_vec()),
        ("labels.json", br#"{"classes": ["cat", "dog"]}"#.to_vec()),
        ("recipe.json", b"{}".to_vec()),
        ("lineage.json", lineage.to_string().into_bytes()),
        ("metrics.csv", csv.as_bytes().to_vec()),
    ] {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, name, &bytes[..])
            .expect("append");
    }
    let tarball = builder.into_inner().expect("tar").finish().expect("gz");
    std::fs::write(dir.join("model.tar.gz"), tarball).expect("write");
    std::fs::write(dir.join("lineage.json"), lineage.to_string()).expect("write");
    std::fs::write(dir.join("metrics.csv"), csv).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn versions_are_numbered_in_order_and_never_shared() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("registry");
    let registry = Registry::open(root.to_str().expect("utf-8")).expect("open");
    let model = tmp.path().join("model");
    model_dir(&model, 0.9);
    let source = model.to_str().expect("utf-8").to_string();

    let first = registry
        .register("pets", &source, None, Some("first".into()))
        .await
        .expect("register");
    assert_eq!(first.version, 1);
    assert_eq!(first.metrics["test_accuracy"], 0.9);
    assert_eq!(first.metrics["final_epoch"]["validation_accuracy"], 0.95);
    assert_eq!(first.lineage["data"], "file:///p/");

    // Eight registrations at once get eight different numbers, 2 to 9.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let registry = registry.clone();
            let source = source.clone();
            tokio::spawn(async move { registry.register("pets", &source, None, None).await })
        })
        .collect();
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.expect("join").expect("register").version);
    }
    versions.sort();
    assert_eq!(versions, (2..=9).collect::<Vec<_>>());

    // A model.tar.gz registers too, with the metrics inside it; an evaluation report is kept.
    let tarball = model.join("model.tar.gz");
    let other = registry
        .register(
            "flowers",
            tarball.to_str().expect("utf-8"),
            Some(serde_json::json!({"accuracy": 0.8})),
            None,
        )
        .await
        .expect("register a tarball");
    assert_eq!(other.version, 1);
    assert_eq!(other.metrics["test_accuracy"], 0.9);
    assert_eq!(other.metrics["evaluation"]["accuracy"], 0.8);

    let all = registry.list(None).await.expect("list");
    assert_eq!(all.len(), 10);
    assert_eq!((all[0].name.as_str(), all[0].version), ("flowers", 1));
    let latest = registry
        .get(&Reference::parse("pets:latest").expect("ref"))
        .await
        .expect("latest");
    assert_eq!(latest.version, 9);
    let (record, uri) = registry
        .resolve(&Reference::parse("pets:1").expect("ref"))
        .await
        .expect("resolve");
    assert_eq!(record.description.as_deref(), Some("first"));
    assert!(uri.ends_with("models/pets/1/model.tar.gz"), "{uri}");
    assert_eq!(
        std::fs::read(root.join("models/pets/1/model.tar.gz")).expect("copy"),
        std::fs::read(&tarball).expect("original")
    );

    // Errors that name what to do.
    let err = registry
        .get(&Reference::parse("pets:42").expect("ref"))
        .await
        .expect_err("missing");
    assert!(
        err.to_string().contains("pets:42 is not registered"),
        "{err}"
    );
    std::fs::write(root.join("models/pets/2/model.tar.gz"), b"changed").expect("tamper");
    let err = registry
        .resolve(&Reference::parse("pets:2").expect("ref"))
        .await
        .expect_err("tampered");
    assert!(err.to_string().contains("does not match"), "{err}");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let err = registry
        .register("pets", empty.to_str().expect("utf-8"), None, None)
        .await
        .expect_err("not a model");
    assert!(err.to_string().contains("has no model.tar.gz"), "{err}");
    // Garbage is refused before a version is taken.
    std::fs::write(empty.join("model.tar.gz"), b"not a model at all").expect("write");
    let err = registry
        .register("pets", empty.to_str().expect("utf-8"), None, None)
        .await
        .expect_err("garbage");
    assert!(
        err.to_string().contains("not a gzip-compressed tar"),
        "{err}"
    );
    let err = registry
        .register("no/slashes", &source, None, None)
        .await
        .expect_err("bad name");
    assert!(err.to_string().contains("is not a model name"), "{err}");
}
