//! The endpoint as one call: [`run`] loads a model (a directory or `model.tar.gz` from any
//! store), starts its model threads and serves it over HTTP until `stop` resolves, answering every
//! request in flight before it returns.

use std::net::SocketAddr;

use crate::{ClassifierOptions, Error, ImageClassifier, ModelFiles, Server, ServerConfig};

/// An endpoint. [`Default`] holds the defaults; `model` has none.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// The model's URL (a registered `NAME:VERSION` is resolved by the caller).
    pub model: String,
    /// The address to listen on.
    pub host: String,
    /// The port to listen on (0: any free port).
    pub port: u16,
    /// The server's settings: name, version, limits, batching.
    pub server: ServerConfig,
    /// The model's options (the device among them).
    pub classifier: ClassifierOptions,
}

impl Default for EndpointConfig {
    fn default() -> EndpointConfig {
        EndpointConfig {
            model: String::new(),
            host: "127.0.0.1".into(),
            port: 8080,
            server: ServerConfig::default(),
            classifier: ClassifierOptions::default(),
        }
    }
}

/// What [`run`] tells its caller once the endpoint listens.
#[derive(Debug, Clone)]
pub struct Listening {
    /// The address it listens on.
    pub address: SocketAddr,
    /// The model's name in the v2 API.
    pub name: String,
    /// The classes the model knows.
    pub classes: usize,
}

/// Serves `config.model` until `stop` resolves; `ready` is called once it listens.
pub async fn run(
    config: &EndpointConfig,
    ready: impl FnOnce(&Listening),
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<crate::Stopped, Error> {
    let files = ModelFiles::load(&config.model).await?;
    shardline_train::device::by_name(&config.classifier.device)?;
    let handler = ImageClassifier::new(files, config.classifier.clone());
    let classes = handler.classes().len();
    let server = Server::start(handler, config.server.clone())?;
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port))
        .await
        .map_err(|source| Error::Io {
            what: format!(
                "listening on {}:{} (`host`, `port`)",
                config.host, config.port
            ),
            source,
        })?;
    let address = listener.local_addr().map_err(|source| Error::Io {
        what: "reading the listening address".into(),
        source,
    })?;
    ready(&Listening {
        address,
        name: config.server.name.clone(),
        classes,
    });
    let limits = config.server.connections.clone();
    crate::serve(listener, crate::app(server), limits, stop).await
}
