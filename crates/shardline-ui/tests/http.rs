//! The dashboard over HTTP: every page of a store written here renders with user-supplied text
//! escaped; only GET and HEAD; the Host check; the safety headers on every response; ids, never
//! paths; the store opened read-only; and, over a real socket, the live event streams.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;
use shardline_pipeline::db::{Db, Execution, StepRow};
use shardline_ui::{Options, Source, app, http::CSP};
use tower::ServiceExt;

const XSS: &str = "<script>alert(1)</script>";
const ESCAPED: &str = "&lt;script&gt;alert(1)&lt;/script&gt;";
const PORT: u16 = 8081;
const HOST: &str = "127.0.0.1:8081";

const DEFINITION: &str = r#"
name = "tiny"

[steps.data]
kind = "datagen"
out = "data"
classes = 2
per_class = 2
size = 8

[steps.manifests]
kind = "manifest"
source = "{{ steps.data.outputs.out }}"
out = "manifests"
"#;

/// A store with two executions of one pipeline (the second running, as this process), logs of
/// two instances, a train step whose model has a metrics.csv, a registered model whose class
/// label is markup, and lineage edges.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    fn path(&self, relative: &str) -> String {
        self.dir.path().join(relative).display().to_string()
    }
}

fn step(execution: &str, name: &str, kind: &str, position: i64, status: &str) -> StepRow {
    StepRow {
        execution: execution.into(),
        step: name.into(),
        kind: kind.into(),
        position,
        status: status.into(),
        cache: Some("miss".into()),
        reason: Some(format!("no earlier run {XSS}")),
        attempts: 1,
        instances: 1,
        started: Some(100.0 + position as f64),
        finished: Some(102.0 + position as f64),
        ..StepRow::default()
    }
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = Fixture { dir };
    let db = Db::open(&f.state()).expect("open the store");
    let digest = "sha256:tiny";
    db.put_pipeline("tiny", digest, DEFINITION, "tiny.toml")
        .expect("pipeline");
    let model = f.path("model");
    std::fs::create_dir_all(&model).expect("model dir");
    std::fs::write(
        Path::new(&model).join("metrics.csv"),
        "epoch,train_loss,train_accuracy,validation_loss,validation_accuracy,lr\n1,1.2,0.4,1.3,0.35,0.002\n2,0.8,0.6,0.9,0.55,0.002\n",
    )
    .expect("metrics");
    std::fs::write(
        Path::new(&model).join("timings.csv"),
        "epoch,samples_per_second,data_wait_percent,allreduce_ms,train_seconds\n1,900,3.5,12,1.0\n2,950,2.5,11,1.0\n",
    )
    .expect("timings");
    // The members the registry checks for; the dashboard reads only the record.
    let packed = shardline_contract::model::pack(&[
        ("labels.json", br#"{"classes": ["a", "b"]}"#.to_vec()),
        ("model.json", b"{}".to_vec()),
        ("recipe.json", b"{}".to_vec()),
        ("weights.bin", b"w".to_vec()),
    ])
    .expect("pack");
    std::fs::write(Path::new(&model).join("model.tar.gz"), packed).expect("tarball");
    std::fs::create_dir_all(f.path("manifests")).expect("manifests");
    std::fs::write(
        Path::new(&f.path("manifests")).join("lineage.json"),
        json!({"counts": {XSS: {"train": 3, "test": 1}, "square": {"train": 4, "test": 2}}})
            .to_string(),
    )
    .expect("manifest lineage");
    std::fs::create_dir_all(f.path("processed")).expect("processed");
    std::fs::write(
        Path::new(&f.path("processed")).join("report.json"),
        json!({"status": "succeeded", "assigned": 10, "written": 9, "quarantined": 1, "instances": [
            {"host": "algo-1", "channels": {"train": [7, 6, 1]}, "records_per_second": 120.5, "seconds": 0.5, "peak_rss_mib": 20.0,
             "quarantine": [{"channel": "train", "uri": "file:///d/x.jpg", "reason": XSS}]}
        ]})
        .to_string(),
    )
    .expect("process report");
    let registry = f.path("registry");
    let evaluation = json!({
        "accuracy": 0.75,
        "classes": [
            {"class": XSS, "precision": 0.8, "recall": 0.7, "support": 10},
            {"class": "square", "precision": 0.7, "recall": 0.8, "support": 10}
        ],
        "confusion_matrix": [[7, 3], [2, 8]]
    });
    shardline_registry::Registry::open(&registry)
        .expect("registry")
        .register("shapes", &model, Some(evaluation), Some(XSS.into()))
        .await
        .expect("register");
    for (id, started, status, pid) in [
        ("e1", 100.0, "succeeded", 0),
        ("e2", 200.0, "running", i64::from(std::process::id())),
    ] {
        db.put_execution(&Execution {
            id: id.into(),
            pipeline: "tiny".into(),
            digest: digest.into(),
            file: "tiny.toml".into(),
            params: json!({"note": XSS, "seed": started}),
            status: status.into(),
            message: None,
            pid,
            started,
            finished: (status != "running").then_some(started + 10.0),
            runs: 1,
        })
        .expect("execution");
        let mut data = step(id, "data", "datagen", 0, status);
        data.outputs = Some(json!({"out": f.path("data")}));
        data.instances = 2;
        db.put_step(&data).expect("step");
        let mut manifests = step(id, "manifests", "manifest", 1, status);
        manifests.outputs = Some(json!({"out": f.path("manifests")}));
        db.put_step(&manifests).expect("step");
        let mut shards = step(id, "shards", "process", 4, "succeeded");
        shards.outputs = Some(json!({"out": f.path("processed")}));
        db.put_step(&shards).expect("step");
        let mut train = step(id, XSS, "train", 2, "succeeded");
        train.outputs = Some(json!({"model": model}));
        db.put_step(&train).expect("step");
        let mut register = step(id, "register", "register", 3, "succeeded");
        register.settings = Some(json!({"registry": registry}));
        db.put_step(&register).expect("step");
        db.put_metrics(id, XSS, &[("test_accuracy".into(), started / 1000.0)])
            .expect("metrics");
        for (instance, text) in [
            (
                "algo-1",
                format!("2026-01-01T00:00:01Z first line\n2026-01-01T00:00:03Z {XSS}\n"),
            ),
            (
                "algo-2",
                "2026-01-01T00:00:02Z from two\n10%\r50%\r100% done\n".to_string(),
            ),
        ] {
            let log = f.state().join(format!("{id}-{instance}.log"));
            std::fs::write(&log, text).expect("log");
            // algo-1's log last grew a minute after the step started (at 100 s), algo-2's at once.
            let end = if instance == "algo-1" { 160 } else { 101 };
            std::fs::File::options()
                .append(true)
                .open(&log)
                .and_then(|f| {
                    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(end))
                })
                .expect("set the log's time");
            db.put_log(id, "data", 1, instance, &log).expect("log row");
        }
        db.start_attempt(id, "data", 1).expect("attempt");
        db.finish_attempt(
            id,
            "data",
            1,
            "failed",
            Some("process: instance algo-2 failed after 1 attempt(s): exited with status 1"),
        )
        .expect("attempt");
        db.put_edges(
            id,
            "data",
            &[("out".into(), f.path("data"), "sha256:data".into())],
        )
        .expect("edges");
        db.put_edges(
            id,
            "manifests",
            &[
                ("in".into(), f.path("data"), "sha256:data".into()),
                ("out".into(), f.path("manifests"), "sha256:m".into()),
            ],
        )
        .expect("edges");
    }
    f
}

