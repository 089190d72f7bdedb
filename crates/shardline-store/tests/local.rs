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

#[tokio::test]
async fn links_stay_inside_the_source_and_loops_are_named() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("source");
    std::fs::create_dir_all(source.join("cat")).expect("mkdir");
    std::fs::write(source.join("cat/1.jpg"), b"1").expect("write");
    std::fs::write(dir.path().join("secret.txt"), b"s").expect("write");
    let store = shardline_store::Store::open(source.to_str().expect("utf-8")).expect("open");
    // A link to a file inside the source is an object under the link's name.
    symlink(source.join("cat/1.jpg"), source.join("cat/2.jpg")).expect("link");
    let mut keys: Vec<String> = store
        .list_all("")
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect();
    keys.sort();
    assert_eq!(keys, ["cat/1.jpg", "cat/2.jpg"]);
    // One that leads outside is refused, naming it and where it leads.
    symlink(dir.path().join("secret.txt"), source.join("cat/3.jpg")).expect("link");
    let err = store.list_all("").await.expect_err("outside").to_string();
    assert!(
        err.contains("cat/3.jpg") && err.contains("outside the source"),
        "{err}"
    );
    std::fs::remove_file(source.join("cat/3.jpg")).expect("rm");
    // A directory link back to an ancestor is a loop, named as one.
    symlink(&source, source.join("cat/again")).expect("link");
    let err = store.list_all("").await.expect_err("loop").to_string();
    assert!(
        err.contains("cat/again") && err.contains("link loop"),
        "{err}"
    );
    std::fs::remove_file(source.join("cat/again")).expect("rm");
    // A link to itself cannot be resolved at all.
    symlink(source.join("cat/self"), source.join("cat/self")).expect("link");
    let err = store.list_all("").await.expect_err("self").to_string();
    assert!(
        err.contains("cat/self") && err.contains("link loop"),
        "{err}"
    );
}
