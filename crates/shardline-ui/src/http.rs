//! The routes and the rules every response follows: only GET and HEAD (405 otherwise, before
//! anything else is looked at), a Host header that names this server (421 otherwise: a page of
//! another site reaching it through DNS rebinding names its own host), and on every response the
//! Content-Security-Policy (no inline script or style), `nosniff` and `no-referrer`. Pages are
//! addressed by ids that the store resolves; a path or id it does not know is a 404.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use maud::Markup;
use serde::Deserialize;

use crate::pages::{self, Ctx};
use crate::source::Source;
use crate::{Error, logs};

/// The Content-Security-Policy of every response (contracts §12).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The script and the style sheet, served from the binary.
pub const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../assets/app.css"),
    ),
];

#[derive(Clone)]
struct App {
    source: Arc<Source>,
    hosts: Arc<Vec<String>>,
}

/// The Host header values a request may carry for a server bound to `host` on `port`.
pub fn allowed_hosts(host: &str, port: u16) -> Vec<String> {
    let ip = host.parse::<std::net::IpAddr>().ok();
    // An IPv6 address is bracketed in a Host header: [::1]:8081.
    let mut names = vec![match ip {
        Some(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host.to_ascii_lowercase(),
    }];
    let loopback =
        host == "localhost" || ip.is_some_and(|ip| ip.is_loopback() || ip.is_unspecified());
    if loopback {
        names.extend(["localhost".into(), "127.0.0.1".into(), "[::1]".into()]);
    }
    names.sort();
    names.dedup();
    names.into_iter().map(|n| format!("{n}:{port}")).collect()
}

/// The dashboard as a Router over `source`, for a server bound to `host` on `port` (the names
/// the Host header may carry).
pub fn app(source: Arc<Source>, host: &str, port: u16) -> Router {
    let state = App {
        source,
        hosts: Arc::new(allowed_hosts(host, port)),
    };
    let routes = Router::new()
        .route("/", get(index))
        .route("/executions/{id}", get(execution))
        .route("/executions/{id}/events", get(execution_events))
        .route("/executions/{id}/training", get(training))
        .route("/executions/{id}/data", get(data))
        .route("/executions/{id}/steps/{step}/logs", get(step_logs))
        .route("/executions/{id}/steps/{step}/logs/events", get(log_events))
        .route("/models", get(models))
        .route("/models/{registry}/{name}/{version}", get(model))
        .route("/lineage", get(lineage))
        .route("/compare", get(compare))
        .route("/assets/{name}", get(asset))
        .fallback(not_found)
        .with_state(state.clone());
    // The outermost layer is added last: headers on everything, then the method, then the host.
    Router::new()
        .fallback_service(routes)
        .layer(middleware::from_fn_with_state(state, check_host))
        .layer(middleware::from_fn(check_method))
        .layer(middleware::from_fn(safety_headers))
}

async fn safety_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn check_method(request: Request, next: Next) -> Response {
    if request.method() == Method::GET || request.method() == Method::HEAD {
        next.run(request).await
    } else {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
            "the dashboard is read-only: GET and HEAD only\n",
        )
            .into_response()
    }
}

async fn check_host(State(app): State<App>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    match host {
        None => (StatusCode::BAD_REQUEST, "a Host header is required\n").into_response(),
        Some(h) if app.hosts.contains(&h) => next.run(request).await,
        Some(_) => (
            StatusCode::MISDIRECTED_REQUEST,
            format!("this dashboard answers only to {}\n", app.hosts.join(", ")),
        )
            .into_response(),
    }
}

/// An error as a page: 404 for what the store does not know, 500 otherwise.
struct Fail(Error);

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail(e)
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        let (code, title) = match self.0 {
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "Not found"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "Error"),
        };
        let page = pages::problem(&Ctx::SERVED, title, &self.0.to_string());
        (code, Html(page.into_string())).into_response()
    }
}

type Page = Result<Html<String>, Fail>;

fn html(m: Markup) -> Page {
    Ok(Html(m.into_string()))
}

async fn not_found() -> Fail {
    Fail(Error::NotFound("no such page".into()))
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, text)) => ([(header::CONTENT_TYPE, *kind)], *text).into_response(),
        None => Fail(Error::NotFound(format!("no asset {name:?}"))).into_response(),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    pipeline: Option<String>,
    status: Option<String>,
}

async fn index(State(app): State<App>, Query(q): Query<ListQuery>) -> Page {
    html(render_index(
        &app.source,
        &Ctx::SERVED,
        q.pipeline.as_deref(),
        q.status.as_deref(),
    )?)
}

/// The executions list.
pub(crate) fn render_index(
    source: &Source,
    ctx: &Ctx,
    pipeline: Option<&str>,
    status: Option<&str>,
) -> Result<Markup, Error> {
    let all = source.executions(None, None)?;
    let shown = source.executions(pipeline, status)?;
    Ok(pages::executions(ctx, &all, &shown, pipeline, status))
}

