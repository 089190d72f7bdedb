//! The pages, rendered with maud: every interpolated string is HTML-escaped, and the only markup
//! embedded as it is is maud's own output (the SVG and rows this crate renders). A page is a pure
//! function of what [`crate::source`] read; links are made by [`Ctx`], which knows whether the
//! page is served or exported as a static file.

use std::collections::{BTreeMap, BTreeSet};

use maud::{DOCTYPE, Markup, html};
use shardline_pipeline::db::{Edge, Execution, StepRow};
use shardline_registry::Record;

use crate::chart::{Series, line_chart};
use crate::dag;
use crate::logs::Chunk;
use crate::source::{RegistryModels, Training};

/// A page a link can point at.
#[derive(Debug, Clone, Copy)]
pub enum Route<'a> {
    /// The executions list (with filters).
    Executions {
        /// Only this pipeline.
        pipeline: Option<&'a str>,
        /// Only this status.
        status: Option<&'a str>,
    },
    /// One execution.
    Execution(&'a str),
    /// One step's logs.
    Logs {
        /// The execution.
        execution: &'a str,
        /// The step.
        step: &'a str,
        /// The attempt (default the latest).
        attempt: Option<i64>,
        /// The page of the logs.
        page: u64,
        /// `interleaved` or `side`.
        view: &'a str,
    },
    /// An execution's training curves, maybe with another's overlaid.
    Training(&'a str, Option<&'a str>),
    /// An execution's data: class balance and the processing report.
    Data(&'a str),
    /// The registries' models.
    Models,
    /// One model version: registry index, name, version.
    Model(usize, &'a str, u64),
    /// An artifact's lineage at a depth.
    Lineage(&'a str, usize),
    /// Two executions compared.
    Compare(&'a str, &'a str),
    /// A file of `assets/`.
    Asset(&'a str),
}

/// How links are written: to the server's routes, or (exporting) to the static files relative
/// to the page being written, `depth` folders below the export's root.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    /// `Some(depth)` when exporting.
    pub export: Option<usize>,
}

/// `text` with every byte that is not a letter, a digit or one of `keep` written as `mark`
/// and two hex digits.
fn escape_bytes(text: &str, keep: &[u8], mark: char) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("{mark}{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a path segment or query value (everything but RFC 3986's unreserved
/// characters).
pub fn encode(text: &str) -> String {
    escape_bytes(text, b"-._~", '%')
}

/// A file name for an id: letters, digits, `-` and `_` kept, every other byte as `~XX` (no `%`,
/// `/` or `.`, so a browser reading the files from disk finds them as linked).
pub fn file_name(text: &str) -> String {
    escape_bytes(text, b"-_", '~')
}

impl Ctx {
    /// The served pages.
    pub const SERVED: Ctx = Ctx { export: None };

    /// Where `route` is, or `None` when an export does not include it.
    pub fn href(&self, route: Route<'_>) -> Option<String> {
        match self.export {
            None => Some(served(route)),
            Some(depth) => exported(route).map(|p| format!("{}{p}", "../".repeat(depth))),
        }
    }
}

fn served(route: Route<'_>) -> String {
    let query = |pairs: &[(&str, Option<String>)]| {
        let q: Vec<String> = pairs
            .iter()
            .filter_map(|(k, v)| Some(format!("{k}={}", encode(v.as_deref()?))))
            .collect();
        if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        }
    };
    match route {
        Route::Executions { pipeline, status } => format!(
            "/{}",
            query(&[
                ("pipeline", pipeline.map(str::to_string)),
                ("status", status.map(str::to_string))
            ])
        ),
        Route::Execution(id) => format!("/executions/{}", encode(id)),
        Route::Logs {
            execution,
            step,
            attempt,
            page,
            view,
        } => format!(
            "/executions/{}/steps/{}/logs{}",
            encode(execution),
            encode(step),
            query(&[
                ("attempt", attempt.map(|a| a.to_string())),
                ("page", (page > 0).then(|| page.to_string())),
                ("view", (view != "interleaved").then(|| view.to_string())),
            ])
        ),
        Route::Training(id, with) => format!(
            "/executions/{}/training{}",
            encode(id),
            query(&[("with", with.map(str::to_string))])
        ),
        Route::Data(id) => format!("/executions/{}/data", encode(id)),
        Route::Models => "/models".into(),
        Route::Model(r, name, v) => format!("/models/{r}/{}/{v}", encode(name)),
        Route::Lineage(artifact, depth) => format!(
            "/lineage{}",
            query(&[
                ("artifact", Some(artifact.to_string())),
                ("depth", Some(depth.to_string()))
            ])
        ),
        Route::Compare(a, b) => format!(
            "/compare{}",
            query(&[("a", Some(a.to_string())), ("b", Some(b.to_string()))])
        ),
        Route::Asset(name) => format!("/assets/{name}"),
    }
}

/// The static file of a route in an export, relative to its root.
pub fn exported(route: Route<'_>) -> Option<String> {
    Some(match route {
        Route::Executions {
            pipeline: None,
            status: None,
        } => "index.html".into(),
        Route::Execution(id) => format!("executions/{}.html", file_name(id)),
        Route::Logs {
            execution,
            step,
            attempt: None,
            page: 0,
            view: "interleaved",
        } => format!(
            "executions/{}/logs/{}.html",
            file_name(execution),
            file_name(step)
        ),
        Route::Training(id, None) => format!("executions/{}/training.html", file_name(id)),
        Route::Data(id) => format!("executions/{}/data.html", file_name(id)),
        Route::Models => "models.html".into(),
        Route::Model(r, name, v) => format!("models/{r}/{}/{v}.html", file_name(name)),
        Route::Asset(name) => format!("assets/{name}"),
        // An artifact's neighbourhood at the served default depth; URIs can be longer than a
        // file name may be, so the file is named by a hash of it.
        Route::Lineage(artifact, 2) => format!("lineage/{:016x}.html", fnv1a(artifact)),
        Route::Compare(a, b) => {
            format!("executions/{}/compare-{}.html", file_name(b), file_name(a))
        }
        _ => return None,
    })
}

/// 64-bit FNV-1a: a stable, dependency-free name for an exported lineage page.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A link, or the text alone where the export has no such page.
fn link(ctx: &Ctx, route: Route<'_>, text: &str) -> Markup {
    html! {
        @if let Some(href) = ctx.href(route) { a href=(href) { (text) } } @else { (text) }
    }
}

/// The page around a body. `events`: the URL of the page's one event stream (while an
/// execution runs), which `app.js` applies to the element with id `live`.
pub fn layout(ctx: &Ctx, title: &str, events: Option<String>, body: Markup) -> Markup {
    let events = events.filter(|_| ctx.export.is_none());
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · shardline" }
                @if let Some(css) = ctx.href(Route::Asset("app.css")) { link rel="stylesheet" href=(css); }
                @if let Some(js) = ctx.href(Route::Asset("app.js")) { script src=(js) defer {} }
            }
            body data-events=[events] {
                nav {
                    strong { "shardline" }
                    (link(ctx, Route::Executions { pipeline: None, status: None }, "Executions"))
                    (link(ctx, Route::Models, "Models"))
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// A page that says what went wrong (a 404's body).
pub fn problem(ctx: &Ctx, title: &str, message: &str) -> Markup {
    layout(ctx, title, None, html! { p class="problem" { (message) } })
}

/// Unix seconds as UTC time.
pub fn time(unix: f64) -> String {
    chrono::DateTime::from_timestamp_millis((unix * 1000.0) as i64)
        .map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

fn duration(started: Option<f64>, finished: Option<f64>) -> String {
    match (started, finished) {
        (Some(a), Some(b)) if b >= a => seconds(b - a),
        (Some(a), None) => format!("{} so far", seconds(shardline_pipeline::db::unix_now() - a)),
        _ => "-".into(),
    }
}

fn seconds(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

fn status(s: &str) -> Markup {
    html! { span class=(format!("status st-{s}")) { (s) } }
}

fn compact(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        serde_json::Value::Null => String::new(),
        v => v.to_string(),
    }
}

/// The executions list, filtered by `pipeline` and `status` (links, no forms: the CSP forbids
/// form submissions).
pub fn executions(
    ctx: &Ctx,
    all: &[Execution],
    shown: &[Execution],
    pipeline: Option<&str>,
    status_filter: Option<&str>,
) -> Markup {
    let pipelines: BTreeSet<&str> = all.iter().map(|e| e.pipeline.as_str()).collect();
    let statuses: BTreeSet<&str> = all.iter().map(|e| e.shown_status()).collect();
    // The execution before each one of the same pipeline, to compare with.
    let previous = |e: &Execution| {
        all.iter()
            .filter(|o| o.pipeline == e.pipeline && o.started < e.started)
            .max_by(|a, b| a.started.total_cmp(&b.started))
    };
    let body = html! {
        @if ctx.export.is_none() {
            p class="filters" {
                "pipeline: "
                (link(ctx, Route::Executions { pipeline: None, status: status_filter }, "all"))
                @for p in &pipelines { " " (link(ctx, Route::Executions { pipeline: Some(p), status: status_filter }, p)) }
                " · status: "
                (link(ctx, Route::Executions { pipeline, status: None }, "all"))
                @for s in &statuses { " " (link(ctx, Route::Executions { pipeline, status: Some(s) }, s)) }
            }
        }
        @if shown.is_empty() {
            p { "No execution matches." }
        } @else {
            table class="executions" {
                thead { tr { th { "execution" } th { "pipeline" } th { "parameters" } th { "status" } th { "started (UTC)" } th { "duration" } th {} } }
                tbody {
                    @for e in shown {
                        tr {
                            td { (link(ctx, Route::Execution(&e.id), &e.id)) }
                            td { (e.pipeline) }
                            td class="params" { (compact(&e.params)) }
                            td { (status(e.shown_status())) }
                            td { (time(e.started)) }
                            td { (duration(Some(e.started), e.finished)) }
                            td { @if let Some(p) = previous(e) { (link(ctx, Route::Compare(&p.id, &e.id), "compare with previous")) } }
                        }
                    }
                }
            }
        }
    };
    layout(ctx, "Executions", None, body)
}

/// What the execution page shows of each step besides its row.
pub struct StepDetail {
    /// Its attempts: (number, status, error).
    pub attempts: Vec<(i64, String, Option<String>)>,
    /// Its metrics.
    pub metrics: Vec<(String, f64)>,
    /// Whether it has logs (a condition or a skipped step has none): only then is it linked to
    /// its logs page, which an export writes only for such steps.
    pub has_logs: bool,
}

/// The cache outcome; the executor's reason already says `hit: ...` or why a miss missed.
fn cache_text(s: &StepRow) -> String {
    let reason = s.reason.as_deref().unwrap_or("");
    match s.cache.as_deref() {
        Some("hit") if reason.starts_with("hit") => reason.to_string(),
        Some("hit") => "cache hit".into(),
        Some("miss") if reason.starts_with("miss") => reason.to_string(),
        Some("miss") => "cache miss".into(),
        Some(other) => format!("cache {other}"),
        None => String::new(),
    }
}

/// An execution as its page shows it.
pub struct Run {
    /// The execution.
    pub execution: Execution,
    /// Its steps, in the definition's order.
    pub steps: Vec<StepRow>,
    /// For each step, the steps it depends on (indexes into `steps`).
    pub deps: Vec<Vec<usize>>,
    /// For each step, its attempts, metrics and whether it has logs.
    pub details: Vec<StepDetail>,
}

/// The DAG of an execution's steps.
pub fn step_dag(ctx: &Ctx, run: &Run) -> Markup {
    let Run {
        execution: e,
        steps,
        deps,
        details,
    } = run;
    let nodes: Vec<dag::Node> = steps
        .iter()
        .zip(deps)
        .zip(details)
        .map(|((s, d), detail)| {
            let instances = if s.instances > 1 {
                format!(" · {} instances", s.instances)
            } else {
                String::new()
            };
            let cache = cache_text(s);
            dag::Node {
                label: s.step.clone(),
                lines: vec![
                    format!("{} · {}", s.status, duration(s.started, s.finished)),
                    format!("{}{instances} · {} attempts", s.kind, s.attempts),
                    cache.clone(),
                ],
                title: format!(
                    "{} ({}): {}{}\n{} attempts, {} instances\n{cache}",
                    s.step,
                    s.kind,
                    s.status,
                    s.reason
                        .as_deref()
                        .map(|r| format!(" — {r}"))
                        .unwrap_or_default(),
                    s.attempts,
                    s.instances
                ),
                class: format!("st-{}", s.status),
                href: ctx
                    .href(Route::Logs {
                        execution: &e.id,
                        step: &s.step,
                        attempt: None,
                        page: 0,
                        view: "interleaved",
                    })
                    .filter(|_| detail.has_logs),
                deps: d.clone(),
                weight: match (s.started, s.finished) {
                    (Some(a), Some(b)) if b > a && s.cache.as_deref() != Some("hit") => b - a,
                    _ => 0.0,
                },
            }
        })
        .collect();
    dag::svg(&nodes, &dag::layout(&nodes))
}

/// The part of the execution page that live updates replace: its status, DAG and step table.
pub fn execution_live(ctx: &Ctx, run: &Run) -> Markup {
    let Run {
        execution: e,
        steps,
        details,
        ..
    } = run;
    html! {
        p class="summary" {
            (status(e.shown_status())) " "
            "started " (time(e.started)) " UTC · " (duration(Some(e.started), e.finished))
            @if let Some(m) = &e.message { " — " span class="message" { (m) } }
        }
        div class="dag-wrap" { (step_dag(ctx, run)) }
        p class="legend-note" { "The critical path (the chain of steps that took longest) is outlined in bold." }
        table class="steps" {
            thead { tr { th { "step" } th { "kind" } th { "status" } th { "time" } th { "attempts" } th { "instances" } th { "cache / why" } th { "metrics" } } }
            tbody {
                @for (s, d) in steps.iter().zip(details) {
                    tr {
                        td {
                            @if d.has_logs { (link(ctx, Route::Logs { execution: &e.id, step: &s.step, attempt: None, page: 0, view: "interleaved" }, &s.step)) }
                            @else { (s.step) }
                        }
                        td { (s.kind) }
                        td { (status(&s.status)) }
                        td { (duration(s.started, s.finished)) }
                        td { (s.attempts) }
                        td { @if s.instances > 0 { (s.instances) } @else { "-" } }
                        td class="why" {
                            (cache_text(s))
                            @if let Some(r) = s.reason.as_deref().filter(|r| !r.starts_with("hit") && !r.starts_with("miss")) { " " (r) }
                            @for (n, st, err) in d.attempts.iter().filter(|a| a.1 != "succeeded") {
                                div class="attempt" { "attempt " (n) " " (st) @if let Some(err) = err { ": " (err) } }
                            }
                        }
                        td class="metrics" { @for (k, v) in &d.metrics { div { (k) " " (format!("{v:.4}")) } } }
                    }
                }
            }
        }
    }
}

/// One execution: parameters, links, and the live part.
pub fn execution(
    ctx: &Ctx,
    run: &Run,
    previous: Option<&Execution>,
    events: Option<String>,
    outputs: &[(String, String)],
) -> Markup {
    let (e, steps) = (&run.execution, &run.steps);
    let has_training = steps.iter().any(|s| s.kind == "train");
    let has_data = steps
        .iter()
        .any(|s| s.kind == "manifest" || s.kind == "process");
    let body = html! {
        p class="meta" {
            "pipeline " strong { (e.pipeline) } " · " (e.file) " · run " (e.runs) " time(s)"
        }
        p class="params" { "parameters: " code { (compact(&e.params)) } }
        p class="links" {
            @if has_data { (link(ctx, Route::Data(&e.id), "data")) " " }
            @if has_training { (link(ctx, Route::Training(&e.id, None), "training curves")) " " }
            @if let Some(p) = previous { (link(ctx, Route::Compare(&p.id, &e.id), "compare with the previous execution")) }
        }
        div id="live" { (execution_live(ctx, run)) }
        @if !outputs.is_empty() {
            h2 { "Outputs and their lineage" }
            ul class="outputs" {
                @for (step, uri) in outputs {
                    li { (step) ": " (link(ctx, Route::Lineage(uri, 2), uri)) }
                }
            }
        }
    };
    layout(ctx, &format!("Execution {}", e.id), events, body)
}

/// The rows of interleaved log lines; `tailed`: rows a live tail appends (marked, so that a
/// reader sees what is new); `flagged`: the instances to mark (failed, straggling).
pub fn log_rows(
    instances: &[String],
    lines: &[(usize, String)],
    tailed: bool,
    flagged: &[bool],
) -> Markup {
    let mark = if tailed { " tailed" } else { "" };
    html! {
        @for (i, line) in lines {
            tr class=(format!("i{}{mark}{}", i % 8, if flagged.get(*i).copied().unwrap_or(false) { " flagged" } else { "" })) {
                td class="gutter" { (instances.get(*i).map_or("?", String::as_str)) }
                td class="line" { (line) }
            }
        }
    }
}

/// A step's logs: one page of every instance's log, interleaved or side by side.
#[allow(clippy::too_many_arguments)]
pub fn logs(
    ctx: &Ctx,
    e: &Execution,
    step: &StepRow,
    attempts: &[i64],
    attempt: i64,
    instances: &[String],
    flags: &[Vec<String>],
    chunks: &[Chunk],
    page: u64,
    view: &str,
    events: Option<String>,
) -> Markup {
    let flagged: Vec<bool> = flags.iter().map(|f| !f.is_empty()).collect();
    let more = chunks.iter().any(|c| c.end < c.size);
    let route = |attempt: Option<i64>, page: u64, view: &'static str| Route::Logs {
        execution: &e.id,
        step: &step.step,
        attempt,
        page,
        view,
    };
    let view: &'static str = if view == "side" {
        "side"
    } else {
        "interleaved"
    };
    let lines =
        crate::logs::interleave(&chunks.iter().map(|c| c.lines.clone()).collect::<Vec<_>>());
    let body = html! {
        p class="meta" {
            (link(ctx, Route::Execution(&e.id), &e.id)) " · " (step.kind) " · " (status(&step.status))
            " · " (instances.len()) " log(s) · "
            (chunks.iter().map(|c| c.size).sum::<u64>()) " bytes"
        }
        @if ctx.export.is_none() {
            p class="controls" {
                "attempt: "
                @for a in attempts { (link(ctx, route(Some(*a), 0, view), &a.to_string())) " " }
                "· view: " (link(ctx, route(Some(attempt), page, "interleaved"), "interleaved")) " "
                (link(ctx, route(Some(attempt), page, "side"), "side by side"))
                " · page " (page + 1) " "
                @if page > 0 { (link(ctx, route(Some(attempt), page - 1, view), "previous")) " " }
                @if more { (link(ctx, route(Some(attempt), page + 1, view), "next")) }
            }
        }
        @if flags.iter().any(|f| !f.is_empty()) {
            ul class="flags" { @for note in flags.iter().flatten() { li { (note) } } }
        }
        p class="search" {
            input id="search" type="search" placeholder="search (Enter: next match)" aria-label="search the log";
            " " span id="search-count" {}
        }
        @if instances.is_empty() {
            p { "This step has no log." }
        } @else if view == "side" {
            div class="side" {
                @for (i, c) in chunks.iter().enumerate() {
                    div class=(if flagged[i] { "column flagged" } else { "column" }) {
                        h3 { (instances[i]) }
                        pre class="log" { @for l in &c.lines { span class="line" { (l) } "\n" } }
                    }
                }
            }
        } @else {
            table class="log" { tbody id="log-lines" { (log_rows(instances, &lines, false, &flagged)) } }
        }
    };
    layout(
        ctx,
        &format!("Logs of {} (attempt {attempt})", step.step),
        events,
        body,
    )
}

/// The columns of `metrics.csv` and `timings.csv` charted, with their titles.
const CHARTS: &[(&str, &[&str])] = &[
    ("Loss", &["train_loss", "validation_loss"]),
    ("Accuracy", &["train_accuracy", "validation_accuracy"]),
    ("Samples per second", &["samples_per_second"]),
    ("Data wait (% of step time)", &["data_wait_percent"]),
    ("Allreduce (ms per step)", &["allreduce_ms"]),
];

/// The training curves of an execution, with another's overlaid (dashed) when given.
pub fn training(
    ctx: &Ctx,
    e: &Execution,
    runs: &[Training],
    other: Option<(&Execution, &[Training])>,
    candidates: &[&Execution],
) -> Markup {
    let series = |label: &str, t: &Training, column: &str, dashed: bool| Series {
        name: format!("{label} {} {column}", t.step),
        points: t
            .epochs
            .iter()
            .filter_map(|r| Some((*r.get("epoch")?, *r.get(column)?)))
            .collect(),
        dashed,
    };
    let charts: Vec<(&str, Vec<Series>)> = CHARTS
        .iter()
        .map(|(title, columns)| {
            let mine = runs.iter().map(|t| (short(&e.id), t, false));
            let theirs = other
                .into_iter()
                .flat_map(|(o, ts)| ts.iter().map(move |t| (short(&o.id), t, true)));
            let all = mine
                .chain(theirs)
                .flat_map(|(label, t, dashed)| {
                    columns.iter().map(move |c| series(&label, t, c, dashed))
                })
                .filter(|s| !s.points.is_empty())
                .collect();
            (*title, all)
        })
        .filter(|(_, all): &(&str, Vec<Series>)| !all.is_empty())
        .collect();
    let body = html! {
        p class="meta" { (link(ctx, Route::Execution(&e.id), &e.id)) " · pipeline " (e.pipeline) }
        @if ctx.export.is_none() && !candidates.is_empty() {
            p class="controls" {
                "overlay: "
                @for c in candidates { (link(ctx, Route::Training(&e.id, Some(&c.id)), &c.id)) " " }
                @if other.is_some() { (link(ctx, Route::Training(&e.id, None), "none")) }
            }
        }
        @if runs.is_empty() {
            p { "This execution has no train step with a metrics.csv (yet)." }
        }
        @for t in runs { p class="source" { (t.step) ": " (t.model) "/metrics.csv, " (t.epochs.len()) " epochs" } }
        div class="charts" {
            @for (title, all) in &charts { (line_chart(title, "epoch", all)) }
        }
    };
    layout(ctx, &format!("Training of {}", e.id), None, body)
}

/// An execution id as a legend shows it: its last part (ids start with the date, which two
/// executions of one day share).
fn short(id: &str) -> String {
    id.rsplit('-').next().unwrap_or(id).to_string()
}

/// The registries' versions.
pub fn models(ctx: &Ctx, registries: &[RegistryModels]) -> Markup {
    let body = html! {
        @if registries.is_empty() {
            p { "No registry: no register step has run, and none was given (--registry)." }
        }
        @for RegistryModels { index: i, url, records } in registries {
            h2 { "Registry " code { (url) } }
            @match records {
                Err(why) => p class="problem" { (why) },
                Ok(records) if records.is_empty() => p { "No model yet." },
                Ok(records) => table class="models" {
                    thead { tr { th { "model" } th { "registered (UTC)" } th { "accuracy" } th { "description" } } }
                    tbody {
                        @for r in records {
                            tr {
                                td { (link(ctx, Route::Model(*i, &r.name, r.version), &format!("{}:{}", r.name, r.version))) }
                                td { (r.registered_at) }
                                td { (r.accuracy()) }
                                td { (r.description.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                },
            }
        }
    };
    layout(ctx, "Models", None, body)
}

/// One model version: its metrics, confusion matrix and per-class precision and recall.
pub fn model(ctx: &Ctx, registry: &str, r: &Record) -> Markup {
    let evaluation = &r.metrics["evaluation"];
    let classes: Vec<&serde_json::Value> = evaluation["classes"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let name = |i: usize| {
        classes
            .get(i)
            .and_then(|c| c["class"].as_str())
            .map_or_else(|| i.to_string(), str::to_string)
    };
    let matrix: Vec<Vec<u64>> = evaluation["confusion_matrix"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| {
                    row.as_array()
                        .map(|c| c.iter().map(|v| v.as_u64().unwrap_or(0)).collect())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    let width = matrix.iter().map(Vec::len).max().unwrap_or(0);
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let body = html! {
        p class="meta" { "registry " code { (registry) } " · registered " (r.registered_at) " · source " (link(ctx, Route::Lineage(&r.source, 2), &r.source)) }
        @if let Some(d) = &r.description { p { (d) } }
        p { "accuracy " strong { (r.accuracy()) } " · copy " code { (r.artifact) } " (" (r.model.bytes) " bytes, " (r.model.digest.as_str()) ")" }
        @if !matrix.is_empty() {
            h2 { "Confusion matrix" }
            p class="note" { "Rows: the true class; columns: the predicted class." }
            table class="confusion" {
                thead { tr { th { "true \\ predicted" } @for j in 0..width { th { (name(j)) } } } }
                tbody {
                    @for (i, row) in matrix.iter().enumerate() {
                        @let total = row.iter().sum::<u64>().max(1);
                        tr {
                            th { (name(i)) }
                            @for (j, v) in row.iter().enumerate() {
                                td class=(format!("heat{}{}", (v * 9).div_ceil(total).min(9), if i == j { " diagonal" } else { "" })) { (v) }
                            }
                        }
                    }
                }
            }
        }
        @if !classes.is_empty() {
            h2 { "Per class" }
            table class="classes" {
                thead { tr { th { "class" } th { "precision" } th { "recall" } th { "support" } } }
                tbody {
                    @for c in &classes {
                        tr {
                            td { (c["class"].as_str().unwrap_or("")) }
                            td { (c["precision"].as_f64().map_or("-".into(), |v| format!("{v:.3}"))) }
                            td { (c["recall"].as_f64().map_or("-".into(), |v| format!("{v:.3}"))) }
                            td { (c["support"]) }
                        }
                    }
                }
            }
        }
        h2 { "Metrics" }
        pre { (pretty(&r.metrics)) }
        h2 { "Lineage record" }
        pre { (pretty(&r.lineage)) }
    };
    layout(ctx, &format!("Model {}:{}", r.name, r.version), None, body)
}

/// An artifact's lineage neighbourhood as a graph of artifacts and step runs.
pub fn lineage(ctx: &Ctx, artifact: &str, depth: usize, edges: &[Edge]) -> Markup {
    // Nodes: artifacts by URI and step runs by (execution, step), in first-seen order.
    let mut index: BTreeMap<(bool, String, String), usize> = BTreeMap::new();
    let mut nodes: Vec<dag::Node> = Vec::new();
    let mut node = |run: bool, a: &str, b: &str, nodes: &mut Vec<dag::Node>| {
        *index.entry((run, a.into(), b.into())).or_insert_with(|| {
            nodes.push(if run {
                dag::Node {
                    label: b.to_string(),
                    lines: vec![format!("execution {}", short(a))],
                    title: format!("step {b} of execution {a}"),
                    class: "run".into(),
                    href: ctx.href(Route::Execution(a)),
                    ..dag::Node::default()
                }
            } else {
                dag::Node {
                    label: a.rsplit('/').next().unwrap_or(a).to_string(),
                    lines: vec![a.to_string(), b.to_string()],
                    title: format!("{a}\n{b}"),
                    class: if a == artifact || b == artifact {
                        "artifact focus".into()
                    } else {
                        "artifact".into()
                    },
                    href: ctx.href(Route::Lineage(a, depth)),
                    ..dag::Node::default()
                }
            });
            nodes.len() - 1
        })
    };
    for e in edges {
        let run = node(true, &e.execution, &e.step, &mut nodes);
        let art = node(false, &e.uri, &e.digest, &mut nodes);
        if e.direction == "in" {
            nodes[run].deps.push(art);
        } else {
            nodes[art].deps.push(run);
        }
    }
    let placed = dag::layout(&nodes);
    let body = html! {
        p class="meta" { code { (artifact) } }
        p class="controls" {
            "depth: "
            @for d in 1..=5 { (link(ctx, Route::Lineage(artifact, d), &d.to_string())) " " }
        }
        div class="dag-wrap" { (dag::svg(&nodes, &placed)) }
        table class="edges" {
            thead { tr { th { "execution" } th { "step" } th { "read / wrote" } th { "artifact" } th { "digest" } } }
            tbody {
                @for e in edges {
                    tr {
                        td { (link(ctx, Route::Execution(&e.execution), &e.execution)) }
                        td { (e.step) }
                        td { (if e.direction == "in" { "read" } else { "wrote" }) }
                        td { (link(ctx, Route::Lineage(&e.uri, depth), &e.uri)) }
                        td { code { (e.digest) } }
                    }
                }
            }
        }
    };
    layout(ctx, "Lineage", None, body)
}

fn number(v: &serde_json::Value) -> String {
    v.as_f64().map_or_else(
        || v.to_string(),
        |f| {
            if f.fract() == 0.0 {
                format!("{f:.0}")
            } else {
                format!("{f:.1}")
            }
        },
    )
}

/// A manifest step's class balance: objects per class (rows) and channel (columns), as a chart
/// and a table.
fn balance(step: &str, record: &serde_json::Value) -> Markup {
    let counts = record["counts"].as_object();
    let classes: Vec<String> = counts
        .map(|c| c.keys().cloned().collect())
        .unwrap_or_default();
    let mut channels: Vec<String> = Vec::new();
    for per in counts.into_iter().flat_map(|c| c.values()) {
        for ch in per.as_object().into_iter().flat_map(|o| o.keys()) {
            if !channels.contains(ch) {
                channels.push(ch.clone());
            }
        }
    }
    // train, validation, test first, in that order, then any other channel.
    let rank = |c: &String| {
        ["train", "validation", "test"]
            .iter()
            .position(|k| k == c)
            .unwrap_or(3)
    };
    channels.sort_by_key(|c| (rank(c), c.clone()));
    let value =
        |class: &str, channel: &str| record["counts"][class][channel].as_f64().unwrap_or(0.0);
    let values: Vec<Vec<f64>> = channels
        .iter()
        .map(|ch| classes.iter().map(|c| value(c, ch)).collect())
        .collect();
    html! {
        h2 { "Class balance: " (step) }
        @if classes.is_empty() { p { "The manifest's record has no counts." } } @else {
            (crate::chart::bar_chart("Objects per class and channel", &classes, &channels, &values))
            table class="balance" {
                thead { tr { th { "class" } @for ch in &channels { th { (ch) } } } }
                tbody {
                    @for c in &classes {
                        tr { td { (c) } @for ch in &channels { td class="num" { (value(c, ch)) } } }
                    }
                }
            }
        }
    }
}

/// A process step's report: per instance, throughput, time, memory and objects per channel, and
/// every quarantined object with its reason.
fn processing(step: &str, report: &serde_json::Value) -> Markup {
    let instances: Vec<&serde_json::Value> = report["instances"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let quarantined: Vec<(&str, &serde_json::Value)> = instances
        .iter()
        .flat_map(|i| {
            let host = i["host"].as_str().unwrap_or("");
            i["quarantine"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |q| (host, q))
        })
        .collect();
    html! {
        h2 { "Processing: " (step) }
        p class="meta" {
            (report["status"].as_str().unwrap_or("")) " · assigned " (number(&report["assigned"]))
            " · written " (number(&report["written"])) " · quarantined " (number(&report["quarantined"]))
        }
        table class="instances" {
            thead { tr { th { "instance" } th { "records/s" } th { "seconds" } th { "peak RSS (MiB)" } th { "per channel: assigned / written / quarantined" } } }
            tbody {
                @for i in &instances {
                    tr {
                        td { (i["host"].as_str().unwrap_or("")) }
                        td class="num" { (number(&i["records_per_second"])) }
                        td class="num" { (i["seconds"].as_f64().map_or("-".into(), |s| format!("{s:.2}"))) }
                        td class="num" { (number(&i["peak_rss_mib"])) }
                        td {
                            @for (ch, v) in i["channels"].as_object().into_iter().flatten() {
                                div { (ch) ": " (v.as_array().map(|a| a.iter().map(number).collect::<Vec<_>>().join(" / ")).unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        }
        @if quarantined.is_empty() { p { "Nothing was quarantined." } } @else {
            h3 { "Quarantined objects" }
            table class="quarantine" {
                thead { tr { th { "instance" } th { "channel" } th { "object" } th { "reason" } } }
                tbody {
                    @for (host, q) in &quarantined {
                        tr {
                            td { (host) }
                            td { (q["channel"].as_str().unwrap_or("")) }
                            td { (q["uri"].as_str().unwrap_or("")) }
                            td { (q["reason"].as_str().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    }
}

/// An execution's data: each manifest step's class balance and each process step's report.
pub fn data(ctx: &Ctx, e: &Execution, records: &[(String, String, serde_json::Value)]) -> Markup {
    let body = html! {
        p class="meta" { (link(ctx, Route::Execution(&e.id), &e.id)) " · pipeline " (e.pipeline) }
        @if records.is_empty() { p { "No manifest or process step of this execution has its record yet." } }
        @for (step, kind, record) in records {
            @if kind == "manifest" { (balance(step, record)) } @else { (processing(step, record)) }
        }
    };
    layout(ctx, &format!("Data of {}", e.id), None, body)
}

/// One side of a comparison: the execution, its steps by name, and their metrics.
pub struct Side<'a> {
    /// The execution.
    pub execution: &'a Execution,
    /// Its steps by name.
    pub steps: BTreeMap<String, StepRow>,
    /// Its metrics by (step, name).
    pub metrics: BTreeMap<(String, String), f64>,
}

fn diff_keys(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    let keys = |v: &serde_json::Value| -> BTreeSet<String> {
        v.as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    keys(a)
        .union(&keys(b))
        .filter(|k| a.get(k.as_str()) != b.get(k.as_str()))
        .cloned()
        .collect()
}

/// Two executions compared: parameters, each step's cache outcome and which of its key's
/// settings and input digests differ, and metrics.
pub fn compare(ctx: &Ctx, a: &Side<'_>, b: &Side<'_>) -> Markup {
    let params = diff_keys(&a.execution.params, &b.execution.params);
    let names: BTreeSet<&String> = a.steps.keys().chain(b.steps.keys()).collect();
    let metric_names: BTreeSet<&(String, String)> =
        a.metrics.keys().chain(b.metrics.keys()).collect();
    let cell = |s: Option<&StepRow>| {
        s.map_or_else(
            || "-".to_string(),
            |s| format!("{} ({})", s.status, s.cache.as_deref().unwrap_or("-")),
        )
    };
    let show = |v: Option<&serde_json::Value>| v.map_or("-".into(), |v| v.to_string());
    let body = html! {
        table class="compare" {
            thead { tr { th {} th { (link(ctx, Route::Execution(&a.execution.id), &a.execution.id)) } th { (link(ctx, Route::Execution(&b.execution.id), &b.execution.id)) } } }
            tbody {
                tr { th { "pipeline" } td { (a.execution.pipeline) } td { (b.execution.pipeline) } }
                tr { th { "status" } td { (status(a.execution.shown_status())) } td { (status(b.execution.shown_status())) } }
            }
        }
        h2 { "Parameters that differ" }
        @if params.is_empty() { p { "None." } } @else {
            table class="compare" {
                tbody { @for k in &params { tr { th { (k) } td { (show(a.execution.params.get(k))) } td { (show(b.execution.params.get(k))) } } } }
            }
        }
        h2 { "Steps" }
        table class="compare" {
            thead { tr { th { "step" } th { "first" } th { "second" } th { "same cache key" } th { "settings and inputs that differ" } } }
            tbody {
                @for n in &names {
                    @let (x, y) = (a.steps.get(*n), b.steps.get(*n));
                    @let differs = match (x.and_then(|s| s.components.as_ref()), y.and_then(|s| s.components.as_ref())) {
                        (Some(p), Some(q)) => ["settings", "inputs"].iter().flat_map(|part| diff_keys(&p[*part], &q[*part]).into_iter().map(move |k| format!("{part}.{k}"))).collect::<Vec<_>>(),
                        _ => Vec::new(),
                    };
                    tr class=(if x.map(|s| &s.cache) != y.map(|s| &s.cache) { "differs" } else { "" }) {
                        th { (n) }
                        td { (cell(x)) }
                        td { (cell(y)) }
                        td { (match (x.and_then(|s| s.cache_key.as_ref()), y.and_then(|s| s.cache_key.as_ref())) { (Some(p), Some(q)) => if p == q { "yes" } else { "no" }, _ => "-" }) }
                        td { (differs.join(", ")) }
                    }
                }
            }
        }
        h2 { "Metrics" }
        @if metric_names.is_empty() { p { "None recorded." } } @else {
            table class="compare" {
                thead { tr { th { "step" } th { "metric" } th { "first" } th { "second" } th { "difference" } } }
                tbody {
                    @for k in &metric_names {
                        @let (x, y) = (a.metrics.get(*k), b.metrics.get(*k));
                        tr {
                            td { (k.0) } td { (k.1) }
                            td { (x.map_or("-".into(), |v| format!("{v:.4}"))) }
                            td { (y.map_or("-".into(), |v| format!("{v:.4}"))) }
                            td { (match (x, y) { (Some(x), Some(y)) => format!("{:+.4}", y - x), _ => "-".into() }) }
                        }
                    }
                }
            }
        }
    };
    layout(ctx, "Compare executions", None, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_encode_ids_for_the_server_and_the_export() {
        let logs = Route::Logs {
            execution: "e1",
            step: "a/b c",
            attempt: None,
            page: 0,
            view: "interleaved",
        };
        assert_eq!(served(logs), "/executions/e1/steps/a%2Fb%20c/logs");
        assert_eq!(
            Ctx { export: Some(2) }.href(logs).as_deref(),
            Some("../../executions/e1/logs/a~2Fb~20c.html")
        );
        assert_eq!(
            Ctx { export: Some(0) }
                .href(Route::Compare("a", "b"))
                .as_deref(),
            Some("executions/b/compare-a.html")
        );
        assert_eq!(
            Ctx { export: Some(0) }.href(Route::Lineage("s3://b/k", 3)),
            None
        );
        assert!(
            Ctx { export: Some(1) }
                .href(Route::Lineage("s3://b/k", 2))
                .is_some_and(|h| h.starts_with("../lineage/") && h.ends_with(".html"))
        );
        assert_eq!(
            served(Route::Lineage("s3://b/k?x", 2)),
            "/lineage?artifact=s3%3A%2F%2Fb%2Fk%3Fx&depth=2"
        );
    }
}
