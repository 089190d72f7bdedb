//! The HTTP endpoint (axum): SageMaker hosting (`/ping`, `/invocations`,
//! `/execution-parameters`), the Open Inference Protocol v2 REST API (KServe), and Prometheus
//! `/metrics`. Errors are answered as `{"error": "..."}` on both protocols.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::Deserialize;

use crate::batcher::{Arrival, BatchConfig, Batcher, Pending};
use crate::conn::ConnectionLimits;
use crate::inference::{Answer, Inference, Request, Tensor};
use crate::metrics::Metrics;
use crate::{Error, InferenceError};

/// Settings of a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The model's name in the v2 API (`/v2/models/{name}`).
    pub name: String,
    /// The model's version in the v2 metadata.
    pub version: String,
    /// The largest request body accepted, in bytes; larger ones get 413.
    pub body_limit: usize,
    /// How long a request may wait for its prediction (queue and model); then 504.
    pub timeout: Duration,
    /// The batcher's settings.
    pub batch: BatchConfig,
    /// Timeouts and the number of open connections.
    pub connections: ConnectionLimits,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            name: "model".into(),
            version: "1".into(),
            body_limit: 6 * 1024 * 1024,
            timeout: Duration::from_secs(60),
            batch: BatchConfig::default(),
            connections: ConnectionLimits::default(),
        }
    }
}

/// Bodies above this size are decoded on a blocking thread, so that a large JPEG does not hold
/// up the runtime's worker; small ones (the usual case) are decoded in place.
const INLINE_DECODE: usize = 64 * 1024;

/// A running model behind its batcher, with its metrics: what the routes share.
pub struct Server<I: Inference> {
    handler: Arc<I>,
    batcher: Batcher<I>,
    metrics: Arc<Metrics>,
    config: ServerConfig,
    /// Permits for decoding on blocking threads, one per core.
    decoders: tokio::sync::Semaphore,
}

impl<I: Inference> Server<I> {
    /// Starts the model threads (building the model on each) and returns the server.
    pub fn start(handler: I, config: ServerConfig) -> Result<Arc<Server<I>>, Error> {
        if config.body_limit == 0 || config.timeout.is_zero() {
            return Err(Error::BadConfig(
                "`body_limit` and `timeout_ms` must be positive".into(),
            ));
        }
        config.connections.check()?;
        let handler = Arc::new(handler);
        let metrics = Arc::new(Metrics::new());
        let batcher = Batcher::start(handler.clone(), config.batch, metrics.clone())?;
        Ok(Arc::new(Server {
            handler,
            batcher,
            metrics,
            config,
            decoders: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
        }))
    }

    /// The inference hooks.
    pub fn handler(&self) -> &I {
        &self.handler
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The settings.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Whether the model threads are running.
    pub fn ready(&self) -> bool {
        self.batcher.ready()
    }

    /// One input through the batching queue to the model and back, within the timeout. Batch
    /// transform calls this too, so it predicts exactly as the endpoint does.
    pub async fn predict(&self, input: I::Input) -> Result<I::Output, InferenceError> {
        let pending = self.batcher.submit(input)?;
        self.wait(pending).await
    }

    /// [`Server::predict`] for a request announced by `arrival` when it came in: the
    /// announcement ends once the input is queued.
    async fn predict_arriving(
        &self,
        input: I::Input,
        arrival: Arrival,
    ) -> Result<I::Output, InferenceError> {
        let pending = self.batcher.submit(input);
        drop(arrival);
        self.wait(pending?).await
    }

    async fn wait(&self, pending: Pending<I::Output>) -> Result<I::Output, InferenceError> {
        match tokio::time::timeout(self.config.timeout, pending).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(InferenceError::internal("the model thread stopped")),
            Err(_) => Err(InferenceError {
                status: 504,
                message: format!(
                    "no prediction within {} ms (queue and model); retry, lower the load or raise `timeout_ms`",
                    self.config.timeout.as_millis()
                ),
            }),
        }
    }