/// An execution with its steps, their dependencies and details.
fn run_of(source: &Source, id: &str) -> Result<pages::Run, Error> {
    let execution = source.execution(id)?;
    let (steps, deps) = source.graph(&execution)?;
    let details = details(source, &steps)?;
    Ok(pages::Run {
        execution,
        steps,
        deps,
        details,
    })
}

fn live_part(source: &Source, ctx: &Ctx, id: &str) -> Result<(Markup, bool), Error> {
    let run = run_of(source, id)?;
    Ok((
        pages::execution_live(ctx, &run),
        run.execution.shown_status() == "running",
    ))
}

fn details(
    source: &Source,
    steps: &[shardline_pipeline::db::StepRow],
) -> Result<Vec<pages::StepDetail>, Error> {
    steps
        .iter()
        .map(|s| {
            Ok(pages::StepDetail {
                attempts: source.db().attempts(&s.execution, &s.step)?,
                metrics: source.db().metrics(&s.execution, &s.step)?,
                has_logs: !source.db().logs(&s.execution, &s.step)?.is_empty(),
            })
        })
        .collect()
}

/// One execution's page.
pub(crate) fn render_execution(source: &Source, ctx: &Ctx, id: &str) -> Result<Markup, Error> {
    let run = run_of(source, id)?;
    let e = &run.execution;
    let all = source.executions(Some(&e.pipeline), None)?;
    let previous = all
        .iter()
        .filter(|o| o.started < e.started)
        .max_by(|a, b| a.started.total_cmp(&b.started));
    let outputs: Vec<(String, String)> = run
        .steps
        .iter()
        .flat_map(|s| {
            s.outputs
                .as_ref()
                .and_then(|o| o.as_object())
                .into_iter()
                .flat_map(|o| o.values())
                .filter_map(|v| v.as_str())
                .map(|uri| (s.step.clone(), uri.to_string()))
                .collect::<Vec<_>>()
        })
        .collect();
    let events = (e.shown_status() == "running")
        .then(|| format!("/executions/{}/events", pages::encode(&e.id)));
    Ok(pages::execution(ctx, &run, previous, events, &outputs))
}

async fn execution(State(app): State<App>, Path(id): Path<String>) -> Page {
    html(render_execution(&app.source, &Ctx::SERVED, &id)?)
}

