//! The conformance suite on a real S3-compatible server: a single-node Garage started on
//! loopback by the test itself. The test fails (it is never skipped) when Garage is missing.

mod conformance;

use shardline_testkit::garage::LocalGarage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garage =
        LocalGarage::start(&dir.path().join("garage"), "conformance").expect("start garage");
    let env = garage.env();
    let store = shardline_store::Store::open_with(&garage.url("root"), &env).expect("open");
    conformance::run(&store).await;

    // Bad credentials are reported as such, naming the URL, without long retries.
    let mut bad = env.clone();
    bad.push(("AWS_SECRET_ACCESS_KEY", "0".repeat(64)));
    let store = shardline_store::Store::open_with(&garage.url("root"), &bad).expect("open");
    let err = store.list_level("").await.expect_err("bad secret");
    assert!(
        matches!(err, shardline_store::Error::Denied { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("s3://conformance/root/"), "{err}");
}