    /// Runs the input hook, on a blocking thread for large bodies.
    async fn decode(&self, body: Bytes, content_type: String) -> Result<I::Input, InferenceError> {
        let handler = self.handler.clone();
        self.off_runtime(body.len(), move || {
            handler.input(Request {
                body: &body,
                content_type: &content_type,
            })
        })
        .await
    }

    /// Runs `work` (decoding a body of `size` bytes) in place when it is small, else on a
    /// blocking thread, never more of those at once than there are cores: the runtime's workers
    /// only move bytes, so health checks and metrics answer at once however busy decoding is.
    async fn off_runtime<T: Send + 'static>(
        &self,
        size: usize,
        work: impl FnOnce() -> Result<T, InferenceError> + Send + 'static,
    ) -> Result<T, InferenceError> {
        if size <= INLINE_DECODE {
            return work();
        }
        let _permit = self
            .decoders
            .acquire()
            .await
            .map_err(|_| InferenceError::internal("the server is stopping"))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|_| InferenceError::internal("decoding the request failed (panicked)"))?
    }
}

/// The router of a server; serve it with [`serve`] (or drive it in tests with `oneshot`).
pub fn app<I: Inference>(server: Arc<Server<I>>) -> Router {
    let body_limit = server.config.body_limit;
    let metrics = server.metrics.clone();
    let bodies = (body_limit, server.config.connections.body_timeout);
    Router::new()
        .route("/ping", get(ping::<I>))
        .route("/invocations", post(invocations::<I>))
        .route("/execution-parameters", get(execution_parameters::<I>))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready::<I>))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{model}", get(model_metadata::<I>))
        .route("/v2/models/{model}/ready", get(model_ready::<I>))
        .route("/v2/models/{model}/infer", post(infer::<I>))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_metadata::<I>),
        )
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready::<I>),
        )
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer::<I>),
        )
        .route("/metrics", get(render_metrics::<I>))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(bodies, read_body))
        .layer(middleware::from_fn_with_state(metrics, track))
        .with_state(server)
}

/// Reads a request's whole body before the route sees it, within the body timeout (408 for a
/// client that stops sending) and the size limit (413), so that no handler waits on a slow client.
async fn read_body(
    State((limit, timeout)): State<(usize, Duration)>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let collect = async {
        let mut stream = body.into_data_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                InferenceError::bad_request(format!("the request body could not be read: {e}"))
            })?;
            if bytes.len() + chunk.len() > limit {
                return Err(InferenceError {
                    status: 413,
                    message: format!(
                        "the request body is larger than the limit of {limit} bytes; send a smaller payload or raise `body_limit`"
                    ),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    match tokio::time::timeout(timeout, collect).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(
                parts,
                axum::body::Body::from(bytes),
            ))
            .await
        }
        Ok(Err(e)) => failure(e),
        Err(_) => failure(InferenceError {
            status: 408,
            message: format!(
                "the request body did not arrive within {} ms; send it at once or raise `body_timeout_ms`",
                timeout.as_millis()
            ),
        }),
    }
}

