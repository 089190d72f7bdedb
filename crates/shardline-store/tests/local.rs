//! The conformance suite on local files.

mod conformance;

#[tokio::test]
async fn local_store_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = shardline_store::Store::open(dir.path().to_str().expect("utf-8")).expect("open");
    conformance::run(&store).await;
}

#[tokio::test]
async fn file_urls_and_plain_paths_name_the_same_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = shardline_store::Store::open(dir.path().to_str().expect("utf-8")).expect("open");
    let url =
        shardline_store::Store::open(&format!("file://{}", dir.path().display())).expect("open");
    assert_eq!(plain.uri(), url.uri());
    plain
        .put("x/y.txt", bytes::Bytes::from_static(b"1"))
        .await
        .expect("put");
    assert_eq!(
        url.get("x/y.txt").await.expect("get"),
        bytes::Bytes::from_static(b"1")
    );
    assert!(dir.path().join("x/y.txt").is_file());
}
