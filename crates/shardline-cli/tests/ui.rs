//! `shardline ui` in a real browser: the quickstart pipeline runs (twice, the second from cache),
//! the dashboard serves its store on a loopback port, and Debian's headless chromium opens every
//! page. The DOM after the scripts ran must show each step in the DAG, the chart series, the
//! confusion matrix's cells and the instances' log lines; the log page of a step of a real
//! pipeline that is running must receive the lines it prints (read through DevTools), and the
//! running execution's page must follow it to its end; any console message (a CSP violation, a script error) fails the test.
//! Screenshots of the execution and training pages are saved under the target directory.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestDir;

/// A child process killed and reaped when dropped, also when the test fails.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What chromium gave for one page: the DOM after scripts ran, and its log.
struct Visit {
    dom: String,
    log: String,
}

fn chromium() -> &'static str {
    let found = Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "chromium is not installed: .ci/run installs it (apt-get install chromium); the dashboard's browser test needs it"
    );
    "chromium"
}

/// Headless chromium with its own profile, logging its console to stderr.
fn headless(profile: &Path) -> Command {
    let mut command = Command::new(chromium());
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// Runs headless chromium with `args` on `url`, killed after a minute.
fn browse(profile: &Path, url: &str, args: &[&str]) -> Visit {
    let child = headless(profile)
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let mut child = Running(child);
    let started = Instant::now();
    loop {
        match child.0.try_wait().expect("wait for chromium") {
            Some(_) => break,
            None if started.elapsed() > Duration::from_secs(60) => {
                panic!("chromium did not finish {url} within a minute")
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let mut dom = String::new();
    let mut log = String::new();
    use std::io::Read;
    if let Some(mut out) = child.0.stdout.take() {
        let _ = out.read_to_string(&mut dom);
    }
    if let Some(mut err) = child.0.stderr.take() {
        let _ = err.read_to_string(&mut log);
    }
    Visit { dom, log }
}

/// The page's DOM after its scripts ran, with no console message in the browser's log.
fn open(profile: &Path, url: &str) -> String {
    let visit = browse(profile, url, &["--dump-dom"]);
    let console: Vec<&str> = visit
        .log
        .lines()
        .filter(|l| {
            l.contains("CONSOLE")
                || l.contains("Content Security Policy")
                || l.contains("Refused to")
                || l.contains("Uncaught")
        })
        .collect();
    assert!(
        console.is_empty(),
        "{url}: console messages:\n{}",
        console.join("\n")
    );
    assert!(
        visit.dom.contains("<body class=\"scripted\"") || visit.dom.contains("scripted\""),
        "{url}: app.js did not run:\n{}\n{}",
        visit.dom,
        visit.log
    );
    visit.dom
}

/// Starts a real pipeline whose one step, `slow`, prints a line every 200 ms until the file
/// `stop` appears; returns the running coordinator and the execution's id once its step runs.
fn live_pipeline(t: &TestDir, stop: &Path) -> (Running, String) {
    std::fs::create_dir_all(t.path("live-in")).expect("mkdir");
    std::fs::write(t.path("live-in/part-0.csv"), "1,2\n").expect("input");
    let script = t.path("slow.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nn=0\nwhile [ ! -f {stop} ]; do n=$((n+1)); echo \"line $n printed while the page was open\"; sleep 0.2; done\necho done > \"$SM_MODEL_DIR/done.txt\"\n",
            stop = stop.display()
        ),
    )
    .expect("script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(
        t.path("live.toml"),
        format!(
            "name = \"live\"\n\n[steps.slow]\nkind = \"command\"\ncontract = \"training\"\nprogram = \"{}\"\ninputs = {{ train = \"{}\" }}\nout = \"{}\"\n",
            script.display(),
            t.arg("live-in"),
            t.arg("live-out")
        ),
    )
    .expect("definition");
    let child = Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(["pipeline", "run", "live.toml"])
        .current_dir(t.path(""))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the live pipeline");
    let running = Running(child);
    let waited = Instant::now();
    loop {
        let shown = t.run(&["pipeline", "show", "last", "--json"]);
        if let Ok(shown) = serde_json::from_str::<serde_json::Value>(&shown.stdout())
            && shown["execution"]["pipeline"] == "live"
            && shown["steps"][0]["status"] == "running"
        {
            let id = shown["execution"]["id"].as_str().expect("id").to_string();
            return (running, id);
        }
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "the live pipeline's step did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A page kept open in chromium and read through the DevTools protocol (JSON over a WebSocket):
/// `--dump-dom` dumps at the load event, before an event stream has delivered anything.
struct Devtools {
    socket: std::net::TcpStream,
    next: u64,
    log: std::path::PathBuf,
    _browser: Running,
}

/// One HTTP/1.1 GET to a loopback port; the body, or `None` when nothing answers yet.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    Some(text.split_once("\r\n\r\n")?.1.to_string())
}

impl Devtools {
    fn open(profile: &Path, url: &str) -> Devtools {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = profile.join("devtools-stderr.log");
        let child = headless(&profile.join("devtools"))
            .arg(format!("--remote-debugging-port={port}"))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("the browser's log"))
            .spawn()
            .expect("start chromium");
        let browser = Running(child);
        let started = Instant::now();
        let target = loop {
            let page = http_get(port, "/json/list")
                .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
                .and_then(|list| {
                    list.as_array()?
                        .iter()
                        .find(|t| t["type"] == "page" && t["url"] == url)?["webSocketDebuggerUrl"]
                        .as_str()
                        .map(str::to_string)
                });
            match page {
                Some(ws) => break ws,
                None if started.elapsed() > Duration::from_secs(60) => {
                    panic!("chromium did not open {url} for DevTools within a minute")
                }
                None => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let path = &target[target.find("/devtools/").expect("a DevTools path")..];
        let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).expect("DevTools");
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        use std::io::{Read, Write};
        write!(
            socket,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .expect("upgrade");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            socket.read_exact(&mut byte).expect("the upgrade answer");
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        Devtools {
            socket,
            next: 0,
            log,
            _browser: browser,
        }
    }

    /// The value of a JavaScript expression in the page.
    fn evaluate(&mut self, expression: &str) -> serde_json::Value {
        use std::io::{Read, Write};
        self.next += 1;
        let call = serde_json::json!({
            "id": self.next,
            "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": true},
        })
        .to_string();
        // A client's frame: final, text, masked.
        let mut frame = vec![0x81u8];
        let len = call.len();
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else if len < 65536 {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&mask);
        frame.extend(call.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.socket.write_all(&frame).expect("send to DevTools");
        loop {
            let mut message = Vec::new();
            loop {
                let mut h = [0u8; 2];
                self.socket.read_exact(&mut h).expect("a DevTools frame");
                let mut len = u64::from(h[1] & 0x7f);
                if len == 126 {
                    let mut b = [0u8; 2];
                    self.socket.read_exact(&mut b).expect("length");
                    len = u64::from(u16::from_be_bytes(b));
                } else if len == 127 {
                    let mut b = [0u8; 8];
                    self.socket.read_exact(&mut b).expect("length");
                    len = u64::from_be_bytes(b);
                }
                let mut payload = vec![0u8; len as usize];
                self.socket.read_exact(&mut payload).expect("payload");
                assert_ne!(h[0] & 0x0f, 0x8, "DevTools closed the connection");
                message.extend_from_slice(&payload);
                if h[0] & 0x80 != 0 {
                    break;
                }
            }
            let reply: serde_json::Value = serde_json::from_slice(&message).expect("JSON");
            if reply["id"] == self.next {
                return reply["result"]["result"]["value"].clone();
            }
        }
    }

    /// Waits until `condition` (JavaScript) is true in the page, for at most 20 s.
    fn wait_for(&mut self, condition: &str) -> bool {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if self.evaluate(condition) == serde_json::Value::Bool(true) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// The browser's console messages so far.
    fn console(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("CONSOLE") || l.contains("Refused to") || l.contains("Uncaught"))
            .map(str::to_string)
            .collect()
    }
}

fn screenshot(profile: &Path, url: &str, file: &Path) {
    let shot = format!("--screenshot={}", file.display());
    browse(
        profile,
        url,
        &[&shot, "--window-size=1280,900", "--hide-scrollbars"],
    );
    assert!(
        std::fs::metadata(file).is_ok_and(|m| m.len() > 10_000),
        "{url}: no screenshot at {}",
        file.display()
    );
}

/// The first `href` in `dom` that starts with `prefix`.
fn href<'a>(dom: &'a str, prefix: &str) -> &'a str {
    let at = dom
        .find(&format!("href=\"{prefix}"))
        .unwrap_or_else(|| panic!("no link to {prefix} in {dom}"));
    let rest = &dom[at + 6..];
    &rest[..rest.find('"').expect("closing quote")]
}

#[test]
fn every_page_opens_in_headless_chromium_with_its_content_and_no_console_error() {
    chromium();
    let t = TestDir::new();
    let quickstart = [
        "quickstart",
        "--per-class",
        "20",
        "--param",
        "epochs=6",
        "--param",
        "min_accuracy=0",
    ];
    t.run(&quickstart).ok();
    t.run(&quickstart).ok();
    let shown: serde_json::Value =
        serde_json::from_str(&t.run(&["pipeline", "show", "last", "--json"]).ok())
            .expect("show --json");
    let id = shown["execution"]["id"].as_str().expect("id").to_string();
    let steps: Vec<String> = shown["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["step"].as_str().expect("name").to_string())
        .collect();
    assert!(steps.len() >= 9, "{steps:?}");

    let server = Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(["ui", "--port", "0", "--registry", "memory://none"])
        .current_dir(t.path(""))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start shardline ui");
    let mut server = Running(server);
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the address line");
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim_end_matches('/')
        .to_string();
    let profile = tempfile::tempdir().expect("profile");
    let profile = profile.path();

    // The executions list, with a link to compare the two runs.
    let list = open(profile, &format!("{base}/"));
    assert!(list.contains(&id), "{list}");
    let compare = href(&list, "/compare?").replace("&amp;", "&");
    let dom = open(profile, &format!("{base}{compare}"));
    assert!(
        dom.contains("Parameters that differ") && dom.contains("hit"),
        "{dom}"
    );

    // The first execution (everything ran; the list is newest first): its DAG has every step.
    let first_id = list
        .split("href=\"/executions/")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .find(|other| *other != id)
        .expect("the first execution in the list")
        .to_string();
    for execution in [&id, &first_id] {
        let dom = open(profile, &format!("{base}/executions/{execution}"));
        for step in &steps {
            assert!(
                dom.contains(&format!("data-node=\"{step}\"")),
                "{step} is not in the DAG of {execution}:\n{dom}"
            );
        }
        assert!(dom.contains("class=\"edge"), "{dom}");
    }
    let dom = open(profile, &format!("{base}/executions/{first_id}"));
    assert!(dom.contains("class=\"edge critical\""), "{dom}");
    std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-execution.html"),
        &dom,
    )
    .expect("keep the DOM");

    // The process step's two instances' logs, interleaved with their gutter.
    let dom = open(
        profile,
        &format!("{base}/executions/{first_id}/steps/process/logs"),
    );
    assert!(
        dom.contains(">algo-1</td>") && dom.contains(">algo-2</td>"),
        "{dom}"
    );
    assert!(dom.contains("algo-2 attempt 1"), "{dom}");
    let dom = open(
        profile,
        &format!("{base}/executions/{first_id}/steps/process/logs?view=side"),
    );
    assert!(dom.contains("class=\"side\""), "{dom}");

    // The data: class balance (4 classes, 3 channels) and each instance's processing report.
    let dom = open(profile, &format!("{base}/executions/{first_id}/data"));
    assert_eq!(dom.matches("<rect class=\"bar").count(), 12, "{dom}");
    assert!(
        dom.contains(">algo-1<") && dom.contains(">algo-2<"),
        "{dom}"
    );

    // Training curves: loss and accuracy, train and validation, per epoch.
    let dom = open(profile, &format!("{base}/executions/{first_id}/training"));
    for series in ["train_loss", "validation_loss", "train_accuracy"] {
        assert!(dom.contains(series), "{series}: {dom}");
    }
    assert!(dom.matches("<polyline").count() >= 5, "{dom}");

    // The model and its confusion matrix: 4 classes, 16 cells.
    let dom = open(profile, &format!("{base}/models"));
    let model = href(&dom, "/models/").to_string();
    let dom = open(profile, &format!("{base}{model}"));
    let confusion = &dom[dom
        .find("class=\"confusion\"")
        .expect("the confusion matrix")..];
    let confusion = &confusion[..confusion.find("</table>").expect("its end")];
    assert_eq!(
        confusion.matches("<td class=\"heat").count(),
        16,
        "{confusion}"
    );
    assert!(dom.contains("precision"), "{dom}");
    // The model's lineage: the train step run that wrote it.
    let lineage = href(&dom, "/lineage?").replace("&amp;", "&");
    let dom = open(profile, &format!("{base}{lineage}"));
    assert!(dom.contains("data-node=\"train\""), "{dom}");

    // An output's lineage neighbourhood.
    let dom = open(profile, &format!("{base}/executions/{first_id}"));
    let lineage = href(&dom, "/lineage?").replace("&amp;", "&");
    let dom = open(profile, &format!("{base}{lineage}"));
    assert!(
        dom.contains("class=\"dag\"") && dom.contains("wrote"),
        "{dom}"
    );

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    screenshot(
        profile,
        &format!("{base}/executions/{first_id}"),
        &shots.join("execution.png"),
    );
    screenshot(
        profile,
        &format!("{base}/executions/{first_id}/training"),
        &shots.join("training.png"),
    );
    // A step of a real pipeline that is running: its log page tails what the step prints, in
    // the browser.
    let stop = t.path("stop-the-live-step");
    let (live, live_id) = live_pipeline(&t, &stop);
    let mut page = Devtools::open(
        profile,
        &format!("{base}/executions/{live_id}/steps/slow/logs"),
    );
    assert!(
        page.wait_for("[...document.querySelectorAll('tr.tailed')].some(r => r.textContent.includes('printed while the page was open'))"),
        "the live tail did not arrive: {}",
        page.evaluate("document.documentElement.outerHTML")
    );
    assert!(page.console().is_empty(), "{:?}", page.console());
    drop(page);
    // Search jumps to a match, centred with the lines around it.
    let mut page = Devtools::open(
        profile,
        &format!("{base}/executions/{first_id}/steps/process/logs"),
    );
    assert!(page.wait_for("document.body.classList.contains('scripted')"));
    page.evaluate(
        "const s = document.getElementById('search'); s.value = 'attempt 1'; \
         s.dispatchEvent(new Event('input')); \
         s.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter'})); true",
    );
    let current = page.evaluate("document.querySelector('.line.current').textContent");
    assert!(
        current.as_str().is_some_and(|l| l.contains("attempt 1")),
        "{current}"
    );
    let count = page.evaluate("document.getElementById('search-count').textContent");
    assert!(
        count.as_str().is_some_and(|c| c.ends_with(" matches")),
        "{count}"
    );
    drop(page);

    // The running execution's page: a live update keeps the reader where they were, and the
    // page follows the execution to its end when the step finishes.
    let mut page = Devtools::open(profile, &format!("{base}/executions/{live_id}"));
    assert!(page.wait_for("document.body.classList.contains('scripted')"));
    page.evaluate(
        "document.body.style.minHeight = '5000px'; window.scrollTo(0, 1234); \
         document.querySelector('#live > p').dataset.old = 'yes'; true",
    );
    assert!(
        page.wait_for("document.querySelector('#live > p').dataset.old === undefined"),
        "no live update arrived"
    );
    assert_eq!(page.evaluate("window.scrollY"), serde_json::json!(1234));
    std::fs::write(&stop, b"").expect("stop the step");
    assert!(
        page.wait_for("document.body.classList.contains('ended') && document.querySelector('#live .st-succeeded') !== null"),
        "the page did not follow the execution to its end: {}",
        page.evaluate("document.documentElement.outerHTML")
    );
    assert_eq!(page.evaluate("window.scrollY"), serde_json::json!(1234));
    assert!(page.console().is_empty(), "{:?}", page.console());
    drop(page);
    drop(live);

    // A pipeline of 55 steps: its DAG holds every step, and no two nodes overlap on screen.
    let mut big = String::from("name = \"big\"\nmax_parallel = 4\n");
    for i in 0..55 {
        big.push_str(&format!(
            "\n[steps.s{i:02}]\nkind = \"datagen\"\nout = \"big/s{i:02}\"\nclasses = 2\nper_class = 1\nsize = 8\n"
        ));
        if i >= 5 {
            big.push_str(&format!("after = [\"s{:02}\"]\n", i - 5));
        }
    }
    std::fs::write(t.path("big.toml"), big).expect("definition");
    t.run(&["pipeline", "run", "big.toml"]).ok();
    let shown: serde_json::Value =
        serde_json::from_str(&t.run(&["pipeline", "show", "last", "--json"]).ok())
            .expect("show --json");
    let big_id = shown["execution"]["id"].as_str().expect("id").to_string();
    let mut page = Devtools::open(profile, &format!("{base}/executions/{big_id}"));
    assert!(page.wait_for("document.body.classList.contains('scripted')"));
    let layout = page.evaluate(
        "(() => { const r = [...document.querySelectorAll('svg.dag g.node')].map(g => g.getBoundingClientRect()); \
         let overlaps = 0; \
         for (let i = 0; i < r.length; i++) for (let j = i + 1; j < r.length; j++) { \
           const a = r[i], b = r[j]; \
           if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) overlaps++; } \
         return r.length + ' nodes, ' + overlaps + ' overlapping'; })()",
    );
    assert_eq!(layout, serde_json::json!("55 nodes, 0 overlapping"));
    assert!(page.console().is_empty(), "{:?}", page.console());
    drop(page);

    // The server is still up and answered everything.
    assert!(server.0.try_wait().expect("server").is_none());
}