fn router(f: &Fixture) -> axum::Router {
    let source = Source::open(&f.state(), Vec::new()).expect("open read-only");
    app(Arc::new(source), "127.0.0.1", PORT)
}

async fn request(
    app: &axum::Router,
    method: &str,
    uri: &str,
    host: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut r = Request::builder().method(method).uri(uri);
    if let Some(h) = host {
        r = r.header("host", h);
    }
    let response = app
        .clone()
        .oneshot(r.body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

async fn get(app: &axum::Router, uri: &str) -> (StatusCode, String) {
    let (status, _, body) = request(app, "GET", uri, Some(HOST)).await;
    (status, body)
}

fn assert_safe_headers(headers: &axum::http::HeaderMap, what: &str) {
    assert_eq!(headers["content-security-policy"], CSP, "{what}");
    assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(headers["referrer-policy"], "no-referrer", "{what}");
}

#[tokio::test]
async fn every_page_renders_with_user_text_escaped() {
    let f = fixture().await;
    let app = router(&f);
    let lineage = format!("/lineage?artifact={}&depth=2", f.path("manifests"));
    let train = "/executions/e1/steps/%3Cscript%3Ealert(1)%3C%2Fscript%3E/logs";
    let pages = [
        "/",
        "/?pipeline=tiny&status=succeeded",
        "/executions/e1",
        "/executions/e1/training",
        "/executions/e1/data",
        "/executions/e2/training?with=e1",
        "/executions/e1/steps/data/logs",
        "/executions/e1/steps/data/logs?view=side&attempt=1",
        "/models",
        "/models/0/shapes/1",
        lineage.as_str(),
        "/compare?a=e1&b=e2",
    ];
    for page in pages {
        let (status, body) = get(&app, page).await;
        assert_eq!(status, StatusCode::OK, "{page}: {body}");
        assert!(!body.contains(XSS), "{page} has raw markup: {body}");
        assert!(
            body.contains("<script src=\"/assets/app.js\" defer>"),
            "{page}"
        );
        assert!(!body.contains(" style="), "{page} has an inline style");
    }
    // User text is there, as text.
    let (_, body) = get(&app, "/").await;
    assert!(body.contains(ESCAPED), "{body}");
    assert!(body.contains("compare with previous"));
    let (_, body) = get(&app, "/executions/e1").await;
    assert!(body.contains(ESCAPED), "{body}");
    for name in ["data", "manifests", "register"] {
        assert!(
            body.contains(&format!("data-node=\"{name}\"")),
            "{name}: {body}"
        );
    }
    assert!(
        body.contains("class=\"edge"),
        "the definition's edge: {body}"
    );
    assert!(body.contains("node st-succeeded critical"), "{body}");
    // The page of a running execution has its event stream, a finished one none.
    assert!(body.contains("<body>") || !body.contains("data-events"));
    let (_, body) = get(&app, "/executions/e2").await;
    assert!(
        body.contains("data-events=\"/executions/e2/events\""),
        "{body}"
    );
    let (_, body) = get(&app, train).await;
    assert!(body.contains("This step has no log."), "{body}");
    let (_, body) = get(&app, "/models/0/shapes/1").await;
    assert!(body.contains(&format!("<th>{ESCAPED}</th>")), "{body}");
    assert!(body.contains("heat"), "{body}");
    for cell in [">7<", ">3<", ">2<", ">8<", ">0.800<", ">0.700<"] {
        assert!(body.contains(cell), "{cell}: {body}");
    }
    let (_, body) = get(&app, "/executions/e1/data").await;
    assert_eq!(body.matches("<rect class=\"bar").count(), 4, "{body}");
    assert!(
        body.contains(&format!("<td>{ESCAPED}</td>")),
        "a class and a reason: {body}"
    );
    assert!(
        body.contains(">120.5<") && body.contains("train: 7 / 6 / 1"),
        "{body}"
    );
    let (_, body) = get(&app, "/executions/e1/training").await;
    assert_eq!(body.matches("<polyline").count(), 7, "{body}");
    let (_, body) = get(&app, "/executions/e2/training?with=e1").await;
    assert!(body.contains("dashed"), "{body}");
}

#[tokio::test]
async fn logs_interleave_instances_and_collapse_progress_lines() {
    let f = fixture().await;
    let app = router(&f);
    let (_, body) = get(&app, "/executions/e1/steps/data/logs").await;
    let first = body.find("first line").expect("algo-1's first line");
    let two = body.find("from two").expect("algo-2's line");
    let third = body.find(ESCAPED).expect("algo-1's second line");
    assert!(first < two && two < third, "time order: {body}");
    assert!(body.contains(">algo-2</td>"), "{body}");
    assert!(
        body.contains(">100% done<") && !body.contains("50%"),
        "{body}"
    );
    let (_, headers, _) = request(&app, "GET", "/executions/e1/steps/data/logs", Some(HOST)).await;
    assert_eq!(
        headers["cache-control"], "private, max-age=86400",
        "a finished step's log"
    );
    let (_, headers, _) = request(&app, "GET", "/executions/e2/steps/data/logs", Some(HOST)).await;
    assert_eq!(headers["cache-control"], "no-store", "a running step's log");
    let (status, _) = get(&app, "/executions/e1/steps/data/logs?attempt=7").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, body) = get(&app, "/executions/e1/steps/data/logs?page=3").await;
    assert!(!body.contains("first line"), "past the end: {body}");
}

#[tokio::test]
async fn a_large_log_is_served_a_page_at_a_time() {
    let f = fixture().await;
    // A 24 MiB log of one instance: every page holds about 256 KiB of it.
    let log = f.state().join("e1-algo-1.log");
    let line = format!("2026-01-01T00:00:05Z {}\n", "x".repeat(100));
    let mut text = String::with_capacity(24 << 20);
    let mut n = 0;
    while text.len() < 24 << 20 {
        text.push_str(&format!("{n:08} {line}"));
        n += 1;
    }
    std::fs::write(&log, &text).expect("a large log");
    let app = router(&f);
    let (status, first) = get(&app, "/executions/e1/steps/data/logs").await;
    assert_eq!(status, StatusCode::OK);
    assert!(first.len() < 1 << 20, "page 0 is {} bytes", first.len());
    assert!(
        first.contains("00000000 ") && first.contains(">next<"),
        "page 0"
    );
    let (_, last) = get(&app, "/executions/e1/steps/data/logs?page=95").await;
    assert!(last.len() < 1 << 20, "page 95 is {} bytes", last.len());
    assert!(
        last.contains(&format!("{:08} ", n - 1)),
        "the last line is on page 95"
    );
    assert!(!last.contains(">next<"), "page 95 is the last");
}

#[tokio::test]
async fn only_get_and_head_and_every_response_has_the_safety_headers() {
    let f = fixture().await;
    let app = router(&f);
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        for uri in ["/", "/executions/e1", "/nowhere"] {
            let (status, headers, _) = request(&app, method, uri, Some(HOST)).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
            assert_eq!(headers["allow"], "GET, HEAD");
            assert_safe_headers(&headers, method);
        }
    }
    let (status, headers, body) = request(&app, "HEAD", "/", Some(HOST)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());
    assert_safe_headers(&headers, "HEAD");
    for uri in ["/", "/assets/app.js", "/assets/app.css", "/nowhere"] {
        let (_, headers, _) = request(&app, "GET", uri, Some(HOST)).await;
        assert_safe_headers(&headers, uri);
    }
    let total: usize = shardline_ui::http::ASSETS
        .iter()
        .map(|(_, _, t)| t.len())
        .sum();
    assert!(total < 100 * 1024, "the assets are {total} bytes");
    let (_, headers, body) = request(&app, "GET", "/assets/app.js", Some(HOST)).await;
    assert!(
        headers["content-type"]
            .to_str()
            .expect("type")
            .starts_with("text/javascript")
    );
    assert!(body.contains("EventSource"));
}

