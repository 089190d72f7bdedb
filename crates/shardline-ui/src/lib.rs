//! Shardline's dashboard: a read-only view of the execution store in the browser.
//!
//! [`serve`] answers HTTP on loopback with pages rendered on the server ([`pages`], maud, which
//! escapes every value it interpolates): the executions, one execution's DAG laid out in Rust
//! ([`dag`]), a step's instance logs read a byte range at a time ([`logs`]), training curves
//! ([`chart`]), the registry's models with their confusion matrices, an artifact's lineage
//! neighbourhood, and two executions compared. A small script of this crate's own
//! (`assets/app.js`) applies one Server-Sent Events stream per page while an execution runs.
//! [`export`] writes the same pages as static files. Everything is read through [`source`], by
//! ids the store resolves; [`http`] holds the safety rules (GET and HEAD only, the Host check,
//! the Content-Security-Policy).

pub mod chart;
pub mod dag;
pub mod export;
pub mod http;
pub mod logs;
pub mod pages;
pub mod source;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use export::export;
pub use http::app;
pub use source::Source;

/// Why the dashboard failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The execution store could not be read.
    #[error(transparent)]
    Db(#[from] shardline_pipeline::db::DbError),
    /// A store named by the execution store (a model's metrics) could not be read.
    #[error(transparent)]
    Store(#[from] shardline_store::Error),
    /// A registry could not be read.
    #[error(transparent)]
    Registry(#[from] shardline_registry::Error),
    /// What a request named is not in the store.
    #[error("not found: {0}")]
    NotFound(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The address could not be bound.
    #[error("cannot listen on {address}: {source}; pick another --port or --host")]
    Bind {
        /// What was asked for.
        address: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What [`serve`] serves and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// The host to bind (127.0.0.1 by default); requests must name it, `localhost` or
    /// `127.0.0.1` in their Host header.
    pub host: String,
    /// The port (0: any free one).
    pub port: u16,
    /// The state directory whose execution store is shown.
    pub state: PathBuf,
    /// Registries to show beside those the store's register steps name.
    pub registries: Vec<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            host: "127.0.0.1".into(),
            port: 8081,
            state: PathBuf::from(".shardline"),
            registries: Vec::new(),
        }
    }
}

/// Serves the dashboard until `stop` completes (then at once); `ready` is called with the bound address once
/// it accepts connections.
pub async fn serve(
    options: &Options,
    ready: impl FnOnce(SocketAddr),
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let source = Arc::new(Source::open(&options.state, options.registries.clone())?);
    let address = format!("{}:{}", options.host, options.port);
    let bind_error = |source| Error::Bind {
        address: address.clone(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    let router = app(source, &options.host, bound.port());
    ready(bound);
    // Stopping drops open connections at once: an event stream of a running execution would
    // otherwise hold a graceful shutdown until the execution ends, and nothing here writes.
    tokio::select! {
        served = axum::serve(listener, router) => served.map_err(bind_error),
        () = stop => Ok(()),
    }
}
