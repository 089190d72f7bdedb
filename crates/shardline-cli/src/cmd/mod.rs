//! One module per subcommand: flags, their validation, and the call into the library.

pub mod bench;
pub mod bench_serve;
pub mod datagen;
pub mod evaluate;
pub mod manifest;
pub mod model;
pub mod process;
pub mod quickstart;
pub mod serve;
pub mod train;
pub mod train_script;
pub mod transform;

use anyhow::{Context, Result};
use shardline_store::Store;

/// Reads and parses a JSON file of a step's output; `what` says which input it belongs to and
/// starts the error message (e.g. "train: --data must be the output of `shardline process`").
pub async fn read_json<T: serde::de::DeserializeOwned>(
    store: &Store,
    key: &str,
    what: &str,
) -> Result<T> {
    let bytes = store
        .get(key)
        .await
        .with_context(|| format!("{what}; reading {}", store.uri_of(key)))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{what}: {} is not valid", store.uri_of(key)))
}