#[tokio::test]
async fn the_host_header_must_name_this_server() {
    let f = fixture().await;
    let app = router(&f);
    for host in [
        "127.0.0.1:8081",
        "localhost:8081",
        "LOCALHOST:8081",
        "[::1]:8081",
    ] {
        let (status, _, _) = request(&app, "GET", "/", Some(host)).await;
        assert_eq!(status, StatusCode::OK, "{host}");
    }
    for host in [
        "evil.example:8081",
        "evil.example",
        "127.0.0.1:80",
        "localhost",
        "127.0.0.1.evil.example:8081",
    ] {
        let (status, headers, _) = request(&app, "GET", "/", Some(host)).await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{host}");
        assert_safe_headers(&headers, host);
    }
    let (status, headers, _) = request(&app, "GET", "/", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_safe_headers(&headers, "no host");
    // A server bound to another name answers to it too.
    let source = Source::open(&f.state(), Vec::new()).expect("open");
    let named = app_for(source, "dash.internal");
    let (status, _, _) = request(&named, "GET", "/", Some("dash.internal:8081")).await;
    assert_eq!(status, StatusCode::OK);
}

#[test]
fn the_allowed_hosts_of_a_bind_address() {
    let check = |host: &str, want: &[&str]| {
        assert_eq!(shardline_ui::http::allowed_hosts(host, 9), want, "{host}");
    };
    check("127.0.0.1", &["127.0.0.1:9", "[::1]:9", "localhost:9"]);
    check("::1", &["127.0.0.1:9", "[::1]:9", "localhost:9"]);
    check("Dash.Example", &["dash.example:9"]);
    check("10.1.2.3", &["10.1.2.3:9"]);
}

fn app_for(source: Source, host: &str) -> axum::Router {
    app(Arc::new(source), host, PORT)
}

#[tokio::test]
async fn pages_are_addressed_by_ids_never_by_paths() {
    let f = fixture().await;
    let app = router(&f);
    for uri in [
        "/executions/..%2F..%2Fetc%2Fpasswd",
        "/executions/../../etc/passwd",
        "/executions/e1/steps/..%2F..%2Fstate.db/logs",
        "/executions/e1/steps/data%2F..%2F..%2Fstate.db/logs",
        "/assets/..%2FCargo.toml",
        "/assets/../Cargo.toml",
        "/models/0/..%2F..%2Fshapes/1",
        "/models/9/shapes/1",
        "/lineage?artifact=/etc/passwd",
        "/executions/nope/training",
        "/compare?a=e1&b=..%2Fe2",
    ] {
        let (status, body) = get(&app, uri).await;
        assert!(
            status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST,
            "{uri}: {status} {body}"
        );
        assert!(!body.contains("root:"), "{uri}");
    }
}

#[test]
fn the_store_is_opened_read_only() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let f = runtime.block_on(fixture());
    let db = Db::open_read_only(&f.state()).expect("open read-only");
    let e = db.execution("e1").expect("read").expect("e1");
    let refused = db
        .put_execution(&e)
        .expect_err("a read-only store refuses writes");
    assert!(refused.to_string().contains("readonly"), "{refused}");
    let missing = Db::open_read_only(&f.dir.path().join("none"))
        .err()
        .expect("no store");
    assert!(missing.to_string().contains("--state"), "{missing}");
    assert!(!f.dir.path().join("none").exists(), "nothing is created");
}

