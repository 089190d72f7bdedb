//! `shardline ui` in a real browser: the quickstart pipeline runs (twice, the second from cache),
//! the dashboard serves its store on a loopback port, and Debian's headless chromium opens every
//! page. The DOM after the scripts ran must show each step in the DAG, the chart series, the
//! confusion matrix's cells and the instances' log lines; any console message (a CSP violation,
//! a script error) fails the test. Screenshots of the execution and training pages are saved
//! under the target directory.

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

/// Runs headless chromium with `args` on `url`, killed after a minute.
fn browse(profile: &Path, url: &str, args: &[&str]) -> Visit {
    let child = Command::new(chromium())
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
        .arg(format!("--user-data-dir={}", profile.display()))
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
    // The server is still up and answered everything.
    assert!(server.0.try_wait().expect("server").is_none());
}