/// While the execution runs, its page's live part whenever it changes; then one last update
/// and `end`, and the stream closes.
async fn execution_events(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Fail> {
    let (first, _) = live_part(&app.source, &Ctx::SERVED, &id)?;
    let update = |part: &str| Ok(Event::default().event("update").data(part));
    let end = || Ok(Event::default().event("end").data("ended"));
    let stream = futures::stream::unfold(Phase::Watching(first.into_string()), move |phase| {
        let source = app.source.clone();
        let id = id.clone();
        async move {
            match phase {
                Phase::Done => None,
                Phase::Last => Some((end(), Phase::Done)),
                Phase::Watching(last) => loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let Ok((part, running)) = live_part(&source, &Ctx::SERVED, &id) else {
                        return Some((end(), Phase::Done));
                    };
                    let part = part.into_string();
                    if !running {
                        return Some((update(&part), Phase::Last));
                    }
                    if part != last {
                        return Some((update(&part), Phase::Watching(part)));
                    }
                },
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Where an execution's event stream is.
enum Phase {
    /// The execution runs; the live part as last sent.
    Watching(String),
    /// The last update was sent; `end` comes next.
    Last,
    /// The stream is over.
    Done,
}

#[derive(Deserialize)]
struct LogQuery {
    attempt: Option<i64>,
    page: Option<u64>,
    view: Option<String>,
}

/// A step's logs page.
pub(crate) fn render_logs(
    source: &Source,
    ctx: &Ctx,
    id: &str,
    step: &str,
    attempt: Option<i64>,
    page: u64,
    view: &str,
) -> Result<Markup, Error> {
    let e = source.execution(id)?;
    let row = source.step(&e, step)?;
    let crate::source::Logs {
        attempts,
        attempt: chosen,
        files,
    } = source.logs(&e, step, attempt)?;
    let mut chunks = Vec::new();
    for (_, path) in &files {
        // A log not written yet (a step just started) reads as empty.
        chunks.push(logs::page(path, page).unwrap_or_default());
    }
    let instances: Vec<String> = files.iter().map(|(i, _)| i.clone()).collect();
    let flags = flags(source, &e.id, &row, chosen, &files)?;
    let live = matches!(row.status.as_str(), "running" | "pending")
        && chunks.iter().all(|c| c.end >= c.size)
        && view != "side";
    let events = live.then(|| {
        format!(
            "/executions/{}/steps/{}/logs/events?attempt={chosen}&from={}",
            pages::encode(&e.id),
            pages::encode(step),
            chunks
                .iter()
                .map(|c| c.end.to_string())
                .collect::<Vec<_>>()
                .join(",")
        )
    });
    Ok(pages::logs(
        ctx, &e, &row, &attempts, chosen, &instances, &flags, &chunks, page, view, events,
    ))
}

/// What to flag on each instance of an attempt: the one its error names as failed, and those
/// whose log kept growing well after the others' stopped (stragglers).
fn flags(
    source: &Source,
    execution: &str,
    row: &shardline_pipeline::db::StepRow,
    attempt: i64,
    files: &[(String, std::path::PathBuf)],
) -> Result<Vec<Vec<String>>, Error> {
    let error = source
        .db()
        .attempts(execution, &row.step)?
        .into_iter()
        .find(|(n, _, _)| *n == attempt)
        .and_then(|(_, _, error)| error)
        .or_else(|| row.reason.clone())
        .unwrap_or_default();
    let failed = logs::failed_instance(&error);
    let start = row.started.unwrap_or(0.0);
    let ends: Vec<f64> = files
        .iter()
        .map(|(_, path)| {
            std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(f64::NAN, |d| d.as_secs_f64() - start)
        })
        .collect();
    // Only instances' logs (algo-N) are compared; the step's own log ends with the step.
    let instance = |name: &str| name.starts_with("algo-");
    let timed: Vec<f64> = files
        .iter()
        .zip(&ends)
        .map(|((name, _), end)| if instance(name) { *end } else { f64::NAN })
        .collect();
    let slow = logs::stragglers(&timed, 5.0);
    Ok(files
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let mut notes = Vec::new();
            if failed == Some(name.as_str()) {
                notes.push(format!("{name} failed this attempt"));
            }
            if slow[i] && instance(name) {
                notes.push(format!(
                    "{name} straggled: its log last grew {:.0} s after the step started",
                    ends[i]
                ));
            }
            notes
        })
        .collect())
}

async fn step_logs(
    State(app): State<App>,
    Path((id, step)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> Result<Response, Fail> {
    let page = render_logs(
        &app.source,
        &Ctx::SERVED,
        &id,
        &step,
        q.attempt,
        q.page.unwrap_or(0),
        q.view.as_deref().unwrap_or("interleaved"),
    )?;
    // A finished step's logs no longer change: the browser keeps the page it was served.
    let e = app.source.execution(&id)?;
    let finished = !matches!(
        app.source.step(&e, &step)?.status.as_str(),
        "running" | "pending"
    );
    let cache = if finished {
        "private, max-age=86400"
    } else {
        "no-store"
    };
    Ok(([(header::CACHE_CONTROL, cache)], Html(page.into_string())).into_response())
}

#[derive(Deserialize)]
struct TailQuery {
    attempt: Option<i64>,
    from: Option<String>,
}

/// The lines each instance's log gains after the offsets in `from`, as rows to append, until
/// the step ends; then `end`.
async fn log_events(
    State(app): State<App>,
    Path((id, step)): Path<(String, String)>,
    Query(q): Query<TailQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Fail> {
    let e = app.source.execution(&id)?;
    app.source.step(&e, &step)?;
    let found = app.source.logs(&e, &step, q.attempt)?;
    let (attempt, files) = (found.attempt, found.files);
    let mut offsets: Vec<u64> = q
        .from
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(|o| o.parse().unwrap_or(0))
        .collect();
    offsets.resize(files.len(), 0);
    let stream = futures::stream::unfold((offsets, false), move |(mut offsets, ended)| {
        let source = app.source.clone();
        let (id, step) = (id.clone(), step.clone());
        async move {
            if ended {
                return None;
            }
            loop {
                // The files of this attempt, as the store lists them now (an instance may start
                // late); offsets follow the same order.
                let (files, running) = source
                    .execution(&id)
                    .and_then(|e| {
                        let row = source.step(&e, &step)?;
                        let files = source.logs(&e, &step, Some(attempt))?.files;
                        Ok((files, matches!(row.status.as_str(), "running" | "pending")))
                    })
                    .unwrap_or_default();
                offsets.resize(files.len().max(offsets.len()), 0);
                let mut fresh = Vec::new();
                for (i, (_, path)) in files.iter().enumerate() {
                    let chunk = logs::tail(path, offsets[i]).unwrap_or_default();
                    offsets[i] = chunk.end.max(offsets[i]);
                    fresh.push(chunk.lines);
                }
                if fresh.iter().any(|l| !l.is_empty()) {
                    let instances: Vec<String> = files.iter().map(|(i, _)| i.clone()).collect();
                    let rows = pages::log_rows(&instances, &logs::interleave(&fresh), true, &[]);
                    let event = Event::default().event("append").data(rows.into_string());
                    return Some((Ok(event), (offsets, false)));
                }
                if !running {
                    return Some((
                        Ok(Event::default().event("end").data("ended")),
                        (offsets, true),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[derive(Deserialize)]
struct TrainingQuery {
    with: Option<String>,
}

/// An execution's training curves, with `with`'s overlaid.
pub(crate) async fn render_training(
    source: &Source,
    ctx: &Ctx,
    id: &str,
    with: Option<&str>,
) -> Result<Markup, Error> {
    let e = source.execution(id)?;
    let runs = source.training(&e).await?;
    let other = match with {
        Some(w) => {
            let o = source.execution(w)?;
            let t = source.training(&o).await?;
            Some((o, t))
        }
        None => None,
    };
    let same = source.executions(Some(&e.pipeline), None)?;
    let candidates: Vec<&_> = same.iter().filter(|o| o.id != e.id).take(10).collect();
    Ok(pages::training(
        ctx,
        &e,
        &runs,
        other.as_ref().map(|(o, t)| (o, t.as_slice())),
        &candidates,
    ))
}

async fn training(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<TrainingQuery>,
) -> Page {
    html(render_training(&app.source, &Ctx::SERVED, &id, q.with.as_deref()).await?)
}

/// An execution's data page.
pub(crate) async fn render_data(source: &Source, ctx: &Ctx, id: &str) -> Result<Markup, Error> {
    let e = source.execution(id)?;
    let records = source.data(&e).await?;
    Ok(pages::data(ctx, &e, &records))
}

async fn data(State(app): State<App>, Path(id): Path<String>) -> Page {
    html(render_data(&app.source, &Ctx::SERVED, &id).await?)
}

async fn models(State(app): State<App>) -> Page {
    html(pages::models(&Ctx::SERVED, &app.source.models().await?))
}

/// One model version's page.
pub(crate) async fn render_model(
    source: &Source,
    ctx: &Ctx,
    registry: usize,
    name: &str,
    version: u64,
) -> Result<Markup, Error> {
    let (url, _) = source.registry(registry)?;
    let record = source.model(registry, name, version).await?;
    Ok(pages::model(ctx, &url, &record))
}

async fn model(
    State(app): State<App>,
    Path((registry, name, version)): Path<(usize, String, u64)>,
) -> Page {
    html(render_model(&app.source, &Ctx::SERVED, registry, &name, version).await?)
}

#[derive(Deserialize)]
struct LineageQuery {
    artifact: String,
    depth: Option<usize>,
}

async fn lineage(State(app): State<App>, Query(q): Query<LineageQuery>) -> Page {
    let depth = q.depth.unwrap_or(2).clamp(1, 10);
    html(render_lineage(
        &app.source,
        &Ctx::SERVED,
        &q.artifact,
        depth,
    )?)
}

#[derive(Deserialize)]
struct CompareQuery {
    a: String,
    b: String,
}

async fn compare(State(app): State<App>, Query(q): Query<CompareQuery>) -> Page {
    html(render_compare(&app.source, &Ctx::SERVED, &q.a, &q.b)?)
}

/// Two executions compared: parameters, each step's status and cache, metrics.
pub(crate) fn render_compare(
    source: &Source,
    ctx: &Ctx,
    a: &str,
    b: &str,
) -> Result<Markup, Error> {
    let side = |id: &str| -> Result<
        (
            shardline_pipeline::db::Execution,
            BTreeMap<_, _>,
            BTreeMap<_, _>,
        ),
        Error,
    > {
        let e = source.execution(id)?;
        let steps = source.db().steps_by_name(&e.id)?;
        let mut metrics = BTreeMap::new();
        for s in steps.keys() {
            for (k, v) in source.db().metrics(&e.id, s)? {
                metrics.insert((s.clone(), k), v);
            }
        }
        Ok((e, steps, metrics))
    };
    let (ea, sa, ma) = side(a)?;
    let (eb, sb, mb) = side(b)?;
    let a = pages::Side {
        execution: &ea,
        steps: sa,
        metrics: ma,
    };
    let b = pages::Side {
        execution: &eb,
        steps: sb,
        metrics: mb,
    };
    Ok(pages::compare(ctx, &a, &b))
}

/// An artifact's lineage page (a page saying no step run touched it, when none did).
pub(crate) fn render_lineage(
    source: &Source,
    ctx: &Ctx,
    artifact: &str,
    depth: usize,
) -> Result<Markup, Error> {
    let artifact = source.artifact(artifact)?;
    let edges = source.neighbourhood(&artifact, depth)?;
    Ok(pages::lineage(ctx, &artifact, depth, &edges))
}