/// One raw HTTP/1.1 exchange; returns everything the server sent until it closed or `until`
/// appeared.
fn exchange(port: u16, path: &str, until: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&got).contains(until) {
            break;
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_socket_the_live_streams_follow_a_running_execution_and_close_when_it_ends() {
    let f = fixture().await;
    let options = Options {
        port: 0,
        state: f.state(),
        ..Options::default()
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        shardline_ui::serve(
            &options,
            |a| {
                let _ = tx.send(a);
            },
            async {
                let _ = stopped.await;
            },
        )
        .await
    });
    let bound = rx.await.expect("the server is ready");
    assert!(bound.ip().is_loopback(), "binds 127.0.0.1 by default");
    let port = bound.port();

    let page = tokio::task::spawn_blocking(move || exchange(port, "/executions/e2", "</html>"))
        .await
        .expect("page");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains(&format!("content-security-policy: {CSP}")),
        "{page}"
    );

    // The log tail sends what an instance appends, as rows.
    let log = f.state().join("e2-algo-2.log");
    let tail = tokio::task::spawn_blocking(move || {
        exchange(
            port,
            "/executions/e2/steps/data/logs/events?attempt=1&from=0,0",
            "appended later",
        )
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("log");
    writeln!(file, "2026-01-01T00:00:09Z appended later").expect("append");
    let tail = tail.await.expect("tail");
    assert!(tail.contains("event: append"), "{tail}");
    assert!(tail.contains("appended later"), "{tail}");
    assert!(tail.contains("class=\"i1 tailed\""), "{tail}");

    // The execution page's stream updates and then ends once the execution has.
    let events =
        tokio::task::spawn_blocking(move || exchange(port, "/executions/e2/events", "event: end"));
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let db = Db::open(&f.state()).expect("writable store");
    db.set_execution_status("e2", "succeeded", None)
        .expect("finish");
    let events = events.await.expect("events");
    assert!(events.contains("text/event-stream"), "{events}");
    assert!(events.contains("event: update"), "{events}");
    assert!(events.contains("event: end"), "{events}");

    let _ = stop.send(());
    server.await.expect("join").expect("served");
}

#[tokio::test]
async fn an_export_writes_the_pages_linked_by_relative_paths() {
    let f = fixture().await;
    let out = f.dir.path().join("export");
    let options = Options {
        state: f.state(),
        ..Options::default()
    };
    let files = shardline_ui::export(&options, &out).await.expect("export");
    assert!(files >= 8, "{files}");
    for page in [
        "index.html",
        "executions/e1.html",
        "executions/e1/training.html",
        "executions/e1/data.html",
        "executions/e1/logs/data.html",
        "models.html",
        "models/0/shapes/1.html",
        "executions/e2/compare-e1.html",
        "assets/app.js",
        "assets/app.css",
    ] {
        assert!(out.join(page).is_file(), "{page}");
    }
    let index = std::fs::read_to_string(out.join("index.html")).expect("index");
    assert!(index.contains("href=\"executions/e1.html\""), "{index}");
    assert!(index.contains("href=\"assets/app.css\""), "{index}");
    let logs = std::fs::read_to_string(out.join("executions/e1/logs/data.html")).expect("logs");
    assert!(logs.contains("href=\"../../../assets/app.css\""), "{logs}");
    assert!(!logs.contains("data-events"), "no live stream in an export");
    assert!(!logs.contains(XSS));
    // Every link of every exported page leads to a file of the export.
    let mut pages = vec![out.clone()];
    let mut checked = 0;
    while let Some(dir) = pages.pop() {
        for entry in std::fs::read_dir(&dir).expect("read the export") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pages.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "html") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("page");
            for link in text.split("href=\"").skip(1) {
                let target = &link[..link.find('"').expect("quote")];
                let file = path.parent().expect("folder").join(target);
                assert!(
                    file.is_file(),
                    "{} links to {target}, which is not there",
                    path.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 20, "{checked} links");
    let lineage = std::fs::read_dir(out.join("lineage"))
        .expect("lineage pages")
        .count();
    assert!(lineage > 0, "no lineage page exported");
}
