//! The conformance suite on the in-memory store.

mod conformance;

#[tokio::test]
async fn memory_store_conforms() {
    let store = shardline_store::Store::open("memory://conformance/root").expect("open");
    conformance::run(&store).await;
}
