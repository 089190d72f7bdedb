//! `shardline serve`: a trained model behind HTTP, speaking SageMaker hosting (`/ping`,
//! `/invocations`) and KServe v2 (`/v2/...`), with dynamic batching and Prometheus metrics.

use std::time::Duration;

use anyhow::{Context, Result};
use shardline_registry::{Reference, Registry};
use shardline_serve::endpoint::{self, EndpointConfig, Listening};
use shardline_serve::{BatchConfig, ClassifierOptions, ConnectionLimits, ServerConfig};

use crate::progress::Ui;

/// Flags of `shardline serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The model: a directory written by `shardline train`, a model.tar.gz (local or on any
    /// store), or a registered NAME:VERSION / NAME:latest.
    #[arg(long, value_name = "URL")]
    pub model: String,
    /// The registry for NAME:VERSION models (default: $SHARDLINE_REGISTRY, else
    /// ~/.shardline/registry).
    #[arg(long, value_name = "URL")]
    pub registry: Option<String>,
    /// The address to listen on. 127.0.0.1 answers this machine only; 0.0.0.0 everyone.
    #[arg(long, default_value_t = EndpointConfig::default().host)]
    pub host: String,
    /// The port (SageMaker's is 8080; 0 picks a free one, printed at start).
    #[arg(long, default_value_t = EndpointConfig::default().port)]
    pub port: u16,
    /// The most requests gathered into one model call (1 turns batching off).
    #[arg(long, default_value_t = BatchConfig::default().max_batch)]
    pub max_batch: usize,
    /// How long the first request of a batch waits for others, in milliseconds.
    #[arg(long, default_value_t = BatchConfig::default().max_delay.as_millis() as u64)]
    pub max_delay_ms: u64,
    /// When to wait for others: `adaptive` skips the delay under light load (a model thread's
    /// previous batch held one request); `delay` always waits up to --max-delay-ms.
    #[arg(long, value_enum, default_value_t = Batching::Adaptive)]
    pub batching: Batching,
    /// Requests that may wait for the model; beyond that the server answers 429 at once.
    #[arg(long, default_value_t = BatchConfig::default().queue)]
    pub queue: usize,
    /// Model threads, each with its own copy of the model.
    #[arg(long, default_value_t = BatchConfig::default().workers)]
    pub workers: usize,
    /// How long a request may wait for its prediction before a 504, in milliseconds.
    #[arg(long, default_value_t = ServerConfig::default().timeout.as_millis() as u64)]
    pub timeout_ms: u64,
    /// The largest request body, in bytes (SageMaker's limit is 6 MB); larger ones get 413.
    #[arg(long, default_value_t = ServerConfig::default().body_limit)]
    pub body_limit: usize,
    /// How long a client may take to send a request's headers (and how long an idle keep-alive
    /// connection stays open), in milliseconds.
    #[arg(long, default_value_t = ConnectionLimits::default().header_timeout.as_millis() as u64)]
    pub header_timeout_ms: u64,
    /// How long a client may take to send a request's body before a 408, in milliseconds.
    #[arg(long, default_value_t = ConnectionLimits::default().body_timeout.as_millis() as u64)]
    pub body_timeout_ms: u64,
    /// Connections served at once; more wait in the kernel's accept queue.
    #[arg(long, default_value_t = ConnectionLimits::default().max_connections)]
    pub max_connections: usize,
    /// On SIGTERM, how long requests already sent may take to be answered, in milliseconds.
    #[arg(long, default_value_t = ConnectionLimits::default().grace.as_millis() as u64)]
    pub grace_ms: u64,
    /// The device of the model threads: cpu, or cuda / wgpu in a build with that feature.
    #[arg(long, default_value_t = ClassifierOptions::default().device)]
    pub device: String,
    /// The model's name in the KServe v2 paths (default: the registered name, else "model").
    #[arg(long)]
    pub name: Option<String>,
}

/// Where a `--model` argument points, and the name and version it gives the model.
pub(crate) async fn locate(
    model: &str,
    registry: Option<&str>,
) -> Result<(String, String, String)> {
    if Reference::looks_like(model) {
        let reference = Reference::parse(model)?;
        let url = registry
            .map(str::to_string)
            .unwrap_or_else(super::model::default_registry);
        let registry = Registry::open(&url).with_context(|| format!("serve: --registry {url}"))?;
        let (record, uri) = registry.resolve(&reference).await?;
        return Ok((uri, record.name, record.version.to_string()));
    }
    Ok((model.to_string(), "model".into(), "1".into()))
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
pub(crate) async fn stop_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// Loads the model and serves until stopped; requests in flight are answered before it exits.
pub async fn run(args: Args, ui: &Ui) -> Result<()> {
    let (model, registered, version) = locate(&args.model, args.registry.as_deref()).await?;
    let config = EndpointConfig {
        model,
        host: args.host.clone(),
        port: args.port,
        server: ServerConfig {
            name: args.name.clone().unwrap_or(registered),
            version,
            body_limit: args.body_limit,
            timeout: Duration::from_millis(args.timeout_ms),
            batch: BatchConfig {
                max_batch: args.max_batch,
                max_delay: Duration::from_millis(args.max_delay_ms),
                queue: args.queue,
                workers: args.workers,
                adaptive: args.batching == Batching::Adaptive,
            },
            connections: ConnectionLimits {
                header_timeout: Duration::from_millis(args.header_timeout_ms),
                body_timeout: Duration::from_millis(args.body_timeout_ms),
                max_connections: args.max_connections,
                grace: Duration::from_millis(args.grace_ms),
            },
        },
        classifier: ClassifierOptions {
            device: args.device.clone(),
            ..ClassifierOptions::default()
        },
    };
    let ready = |l: &Listening| {
        ui.say(format!(
            "serve: {} ({} classes) from {} on http://{} (SageMaker: /ping, /invocations; KServe v2: /v2/models/{}; /metrics); batches of up to {} within {} ms ({})",
            l.name,
            l.classes,
            config.model,
            l.address,
            l.name,
            args.max_batch,
            args.max_delay_ms,
            match args.batching {
                Batching::Adaptive => "adaptive: no wait under light load",
                Batching::Delay => "always waiting",
            }
        ))
    };
    let stopped = endpoint::run(&config, ready, stop_signal()).await?;
    if stopped.cut == 0 {
        ui.say(format!(
            "serve: stopped; every request sent was answered ({} connections taken from the accept queue after the signal)",
            stopped.drained
        ));
    } else {
        anyhow::bail!(
            "serve: stopped after the grace period of {} ms with {} connections still busy (closed unanswered); raise --grace-ms",
            args.grace_ms,
            stopped.cut
        );
    }
    Ok(())
}

/// How the batcher waits for company.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Batching {
    /// Wait up to --max-delay-ms only when requests overlap.
    Adaptive,
    /// Always wait up to --max-delay-ms.
    Delay,
}