/// Records every request's route, status and latency.
async fn track(
    State(metrics): State<Arc<Metrics>>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    metrics.observe(
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// `{"error": message}` with the error's status.
fn failure(e: InferenceError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        axum::Json(serde_json::json!({ "error": e.message })),
    )
        .into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// A body that could not be read: over the limit (413) or cut off.
fn body_failure(rejection: BytesRejection, limit: usize) -> InferenceError {
    let status = rejection.status().as_u16();
    if status == 413 {
        InferenceError {
            status,
            message: format!(
                "the request body is larger than the limit of {limit} bytes; send a smaller payload or raise `body_limit`"
            ),
        }
    } else {
        InferenceError {
            status,
            message: format!(
                "the request body could not be read: {}",
                rejection.body_text()
            ),
        }
    }
}

fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

async fn not_found() -> Response {
    failure(InferenceError {
        status: 404,
        message: "no such route; the endpoint serves /ping, /invocations, /metrics and /v2/..."
            .into(),
    })
}

async fn ping<I: Inference>(State(server): State<Arc<Server<I>>>) -> StatusCode {
    if server.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn execution_parameters<I: Inference>(
    State(server): State<Arc<Server<I>>>,
) -> axum::Json<serde_json::Value> {
    let c = &server.config;
    axum::Json(serde_json::json!({
        "MaxConcurrentTransforms": c.batch.max_batch * c.batch.workers,
        "BatchStrategy": "SINGLE_RECORD",
        "MaxPayloadInMB": (c.body_limit / (1024 * 1024)).max(1),
    }))
}

async fn invocations<I: Inference>(
    State(server): State<Arc<Server<I>>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let answer = Answer {
        accept: headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        params,
    };
    let result = async {
        let arrival = server.batcher.arrival();
        let body = body.map_err(|r| body_failure(r, server.config.body_limit))?;
        let input = server.decode(body, media_type(&headers)).await?;
        let output = server.predict_arriving(input, arrival).await?;
        server.handler.output(output, &answer)
    }
    .await;
    match result {
        Ok(reply) => ([(header::CONTENT_TYPE, reply.content_type)], reply.body).into_response(),
        Err(e) => failure(e),
    }
}

async fn live() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "live": true }))
}

async fn ready<I: Inference>(State(server): State<Arc<Server<I>>>) -> Response {
    let ready = server.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(serde_json::json!({ "ready": ready }))).into_response()
}

async fn server_metadata() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "name": "shardline",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
    }))
}

/// A model path's parameters: `{model}`, and `{version}` on the versioned routes.
#[derive(Debug, Deserialize)]
struct ModelPath {
    model: String,
    version: Option<String>,
}

/// The served model (and version), or 404 naming the one that is.
fn check_model<I: Inference>(server: &Server<I>, path: &ModelPath) -> Result<(), InferenceError> {
    let c = &server.config;
    if path.model != c.name {
        return Err(InferenceError {
            status: 404,
            message: format!(
                "model {:?} is not served here; this server serves {:?}",
                path.model, c.name
            ),
        });
    }
    match &path.version {
        Some(v) if *v != c.version => Err(InferenceError {
            status: 404,
            message: format!(
                "model {:?} has no version {v:?} here; this server serves version {:?}",
                c.name, c.version
            ),
        }),
        _ => Ok(()),
    }
}

async fn model_metadata<I: Inference>(
    State(server): State<Arc<Server<I>>>,
    Path(model): Path<ModelPath>,
) -> Response {
    if let Err(e) = check_model(&server, &model) {
        return failure(e);
    }
    let (inputs, outputs) = server.handler.signature();
    axum::Json(serde_json::json!({
        "name": server.config.name,
        "versions": [server.config.version],
        "platform": "shardline_burn",
        "inputs": inputs,
        "outputs": outputs,
    }))
    .into_response()
}

async fn model_ready<I: Inference>(
    State(server): State<Arc<Server<I>>>,
    Path(model): Path<ModelPath>,
) -> Response {
    if let Err(e) = check_model(&server, &model) {
        return failure(e);
    }
    ready(State(server)).await
}

/// A v2 inference request. `parameters` are accepted and ignored; `outputs`, when given, must
/// name outputs the model has (every output is answered either way: this model has one).
#[derive(Debug, Deserialize)]
struct InferRequest {
    id: Option<String>,
    inputs: Vec<InferInput>,
    #[serde(default)]
    outputs: Vec<RequestedOutput>,
}

#[derive(Debug, Deserialize)]
struct RequestedOutput {
    name: String,
}

#[derive(Debug, Deserialize)]
struct InferInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: Flat,
}

