//! `shardline serve` on a real socket, as a client would use it: both protocols, batching under
//! concurrent load, the limits, overload, timeouts and graceful shutdown.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use common::TestDir;

/// A model trained for one epoch on 3-class shapes, and one image of each class.
fn model(t: &TestDir) -> Vec<Vec<u8>> {
    t.processed(3, 12, &["--size", "16x16"]);
    t.train_one_epoch("p", "model");
    let mut images = Vec::new();
    for class in ["circle", "square", "triangle"] {
        let dir = t.path("data").join(class);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        images.push(std::fs::read(&files[0]).expect("image"));
    }
    images
}

/// A running server; killed when dropped.
struct Served {
    child: Child,
    address: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(t: &TestDir, extra: &[&str]) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(["serve", "--model", "model", "--port", "0"])
        .args(extra)
        .current_dir(t.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start shardline serve");
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    stdout.read_line(&mut line).expect("the first line");
    // Keep reading what the server prints, as a terminal would.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let address = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    Served { child, address }
}

/// One HTTP/1.1 request; returns the status and the body.
fn http(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("write");
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// A PNG whose header declares `width` x `height` pixels and whose pixels never come.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut chunk = b"IHDR".to_vec();
    chunk.extend_from_slice(&width.to_be_bytes());
    chunk.extend_from_slice(&height.to_be_bytes());
    chunk.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0d".to_vec();
    png.extend_from_slice(&chunk);
    png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    // An empty IDAT: the header is complete, the pixels never come.
    png.extend_from_slice(&[0, 0, 0, 0]);
    png.extend_from_slice(b"IDAT");
    png.extend_from_slice(&crc32(b"IDAT").to_be_bytes());
    png
}

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn both_protocols_answer_and_agree() {
    let t = TestDir::new();
    let images = model(&t);
    let s = serve(&t, &[]);
    let a = s.address.as_str();
    assert_eq!(http(a, "GET", "/ping", &[], b"").0, 200);
    assert_eq!(http(a, "GET", "/v2/health/live", &[], b"").0, 200);
    assert_eq!(http(a, "GET", "/v2/health/ready", &[], b"").0, 200);
    assert_eq!(http(a, "GET", "/v2/models/model/ready", &[], b"").0, 200);
    let (status, body) = http(a, "GET", "/v2", &[], b"");
    assert_eq!(status, 200, "{body}");
    assert!(json(&body)["name"].is_string(), "{body}");
    let (status, body) = http(a, "GET", "/v2/models/model", &[], b"");
    assert_eq!(status, 200);
    let metadata = json(&body);
    assert_eq!(
        metadata["inputs"][0]["shape"],
        serde_json::json!([-1, 3, 16, 16])
    );
    assert_eq!(metadata["outputs"][0]["shape"], serde_json::json!([-1, 3]));

    for image in &images {
        for content_type in ["image/jpeg", "application/x-image"] {
            let (status, body) = http(
                a,
                "POST",
                "/invocations?k=2",
                &[
                    ("Content-Type", content_type),
                    ("Accept", "application/json"),
                ],
                image,
            );
            assert_eq!(status, 200, "{body}");
            let answer = json(&body);
            let labels = answer["predictions"][0]["labels"]
                .as_array()
                .expect("labels");
            let probabilities = answer["predictions"][0]["probabilities"]
                .as_array()
                .expect("probabilities");
            assert_eq!((labels.len(), probabilities.len()), (2, 2), "{body}");
            assert!(probabilities[0].as_f64() >= probabilities[1].as_f64());
        }
    }
    // The v2 tensor path gives a probability row per image that sums to 1, and echoes the id.
    let zeros = vec![0.0f32; 2 * 3 * 16 * 16];
    let request = serde_json::json!({"id": "42", "inputs": [{"name": "input", "shape": [2, 3, 16, 16], "datatype": "FP32", "data": zeros}]});
    let (status, body) = http(
        a,
        "POST",
        "/v2/models/model/infer",
        &[("Content-Type", "application/json")],
        request.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    let answer = json(&body);
    assert_eq!(answer["id"], "42");
    assert_eq!(answer["outputs"][0]["shape"], serde_json::json!([2, 3]));
    let row: f64 = answer["outputs"][0]["data"].as_array().expect("data")[..3]
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .sum();
    assert!((row - 1.0).abs() < 1e-4, "{body}");
    // The same tensor through /invocations as JSON gives the same probabilities.
    let (status, same) = http(
        a,
        "POST",
        "/invocations?k=3",
        &[("Content-Type", "application/json")],
        serde_json::json!({"shape": [2, 3, 16, 16], "data": vec![0.0f32; 2 * 3 * 16 * 16]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(status, 200, "{same}");
    let top: f64 = json(&same)["predictions"][0]["probabilities"][0]
        .as_f64()
        .expect("p");
    let best = answer["outputs"][0]["data"].as_array().expect("data")[..3]
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .fold(0.0, f64::max);
    assert!((top - best).abs() < 1e-5, "{same} vs {body}");
    // Accept: text/csv is honoured.
    let (status, csv) = http(
        a,
        "POST",
        "/invocations?k=1",
        &[("Content-Type", "image/jpeg"), ("Accept", "text/csv")],
        &images[0],
    );
    assert_eq!(status, 200);
    assert!(csv.starts_with("image,label,probability\n0,"), "{csv}");
}

#[test]
fn limits_give_clear_client_errors() {
    let t = TestDir::new();
    let images = model(&t);
    let s = serve(&t, &["--body-limit", "4000"]);
    let a = s.address.as_str();
    let (status, body) = http(
        a,
        "POST",
        "/invocations",
        &[("Content-Type", "image/jpeg")],
        &vec![0u8; 5000],
    );
    assert_eq!(status, 413, "{body}");
    let (status, body) = http(
        a,
        "POST",
        "/invocations",
        &[("Content-Type", "image/png")],
        b"not an image",
    );
    assert_eq!(status, 400);
    assert!(body.contains("not a JPEG or PNG"), "{body}");
    let truncated = &images[0][..images[0].len() / 2];
    let (status, body) = http(
        a,
        "POST",
        "/invocations",
        &[("Content-Type", "image/jpeg")],
        truncated,
    );
    assert_eq!(status, 400, "{body}");
    // A PNG header declaring 100000 x 100000 pixels: refused before any decoding.
    let bomb = png_header(100_000, 100_000);
    let (status, body) = http(
        a,
        "POST",
        "/invocations",
        &[("Content-Type", "image/png")],
        &bomb,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("100000"), "{body}");
    // One image-size policy: the recipe's `max_pixels` (process's 64 Mpx by default). A
    // 5000 x 5000 image, which processing accepts, passes the endpoint's size check too (and
    // fails only on its missing pixels); 9000 x 9000 is over the recipe's limit.
    let recipe = json(&std::fs::read_to_string(t.path("model/recipe.json")).expect("recipe"));
    assert_eq!(recipe["max_pixels"], 64 * 1024 * 1024);
    for (side, over) in [(5000, false), (9000, true)] {
        let (status, body) = http(
            a,
            "POST",
            "/invocations",
            &[("Content-Type", "image/png")],
            &png_header(side, side),
        );
        assert_eq!(status, 400, "{body}");
        assert_eq!(body.contains("over the limit"), over, "{side}: {body}");
    }
    // Tensor shapes are checked against the data before anything is allocated.
    let lying = serde_json::json!({"inputs": [{"name": "input", "shape": [1000000, 3, 16, 16], "datatype": "FP32", "data": [0.0, 1.0]}]});
    let (status, body) = http(
        a,
        "POST",
        "/v2/models/model/infer",
        &[("Content-Type", "application/json")],
        lying.to_string().as_bytes(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(json(&body)["error"].is_string());
    let (status, _) = http(
        a,
        "POST",
        "/v2/models/other/infer",
        &[("Content-Type", "application/json")],
        b"{}",
    );
    assert_eq!(status, 404);
}

/// `n` clients POST an image each at the same time; their statuses.
fn at_once(address: &str, images: &[Vec<u8>], n: usize) -> Vec<u16> {
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let address = address.to_string();
            let image = images[i % images.len()].clone();
            std::thread::spawn(move || {
                http(
                    &address,
                    "POST",
                    "/invocations",
                    &[("Content-Type", "image/jpeg")],
                    &image,
                )
                .0
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("client"))
        .collect()
}

#[test]
fn concurrent_requests_are_batched_and_overload_is_refused() {
    let t = TestDir::new();
    let images = model(&t);
    let s = serve(&t, &["--max-batch", "16", "--max-delay-ms", "20"]);
    let address = s.address.clone();
    let statuses = at_once(&address, &images, 24);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let (_, metrics) = http(&address, "GET", "/metrics", &[], b"");
    // Requests per model call: 24 requests in fewer than 24 calls means batches above 1.
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{metrics}"))
    };
    let calls = value("shardline_serve_batch_size_count");
    let requests = value("shardline_serve_batch_size_sum");
    assert_eq!(requests, 24.0, "{metrics}");
    assert!(
        calls < 24.0,
        "no batching: {calls} calls for 24 requests\n{metrics}"
    );
    assert!(metrics.contains("shardline_serve_request_duration_seconds_bucket"));
    assert!(metrics.contains("shardline_serve_queue_seconds"));
    drop(s);

    // A queue of 1 before a slow batcher: the rest are refused at once with 429, not queued.
    let s = serve(
        &t,
        &["--queue", "1", "--max-batch", "1", "--max-delay-ms", "0"],
    );
    let address = s.address.clone();
    let statuses = at_once(&address, &images, 32);
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses.contains(&429),
        "no request was refused: {statuses:?}"
    );
    assert_eq!(http(&address, "GET", "/ping", &[], b"").0, 200);
}

#[test]
fn timeouts_answer_504_and_sigterm_finishes_requests_in_flight() {
    let t = TestDir::new();
    let images = model(&t);
    // The batcher waits 300 ms for company; a request allowed 50 ms gets 504.
    let s = serve(
        &t,
        &[
            "--batching",
            "delay",
            "--max-delay-ms",
            "300",
            "--timeout-ms",
            "50",
        ],
    );
    let (status, body) = http(
        &s.address,
        "POST",
        "/invocations",
        &[("Content-Type", "image/jpeg")],
        &images[0],
    );
    assert_eq!(status, 504, "{body}");
    drop(s);

    // A request waiting in the batcher when SIGTERM arrives is still answered; then the server
    // exits 0.
    let mut s = serve(&t, &["--batching", "delay", "--max-delay-ms", "1000"]);
    let address = s.address.clone();
    let image = images[1].clone();
    let client = std::thread::spawn(move || {
        http(
            &address,
            "POST",
            "/invocations",
            &[("Content-Type", "image/jpeg")],
            &image,
        )
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    terminate(&s);
    let (status, body) = client.join().expect("client");
    assert_eq!(status, 200, "{body}");
    let exit = s.child.wait().expect("wait");
    assert!(exit.success(), "{exit:?}");
}

/// Reads from `stream` until the server closes it (true) or `within` passes (false).
fn closed_within(stream: &mut TcpStream, within: std::time::Duration) -> (bool, Vec<u8>) {
    stream.set_read_timeout(Some(within)).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (true, got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (true, got),
            Err(_) => return (false, got),
        }
    }
}

/// Sends `SIGTERM` to the server.
fn terminate(s: &Served) {
    let pid = s.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
}

#[test]
fn slow_silent_and_idle_clients_are_cut_off() {
    let t = TestDir::new();
    model(&t);
    let s = serve(
        &t,
        &["--header-timeout-ms", "300", "--body-timeout-ms", "300"],
    );
    let a = s.address.as_str();
    let bound = std::time::Duration::from_secs(20);
    // Headers that never finish: the connection is closed.
    let mut partial = TcpStream::connect(a).expect("connect");
    partial
        .write_all(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Ty")
        .expect("write");
    assert!(
        closed_within(&mut partial, bound).0,
        "partial headers kept open"
    );
    // A body that stops halfway: 408, naming the timeout to raise.
    let mut slow = TcpStream::connect(a).expect("connect");
    slow.write_all(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n0123456789")
        .expect("write");
    let (closed, answer) = closed_within(&mut slow, bound);
    let answer = String::from_utf8_lossy(&answer);
    assert!(closed, "a stalled body kept open");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout_ms"), "{answer}");
    // An idle keep-alive connection after its answer: closed too.
    let mut idle = TcpStream::connect(a).expect("connect");
    idle.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let (closed, answer) = closed_within(&mut idle, bound);
    assert!(closed, "an idle keep-alive connection kept open");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    // The server still answers.
    assert_eq!(http(a, "GET", "/ping", &[], b"").0, 200);
}

#[test]
fn sigterm_answers_requests_still_in_the_accept_queue() {
    let t = TestDir::new();
    let images = model(&t);
    // Two connections served at once: the other 14 clients wait in the kernel's accept queue,
    // their requests sent in full, when the signal comes.
    let s = serve(
        &t,
        &[
            "--max-connections",
            "2",
            "--batching",
            "delay",
            "--max-delay-ms",
            "200",
        ],
    );
    let sent = std::sync::Arc::new(std::sync::Barrier::new(17));
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let address = s.address.clone();
            let image = images[i % images.len()].clone();
            let sent = sent.clone();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(&address).expect("connect");
                let head = format!(
                    "POST /invocations HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                    image.len()
                );
                stream.write_all(head.as_bytes()).expect("write");
                stream.write_all(&image).expect("write");
                sent.wait();
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
                String::from_utf8_lossy(&answer).into_owned()
            })
        })
        .collect();
    sent.wait();
    terminate(&s);
    let answers: Vec<String> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();
    let refused: Vec<&String> = answers
        .iter()
        .filter(|a| !a.starts_with("HTTP/1.1 200"))
        .collect();
    assert!(refused.is_empty(), "unanswered: {refused:?}");
    let mut s = s;
    let exit = s.child.wait().expect("wait");
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn tensors_must_be_finite_named_and_addressed_by_served_versions() {
    let t = TestDir::new();
    model(&t);
    let s = serve(&t, &[]);
    let a = s.address.as_str();
    let post = |path: &str, body: String| {
        http(
            a,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    };
    let data = |v: &str| {
        let mut values = vec!["0".to_string(); 3 * 16 * 16];
        values[7] = v.to_string();
        values.join(",")
    };
    // Over FP32's range: an infinity that would answer NaN probabilities. Both protocols.
    for big in ["1e39", "-3.5e38"] {
        let (status, body) = post(
            "/v2/models/model/infer",
            format!(
                r#"{{"inputs": [{{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [{}]}}]}}"#,
                data(big)
            ),
        );
        assert_eq!(status, 400, "{big}: {body}");
        assert!(body.contains("finite"), "{body}");
        let (status, body) = post(
            "/invocations",
            format!(r#"{{"shape": [1, 3, 16, 16], "data": [{}]}}"#, data(big)),
        );
        assert_eq!(status, 400, "{big}: {body}");
        assert!(body.contains("finite"), "{body}");
    }
    let valid = |name: &str, outputs: &str| {
        format!(
            r#"{{"inputs": [{{"name": "{name}", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [{}]}}]{outputs}}}"#,
            data("0.5")
        )
    };
    // Names are checked against the signature the metadata gives.
    let (status, body) = post("/v2/models/model/infer", valid("pixels", ""));
    assert_eq!(status, 400, "{body}");
    let error = json(&body)["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("takes \"input\""), "{body}");
    let (status, body) = post(
        "/v2/models/model/infer",
        valid("input", r#", "outputs": [{"name": "logits"}]"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("probabilities"), "{body}");
    let (status, body) = post(
        "/v2/models/model/infer",
        valid("input", r#", "outputs": [{"name": "probabilities"}]"#),
    );
    assert_eq!(status, 200, "{body}");
    // The versioned routes of the advertised version exist; another version is a 404.
    let (status, body) = http(a, "GET", "/v2/models/model", &[], b"");
    assert_eq!(status, 200);
    let version = json(&body)["versions"][0]
        .as_str()
        .expect("a version")
        .to_string();
    let base = format!("/v2/models/model/versions/{version}");
    assert_eq!(http(a, "GET", &base, &[], b"").0, 200);
    assert_eq!(http(a, "GET", &format!("{base}/ready"), &[], b"").0, 200);
    let (status, body) = post(&format!("{base}/infer"), valid("input", ""));
    assert_eq!(status, 200, "{body}");
    let (status, body) = post("/v2/models/model/versions/999/infer", valid("input", ""));
    assert_eq!(status, 404, "{body}");
}

/// The server's resident memory in KiB and its open file descriptors.
fn footprint(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

/// One malformed request of kind `i`: the statuses it may get (never a 2xx or a 5xx).
fn malformed(address: &str, i: usize, image: &[u8]) -> u16 {
    let garbage: Vec<u8> = (0..2000u32).map(|b| (b * 7919 % 251) as u8).collect();
    let json = ("Content-Type", "application/json");
    match i % 6 {
        0 => http(address, "POST", "/invocations", &[("Content-Type", "image/jpeg")], &garbage).0,
        1 => http(address, "POST", "/invocations", &[("Content-Type", "image/jpeg")], &image[..image.len() / 3]).0,
        2 => http(address, "POST", "/v2/models/model/infer", &[json], b"{\"inputs\": [{\"name\": \"input\", \"shape\": [1").0,
        3 => http(address, "POST", "/v2/models/model/infer", &[json], br#"{"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [1e39]}]}"#).0,
        4 => http(address, "POST", "/invocations", &[("Content-Type", "text/html")], b"<html>").0,
        _ => http(address, "POST", "/invocations", &[("Content-Type", "image/jpeg")], &vec![0u8; 7 * 1024 * 1024]).0,
    }
}

/// A client that stalls: partial headers, a partial body, or an idle keep-alive connection, held
/// until the server closes it.
fn stall(address: &str, i: usize) {
    let Ok(mut stream) = TcpStream::connect(address) else {
        return;
    };
    let start: &[u8] = match i % 3 {
        0 => b"POST /invocations HTTP/1.1\r\nHost: x\r\n",
        1 => b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 50000\r\n\r\nxx",
        _ => b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n",
    };
    let _ = stream.write_all(start);
    closed_within(&mut stream, std::time::Duration::from_secs(60));
}

/// The endpoint with its default limits under a mix of clients for a minute (or
/// SHARDLINE_SOAK_SECONDS): valid requests on both protocols, malformed ones, clients that stall,
/// and health checks. Valid requests never fail, malformed ones get 4xx, memory and sockets stay
/// bounded, and SIGTERM at the end answers what was sent and exits 0.
#[test]
fn soak_mixed_valid_malformed_and_slow_clients() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let seconds: u64 = std::env::var("SHARDLINE_SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let t = TestDir::new();
    let images = Arc::new(model(&t));
    let s = serve(
        &t,
        &["--header-timeout-ms", "2000", "--body-timeout-ms", "2000"],
    );
    let pid = s.child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let valid_failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let counts: Arc<[AtomicUsize; 4]> = Arc::new(Default::default());
    let mut threads = Vec::new();
    // Valid: 3 image clients and 1 tensor client, in closed loops.
    for c in 0..4 {
        let (address, images, stop, failures, counts) = (
            s.address.clone(),
            images.clone(),
            stop.clone(),
            valid_failures.clone(),
            counts.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let tensor = serde_json::json!({"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": vec![0.25f32; 768]}]}).to_string();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = if c == 3 {
                    http(&address, "POST", "/v2/models/model/infer", &[("Content-Type", "application/json")], tensor.as_bytes())
                } else {
                    http(&address, "POST", "/invocations", &[("Content-Type", "image/jpeg")], &images[i % images.len()])
                };
                counts[0].fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    failures.lock().expect("lock").push(format!("{status}: {body}"));
                }
                i += 1;
            }
        }));
    }
    // Health checks: always 200 (their slowest time is reported, not asserted).
    let slowest_ping = Arc::new(Mutex::new(std::time::Duration::ZERO));
    {
        let (address, stop, failures, counts, slowest) = (
            s.address.clone(),
            stop.clone(),
            valid_failures.clone(),
            counts.clone(),
            slowest_ping.clone(),
        );
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let asked = std::time::Instant::now();
                let (status, body) = http(&address, "GET", "/ping", &[], b"");
                let took = asked.elapsed();
                let mut longest = slowest.lock().expect("lock");
                *longest = (*longest).max(took);
                drop(longest);
                counts[1].fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    failures
                        .lock()
                        .expect("lock")
                        .push(format!("/ping {status}: {body}"));
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }));
    }
    // Malformed: 2 clients; every answer a 4xx.
    let bad_answers = Arc::new(Mutex::new(Vec::<u16>::new()));
    for c in 0..2 {
        let (address, images, stop, bad, counts) = (
            s.address.clone(),
            images.clone(),
            stop.clone(),
            bad_answers.clone(),
            counts.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let status = malformed(&address, i, &images[0]);
                counts[2].fetch_add(1, Ordering::Relaxed);
                if !(400..500).contains(&status) {
                    bad.lock().expect("lock").push(status);
                }
                i += 1;
            }
        }));
    }
    // Slow: 24 stalling clients at any time.
    for c in 0..24 {
        let (address, stop, counts) = (s.address.clone(), stop.clone(), counts.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                stall(&address, i);
                counts[3].fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    let mut samples = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed().as_secs() < seconds {
        std::thread::sleep(std::time::Duration::from_secs(1));
        samples.push(footprint(pid));
    }
    stop.store(true, Ordering::Relaxed);
    // Requests in flight when SIGTERM comes are answered.
    let last: Vec<_> = (0..6)
        .map(|i| {
            let (address, image) = (s.address.clone(), images[i % images.len()].clone());
            std::thread::spawn(move || {
                http(
                    &address,
                    "POST",
                    "/invocations",
                    &[("Content-Type", "image/jpeg")],
                    &image,
                )
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(20));
    terminate(&s);
    for t in threads {
        t.join().expect("client");
    }
    for l in last {
        let (status, body) = l.join().expect("client");
        // Sent after the listener closed is refused by the kernel (no status); once sent, answered.
        assert!(
            status == 200,
            "a request in flight at SIGTERM: {status} {body}"
        );
    }
    let mut s = s;
    let exit = s.child.wait().expect("wait");
    let [valid, pings, bad, stalls] = [0, 1, 2, 3].map(|i| counts[i].load(Ordering::Relaxed));
    let quarter = samples.len() / 4;
    let rss = |part: &[(u64, usize)]| part.iter().map(|s| s.0).max().unwrap_or(0);
    let (early, late) = (
        rss(&samples[..quarter.max(1)]),
        rss(&samples[samples.len() - quarter.max(1)..]),
    );
    let fds = samples.iter().map(|s| s.1).max().unwrap_or(0);
    eprintln!(
        "soak {seconds} s: {valid} valid requests, {pings} pings, {bad} malformed, {stalls} stalled clients; RSS {early} KiB early, {late} KiB late; at most {fds} open descriptors; slowest /ping {:?}",
        *slowest_ping.lock().expect("lock")
    );
    let failures = valid_failures.lock().expect("lock");
    assert!(
        failures.is_empty(),
        "{} valid requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let bad = bad_answers.lock().expect("lock");
    assert!(bad.is_empty(), "malformed requests answered {bad:?}");
    assert!(valid > 0 && bad.is_empty() && stalls > 0);
    // Bounded: the 24 stalling clients and the few others, plus the model's own descriptors.
    assert!(fds < 150, "{fds} open descriptors");
    assert!(
        late < early + early / 2 + 64 * 1024,
        "memory grew from {early} KiB to {late} KiB"
    );
    assert!(exit.success(), "{exit:?}");
}

/// Batch transform over a manifest, in 2 instances, gives for every object exactly what the
/// endpoint answers for the same bytes; a rerun is a no-op; an unreadable object is reported,
/// not fatal.
#[test]
fn batch_transform_and_the_endpoint_agree() {
    let t = TestDir::new();
    model(&t);
    // One object of the manifest made unreadable.
    let manifest =
        json(&std::fs::read_to_string(t.path("m/validation.manifest")).expect("manifest"));
    let prefix = manifest[0]["prefix"]
        .as_str()
        .expect("prefix")
        .trim_start_matches("file://")
        .to_string();
    let keys: Vec<String> = manifest.as_array().expect("array")[1..]
        .iter()
        .map(|k| k.as_str().expect("key").to_string())
        .collect();
    std::fs::write(std::path::Path::new(&prefix).join(&keys[0]), b"broken").expect("corrupt");
    // And one missing: listed, then deleted.
    std::fs::remove_file(std::path::Path::new(&prefix).join(&keys[1])).expect("delete");
    let transform = |extra: &[&str]| {
        let mut args = vec![
            "transform",
            "--model",
            "model",
            "--manifest",
            "m/validation.manifest",
            "--out",
            "tx",
            "--instances",
            "2",
            "-k",
            "3",
        ];
        args.extend_from_slice(extra);
        t.run(&args)
    };
    // 2 failures are over the default budget: the job fails, naming it, and no summary vouches
    // for the predictions.
    let err = transform(&[]).fails();
    assert!(err.contains("over the error budget"), "{err}");
    assert!(!t.path("tx/summary.json").exists());
    let out = transform(&["--error-budget", "0.5"]).ok();
    assert!(out.contains("(2 unreadable)"), "{out}");
    let mut lines = Vec::new();
    for host in ["algo-1", "algo-2"] {
        let text = std::fs::read_to_string(t.path(&format!("tx/predictions/{host}.jsonl")))
            .expect("jsonl");
        assert!(!text.is_empty(), "{host} got no objects");
        lines.extend(text.lines().map(json));
    }
    assert_eq!(lines.len(), keys.len());
    let summary = json(&std::fs::read_to_string(t.path("tx/summary.json")).expect("summary"));
    assert_eq!(summary["predicted"], keys.len() as u64 - 2);
    assert_eq!(summary["failed"], 2);

    let s = serve(&t, &[]);
    for line in &lines {
        let key = line["key"].as_str().expect("key");
        if key == keys[1] {
            let error = line["prediction"]["error"].as_str().expect("an error");
            assert!(error.contains("could not be read"), "{line}");
            continue;
        }
        let bytes = std::fs::read(std::path::Path::new(&prefix).join(key)).expect("object");
        if key == keys[0] {
            assert!(line["prediction"]["error"].is_string(), "{line}");
            continue;
        }
        let (status, body) = http(
            &s.address,
            "POST",
            "/invocations?k=3",
            &[("Content-Type", "image/jpeg")],
            &bytes,
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(line["prediction"], json(&body)["predictions"][0], "{key}");
    }
    // A rerun finds both instances done.
    let again = transform(&["--error-budget", "0.5"]).ok();
    assert_eq!(again.matches("already done").count(), 2, "{again}");
    // Nothing predicted fails whatever the budget.
    for key in &keys {
        let _ = std::fs::remove_file(std::path::Path::new(&prefix).join(key));
    }
    let err = t
        .run(&[
            "transform",
            "--model",
            "model",
            "--manifest",
            "m/validation.manifest",
            "--out",
            "none",
            "--error-budget",
            "1",
        ])
        .fails();
    assert!(err.contains("objects failed"), "{err}");
}

/// A transform whose instances are processes of an external launcher (a Kubernetes Indexed Job's
/// pods: `JOB_COMPLETION_INDEX`, `SHARDLINE_WORLD_SIZE`) writes what one process with threads
/// writes: the same predictions per instance, and a summary from instance 0.
#[test]
fn a_transform_run_as_one_process_per_instance_equals_the_threaded_one() {
    let t = TestDir::new();
    model(&t);
    let args = |manifest: &str, out: &str| -> Vec<String> {
        [
            "transform",
            "--model",
            "model",
            "--manifest",
            manifest,
            "--out",
            out,
            "-k",
            "3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut threaded = args("m/validation.manifest", "threads");
    threaded.extend(["--instances".to_string(), "3".to_string()]);
    let threaded: Vec<&str> = threaded.iter().map(String::as_str).collect();
    t.run(&threaded).ok();
    // Each instance a process of its own (each streams its share from a sorted manifest, or
    // reads an unsorted one whole); instance 0 first: it waits for the others' records before it
    // writes the summary.
    let run_pods = |manifest: &str, out: &str| {
        let mut pods = Vec::new();
        for index in 0..3 {
            let child = std::process::Command::new(env!("CARGO_BIN_EXE_shardline"))
                .args(args(manifest, out))
                .current_dir(t.dir.path())
                .env("JOB_COMPLETION_INDEX", index.to_string())
                .env("SHARDLINE_WORLD_SIZE", "3")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("a pod");
            pods.push(child);
            if index == 0 {
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
        }
        for (index, pod) in pods.into_iter().enumerate() {
            let out = pod.wait_with_output().expect("wait");
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "instance {index}: {text}");
            assert!(
                text.contains(&format!("instance algo-{} of 3", index + 1)),
                "{text}"
            );
        }
    };
    run_pods("m/validation.manifest", "pods");
    // The same keys out of order: read whole and sorted, the same shares.
    let sorted = std::fs::read(t.path("m/validation.manifest")).expect("manifest");
    let mut entries: Vec<serde_json::Value> = serde_json::from_slice(&sorted).expect("json");
    entries[1..].reverse();
    std::fs::write(
        t.path("m/unsorted.manifest"),
        serde_json::to_vec(&entries).expect("json"),
    )
    .expect("write");
    run_pods("m/unsorted.manifest", "unsorted");
    for host in ["algo-1", "algo-2", "algo-3"] {
        let read = |dir: &str| {
            std::fs::read(t.path(&format!("{dir}/predictions/{host}.jsonl"))).expect("jsonl")
        };
        assert_eq!(read("threads"), read("pods"), "{host}");
        assert_eq!(read("threads"), read("unsorted"), "{host}");
    }
    let summary = |dir: &str| {
        json(&std::fs::read_to_string(t.path(&format!("{dir}/summary.json"))).expect("summary"))
    };
    let (a, b) = (summary("threads"), summary("pods"));
    for field in ["job", "objects", "predicted", "failed"] {
        assert_eq!(a[field], b[field], "{field}");
    }
    assert_eq!(b["instances"].as_array().map(Vec::len), Some(3));
}

/// A transform whose model cannot be used says so as the transform, naming the model.
#[test]
fn a_transform_of_a_missing_model_names_it_as_the_transform() {
    let t = TestDir::new();
    let err = t
        .run(&[
            "transform",
            "--model",
            "nomodel",
            "--manifest",
            "x.manifest",
            "--out",
            "o",
        ])
        .fails();
    assert!(
        err.contains("transform: input model nomodel: holds neither model.json nor model.tar.gz"),
        "{err}"
    );
    assert!(!err.contains("serve:"), "{err}");
}

/// Instance 0 of a launcher's transform whose other instances never come gives up after
/// `--wait-timeout`, naming them and what to do.
#[test]
fn instance_zero_waits_for_the_others_only_as_long_as_it_is_told() {
    let t = TestDir::new();
    model(&t);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args([
            "transform",
            "--model",
            "model",
            "--manifest",
            "m/validation.manifest",
            "--out",
            "alone",
            "--wait-timeout",
            "1",
        ])
        .current_dir(t.dir.path())
        .env("JOB_COMPLETION_INDEX", "0")
        .env("SHARDLINE_WORLD_SIZE", "3")
        .output()
        .expect("transform");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("waiting (at most 1 s) for 2 other instance(s)"),
        "{text}"
    );
    assert!(
        text.contains("instances algo-2, algo-3 did not finish within 1 s"),
        "{text}"
    );
    assert!(!t.path("alone/summary.json").exists());
    // Instance 1 started with a world size of 2, instance 0 with 3: instance 0 says so at once
    // instead of waiting out its timeout.
    let rank = |index: &str, world: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_shardline"))
            .args([
                "transform",
                "--model",
                "model",
                "--manifest",
                "m/validation.manifest",
                "--out",
                "split",
                "--wait-timeout",
                "600",
            ])
            .current_dir(t.dir.path())
            .env("JOB_COMPLETION_INDEX", index)
            .env("SHARDLINE_WORLD_SIZE", world)
            .output()
            .expect("transform")
    };
    assert!(rank("1", "2").status.success());
    let out = rank("0", "3");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("algo-2 ran this job with 2"), "{text}");
}

/// A transform of a manifest that is not there names it as the transform's input.
#[test]
fn a_transform_of_a_missing_manifest_names_it() {
    let t = TestDir::new();
    model(&t);
    let err = t
        .run(&[
            "transform",
            "--model",
            "model",
            "--manifest",
            "m/none.manifest",
            "--out",
            "o",
        ])
        .fails();
    assert!(
        err.contains("transform: input m/none.manifest: does not exist; give a manifest"),
        "{err}"
    );
}