/// Tensor data, flat or nested (the v2 protocol allows both), flattened row-major as it is
/// parsed, without an intermediate JSON tree.
#[derive(Debug)]
struct Flat(Vec<f32>);

impl<'de> Deserialize<'de> for Flat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Flat, D::Error> {
        struct Visit<'a>(&'a mut Vec<f32>);
        impl<'de> serde::de::DeserializeSeed<'de> for Visit<'_> {
            type Value = ();
            fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                d.deserialize_any(self)
            }
        }
        impl<'de> serde::de::Visitor<'de> for Visit<'_> {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("numbers, or nested lists of numbers")
            }
            fn visit_f64<E>(self, v: f64) -> Result<(), E> {
                self.0.push(v as f32);
                Ok(())
            }
            fn visit_i64<E>(self, v: i64) -> Result<(), E> {
                self.0.push(v as f32);
                Ok(())
            }
            fn visit_u64<E>(self, v: u64) -> Result<(), E> {
                self.0.push(v as f32);
                Ok(())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                while seq.next_element_seed(Visit(&mut *self.0))?.is_some() {}
                Ok(())
            }
        }
        let mut out = Vec::new();
        serde::de::DeserializeSeed::deserialize(Visit(&mut out), d)?;
        Ok(Flat(out))
    }
}

/// Checks a request's tensor names against the model's signature: every input is one the model
/// takes, and every requested output one it gives.
fn check_names(
    request: &InferRequest,
    (inputs, outputs): (Vec<crate::TensorSpec>, Vec<crate::TensorSpec>),
) -> Result<(), InferenceError> {
    let names = |specs: &[crate::TensorSpec]| {
        specs
            .iter()
            .map(|s| format!("{:?}", s.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for input in &request.inputs {
        if !inputs.iter().any(|s| s.name == input.name) {
            return Err(InferenceError::bad_request(format!(
                "input {:?} is not an input of this model; it takes {}",
                input.name,
                names(&inputs)
            )));
        }
    }
    for output in &request.outputs {
        if !outputs.iter().any(|s| s.name == output.name) {
            return Err(InferenceError::bad_request(format!(
                "output {:?} is not an output of this model; it gives {}",
                output.name,
                names(&outputs)
            )));
        }
    }
    Ok(())
}

async fn infer<I: Inference>(
    State(server): State<Arc<Server<I>>>,
    Path(model): Path<ModelPath>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut id = None;
    let result = async {
        let arrival = server.batcher.arrival();
        check_model(&server, &model)?;
        let body = body.map_err(|r| body_failure(r, server.config.body_limit))?;
        let handler = server.handler.clone();
        let (request_id, input) = server
            .off_runtime(body.len(), move || {
                let request: InferRequest = serde_json::from_slice(&body).map_err(|e| {
                    InferenceError::bad_request(format!(
                        "the body is not a v2 inference request ({{\"inputs\": [{{\"name\", \"shape\", \"datatype\", \"data\"}}]}}): {e}"
                    ))
                })?;
                check_names(&request, handler.signature())?;
                let tensors = request
                    .inputs
                    .into_iter()
                    .map(|i| Tensor {
                        name: i.name,
                        shape: i.shape,
                        datatype: i.datatype,
                        data: i.data.0,
                    })
                    .collect();
                Ok((request.id, handler.input_tensors(tensors)?))
            })
            .await?;
        id = request_id;
        let output = server.predict_arriving(input, arrival).await?;
        server.handler.output_tensors(output)
    }
    .await;
    match result {
        Ok(outputs) => {
            let mut answer = serde_json::json!({
                "model_name": server.config.name,
                "model_version": server.config.version,
                "outputs": outputs,
            });
            if let Some(id) = id {
                answer["id"] = serde_json::Value::String(id);
            }
            axum::Json(answer).into_response()
        }
        Err(e) => failure(e),
    }
}

async fn render_metrics<I: Inference>(State(server): State<Arc<Server<I>>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        server.metrics.render(),
    )
        .into_response()
}
