//! `shardline pipeline`, `shardline logs` and `shardline lineage` as a user runs them: the real
//! binary on real files, with its execution store in the test's own state directory.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::TestDir;

/// Writes a definition into the test directory and returns its path.
fn definition(t: &TestDir, name: &str, text: &str) -> String {
    std::fs::write(t.path(name), text).expect("write the definition");
    t.arg(name)
}

/// The JSON of `pipeline show last --json`.
fn show(t: &TestDir) -> serde_json::Value {
    let stdout = t.run(&["pipeline", "show", "last", "--json"]).ok();
    serde_json::from_str(&stdout).expect("show --json is JSON")
}

fn step<'a>(shown: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    shown["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {shown}"))
}

/// A datagen → manifest pipeline whose seed and size are parameters.
const SMALL: &str = r#"
name = "small"

[params]
seed = 1
per_class = 6

[steps.data]
kind = "datagen"
out = "data"
classes = 2
per_class = "{{ params.per_class }}"
size = 16

[steps.manifests]
kind = "manifest"
source = "{{ steps.data.outputs.out }}"
out = "manifests"
seed = "{{ params.seed }}"
split = "train=0.5,validation=0.25,test=0.25"

[steps.enough]
kind = "condition"
left = "{{ steps.data.report.images }}"
op = ">="
right = 10
if_steps = ["done"]
else_steps = ["too_few"]

[steps.done]
kind = "datagen"
out = "more"
classes = 1
per_class = 1
size = 8

[steps.too_few]
kind = "fail"
message = "only {{ steps.data.report.images }} images"
"#;

#[test]
fn quickstart_is_the_pipeline_and_a_second_run_is_entirely_from_cache() {
    let t = TestDir::new();
    let args = [
        "quickstart",
        "--per-class",
        "20",
        "--param",
        "epochs=2",
        "--param",
        "min_accuracy=0",
    ];
    let stdout = t.run(&args).ok();
    assert!(stdout.contains("succeeded"), "{stdout}");
    for step in [
        "data",
        "manifests",
        "process",
        "train",
        "evaluate",
        "register",
        "predict",
    ] {
        assert!(
            stdout.contains(&format!("✓ {step} succeeded")),
            "{step}: {stdout}"
        );
    }
    assert!(stdout.contains("too_low skipped"), "{stdout}");
    assert!(t.path("quickstart-out/manifests/lineage.json").is_file());
    assert!(
        t.path("quickstart-out/registry/models/shapes/1/model.tar.gz")
            .is_file()
    );
    assert!(t.path("quickstart-out/predictions/summary.json").is_file());
    // Each of the 2 instances kept its own log, and the pipeline keeps it per attempt.
    let log = t
        .run(&["logs", "last", "process", "--instance", "algo-2"])
        .ok();
    assert!(log.contains("algo-2 attempt 1"), "{log}");

    let stdout = t.run(&args).ok();
    for step in [
        "data",
        "manifests",
        "process",
        "train",
        "evaluate",
        "register",
        "predict",
    ] {
        assert!(
            stdout.contains(&format!("= {step} cached")),
            "{step}: {stdout}"
        );
    }
    assert!(
        !stdout.contains("▶"),
        "nothing runs the second time: {stdout}"
    );
    // Nothing was registered twice.
    assert!(!t.path("quickstart-out/registry/models/shapes/2").exists());

    // The registered model's lineage, by registry reference: up to the raw data, and what used it.
    let registry = t.arg("quickstart-out/registry");
    let lineage = t
        .run(&[
            "lineage",
            "model:shapes:1",
            "--registry",
            &registry,
            "--json",
        ])
        .ok();
    let lineage: serde_json::Value = serde_json::from_str(&lineage).expect("json");
    assert_eq!(lineage["upstream"]["run"]["step"], "register");
    let text = lineage["upstream"].to_string();
    for step in ["train", "process", "manifests", "data"] {
        assert!(
            text.contains(&format!("\"step\":\"{step}\"")),
            "{step} upstream: {text}"
        );
    }
    assert_eq!(lineage["downstream"]["next"][0]["run"]["step"], "predict");
}

#[test]
fn validation_reports_every_problem_with_line_and_column_and_runs_nothing() {
    let t = TestDir::new();
    let file = definition(
        &t,
        "bad.toml",
        r#"name = "bad"
[params]
epochs = 3
[steps.gen]
kind = "datagen"
out = "d"
clases = 2
[steps.train]
kind = "trian"
[steps.m]
kind = "manifest"
source = "{{ steps.nope.outputs.out }}"
out = "{{ params.missing }}"
split = "{{ params.epochs }}"
"#,
    );
    let stderr = t.run(&["pipeline", "run", &file]).fails();
    assert!(
        stderr.contains("problems in the definition, nothing was run"),
        "{stderr}"
    );
    for expected in [
        "bad.toml:7:1: a datagen step has no setting `clases`; did you mean `classes`?",
        "bad.toml:9:8: unknown step kind \"trian\"; did you mean `train`?",
        "bad.toml:12:10: `source` of step `m` uses step `nope`, which does not exist",
        "bad.toml:13:7: `out` of step `m` uses parameter `missing`, which is not declared",
        "bad.toml:14:9: `split` of step `m` cannot use a reference",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(!t.path("d").exists(), "nothing ran");
    assert!(!t.path(".shardline").exists(), "no execution was recorded");
}

#[test]
fn cache_hits_and_misses_explain_themselves() {
    let t = TestDir::new();
    let file = definition(&t, "small.toml", SMALL);
    t.run(&["pipeline", "run", &file]).ok();
    let stdout = t.run(&["pipeline", "run", &file]).ok();
    assert!(stdout.contains("= data cached"), "{stdout}");
    assert!(stdout.contains("= manifests cached"), "{stdout}");

    // A changed file at the same path: the manifest step's input changed.
    let circle = t.path("data/circle");
    let first = std::fs::read_dir(&circle)
        .expect("data")
        .next()
        .expect("an image")
        .expect("entry")
        .path();
    let mut bytes = std::fs::read(&first).expect("image");
    bytes.push(0);
    std::fs::write(&first, &bytes).expect("rewrite");
    let plan = t.run(&["pipeline", "plan", &file]).ok();
    assert!(
        plan.contains("miss: output") && plan.contains("was changed"),
        "datagen's own output changed: {plan}"
    );
    let stdout = t.run(&["pipeline", "run", &file]).ok();
    // datagen writes the image back as it was; the manifests are then still valid.
    assert!(stdout.contains("✓ data succeeded"), "{stdout}");
    assert!(stdout.contains("= manifests cached"), "{stdout}");

    // A deleted output.
    std::fs::remove_file(t.path("manifests/train.manifest")).expect("delete");
    let stdout = t.run(&["pipeline", "run", &file]).ok();
    assert!(
        stdout.contains("miss: output") && stdout.contains("manifests/train.manifest was deleted"),
        "{stdout}"
    );
    assert!(t.path("manifests/train.manifest").is_file(), "rewritten");

    // A changed setting.
    let stdout = t.run(&["pipeline", "run", &file, "--param", "seed=2"]).ok();
    assert!(stdout.contains("miss: setting seed 1 → 2"), "{stdout}");
    let shown = show(&t);
    assert_eq!(step(&shown, "manifests")["cache"], "miss");
    assert!(
        step(&shown, "manifests")["reason"]
            .as_str()
            .expect("reason")
            .contains("setting seed 1 → 2")
    );

    // --no-cache runs everything.
    let stdout = t.run(&["pipeline", "run", &file, "--no-cache"]).ok();
    assert!(stdout.contains("cache off (--no-cache)"), "{stdout}");
}

#[test]
fn a_changed_input_file_at_the_same_path_is_a_miss() {
    let t = TestDir::new();
    t.shapes("raw", 2, 6);
    let file = definition(
        &t,
        "m.toml",
        r#"
[steps.manifests]
kind = "manifest"
source = "raw"
out = "manifests"
split = "train=0.5,validation=0.25,test=0.25"
"#,
    );
    t.run(&["pipeline", "run", &file]).ok();
    let first = t.path("raw/circle");
    let image = std::fs::read_dir(&first)
        .expect("raw")
        .next()
        .expect("image")
        .expect("entry")
        .path();
    let mut bytes = std::fs::read(&image).expect("image");
    bytes.extend_from_slice(b"changed");
    std::fs::write(&image, &bytes).expect("rewrite");
    let stdout = t.run(&["pipeline", "run", &file]).ok();
    assert!(
        stdout.contains("miss: input source content changed"),
        "{stdout}"
    );
}

#[test]
fn a_condition_chooses_a_branch_and_a_fail_step_ends_the_execution() {
    let t = TestDir::new();
    let file = definition(&t, "small.toml", SMALL);
    // 2 classes × 6 images = 12 ≥ 10: `done` runs, `too_few` is skipped.
    let stdout = t.run(&["pipeline", "run", &file]).ok();
    assert!(stdout.contains("✓ done succeeded"), "{stdout}");
    assert!(stdout.contains("too_few skipped"), "{stdout}");
    // 2 × 4 = 8 < 10: the fail step ends the execution with its message.
    let run = t.run(&["pipeline", "run", &file, "--param", "per_class=4"]);
    let stdout = run.stdout();
    let stderr = run.fails();
    assert!(
        stderr.contains("fail step `too_few`: only 8 images"),
        "{stderr}"
    );
    assert!(stdout.contains("done skipped"), "{stdout}");
    assert!(stdout.contains("did not run:"), "{stdout}");
    let shown = show(&t);
    assert_eq!(shown["execution"]["status"], "failed");
    assert_eq!(step(&shown, "enough")["report"]["outcome"], false);
}

/// A processing-contract command step: `program` runs once per instance with the input
/// channel mounted; `inputs` is a small folder.
fn command_step(name: &str, program: &str, extra: &str) -> String {
    format!(
        r#"
[steps.{name}]
kind = "command"
contract = "processing"
program = '''{program}'''
inputs = {{ train = "input" }}
out = "out-{name}"
{extra}
"#
    )
}

/// Starts `pipeline run FILE` in the background and waits until `marker` exists (its step
/// started).
fn start_until(t: &TestDir, file: &str, marker: &str) -> std::process::Child {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(["pipeline", "run", file])
        .current_dir(t.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    for _ in 0..300 {
        if t.path(marker).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(t.path(marker).exists(), "the step started");
    child
}

fn with_input(t: &TestDir) {
    // A store prefix whose first level is the class.
    std::fs::create_dir_all(t.path("input/x")).expect("input");
    std::fs::write(t.path("input/x/a.txt"), b"a").expect("input file");
}

#[test]
fn steps_whose_inputs_are_ready_run_at_once() {
    let t = TestDir::new();
    with_input(&t);
    let dir = t.arg("");
    // Each step waits for the other to have started: they succeed only if they run at once.
    let wait = |me: &str, other: &str| {
        format!(
            "sh -c 'touch {dir}/{me}.started; for i in $(seq 100); do [ -f {dir}/{other}.started ] && exit 0; sleep 0.1; done; exit 1'"
        )
    };
    let text = format!(
        "name = \"parallel\"\nmax_parallel = 2\n{}{}",
        command_step("a", &wait("a", "b"), ""),
        command_step("b", &wait("b", "a"), "")
    );
    let file = definition(&t, "p.toml", &text);
    let stdout = t.run(&["pipeline", "run", &file]).ok();
    assert!(
        stdout.contains("✓ a succeeded") && stdout.contains("✓ b succeeded"),
        "{stdout}"
    );
}

#[test]
fn retries_follow_the_policy_and_a_failed_step_resumes() {
    let t = TestDir::new();
    with_input(&t);
    let dir = t.arg("");
    // Fails twice, then succeeds: retried because the policy lists "program".
    let flaky = format!(
        "sh -c 'n=$(cat {dir}/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > {dir}/count; [ $n -ge 3 ]'"
    );
    // Fails until the marker exists; not retried (a program's failure by default is not).
    let gated = format!("sh -c 'echo checking; test -f {dir}/marker'");
    let text = format!(
        "name = \"faults\"\n{}{}{}",
        command_step(
            "flaky",
            &flaky,
            "retry = { attempts = 3, backoff_s = 0, on = [\"program\"] }"
        ),
        command_step(
            "gated",
            &gated,
            "after = [\"flaky\"]\nretry = { attempts = 3, backoff_s = 0 }"
        ),
        command_step("last", "true", "after = [\"gated\"]"),
    );
    let file = definition(&t, "f.toml", &text);
    let run = t.run(&["pipeline", "run", &file]);
    let stdout = run.stdout();
    let stderr = run.fails();
    assert!(stdout.contains("✓ flaky succeeded"), "{stdout}");
    assert!(stdout.contains("✗ gated failed"), "{stdout}");
    assert!(stdout.contains("last not-run"), "{stdout}");
    assert!(stderr.contains("pipeline resume"), "{stderr}");
    let shown = show(&t);
    let id = shown["execution"]["id"].as_str().expect("id").to_string();
    assert_eq!(step(&shown, "flaky")["attempts"], 3);
    assert_eq!(
        step(&shown, "gated")["attempts"],
        1,
        "a program's failure is not retried"
    );
    assert!(
        step(&shown, "gated")["reason"]
            .as_str()
            .expect("reason")
            .contains("not retried unless retry.on lists \"program\""),
        "{shown}"
    );

    // The fault is fixed; resume runs the failed and not-run steps and keeps the rest.
    std::fs::write(t.path("marker"), b"").expect("marker");
    let plan = t.run(&["pipeline", "plan", &id]).ok();
    assert!(plan.contains("kept from the earlier run"), "{plan}");
    let stdout = t.run(&["pipeline", "resume", &id]).ok();
    assert!(stdout.contains("= flaky cached"), "{stdout}");
    assert!(stdout.contains("gated (command), attempt 2"), "{stdout}");
    assert!(stdout.contains("✓ last succeeded"), "{stdout}");
    // The failed attempt's log outlives it.
    let log = t
        .run(&[
            "logs",
            &id,
            "gated",
            "--attempt",
            "1",
            "--instance",
            "algo-1",
        ])
        .ok();
    assert!(log.contains("checking"), "{log}");
    let main = t.run(&["logs", &id, "gated", "--attempt", "1"]).ok();
    assert!(main.contains("error:"), "{main}");
}

#[test]
fn lineage_answers_where_from_and_what_used_it() {
    let t = TestDir::new();
    let file = definition(&t, "small.toml", SMALL);
    t.run(&["pipeline", "run", &file]).ok();
    let up = t
        .run(&["lineage", "manifests/train.manifest", "--json"])
        .ok();
    let up: serde_json::Value = serde_json::from_str(&up).expect("json");
    let writer = &up["upstream"]["run"];
    assert_eq!(writer["step"], "manifests");
    assert_eq!(writer["settings"]["seed"], 1);
    assert_eq!(up["upstream"]["next"][0]["run"]["step"], "data");
    let down = t.run(&["lineage", "data"]).ok();
    assert!(down.contains("what used it:"), "{down}");
    assert!(down.contains("read by step `manifests`"), "{down}");
    let stderr = t.run(&["lineage", "nowhere"]).fails();
    assert!(stderr.contains("no step of any execution"), "{stderr}");
}

/// A one-shot HTTP server that records the bodies POSTed to it.
fn collector() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "http://{}/api/v1/lineage",
        listener.local_addr().expect("addr")
    );
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut data = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&data);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if data.len() >= end + 4 + length {
                        kept.lock()
                            .expect("lock")
                            .push(String::from_utf8_lossy(&data[end + 4..end + 4 + length]).into());
                        break;
                    }
                }
            }
            let _ = stream.write_all(
                b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    (url, bodies)
}

#[test]
fn openlineage_events_follow_the_schema_and_reach_an_http_endpoint() {
    let t = TestDir::new();
    let file = definition(&t, "small.toml", SMALL);
    let (url, bodies) = collector();
    t.run(&["pipeline", "run", &file, "--openlineage-url", &url])
        .ok();
    let events = t.path(".shardline/openlineage.jsonl");
    let text = std::fs::read_to_string(&events).expect("events");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON event"))
        .collect();
    // START and COMPLETE for each of the three steps that ran (data, manifests, done).
    assert_eq!(lines.len(), 6, "{text}");
    let manifests: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|e| e["job"]["name"] == "small.manifests")
        .collect();
    assert_eq!(manifests[0]["eventType"], "START");
    assert_eq!(manifests[1]["eventType"], "COMPLETE");
    assert_eq!(manifests[0]["run"]["runId"], manifests[1]["run"]["runId"]);
    let version = manifests[1]["inputs"][0]["facets"]["version"]["datasetVersion"]
        .as_str()
        .expect("the input's digest as its version");
    assert!(version.starts_with("sha256:"), "{version}");
    assert_eq!(
        manifests[1]["run"]["facets"]["parent"]["job"]["name"], "small",
        "the execution is the parent run"
    );
    let schema = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../schemas/openlineage/validate.py"
    );
    let output = std::process::Command::new("python3")
        .arg(schema)
        .arg(&events)
        .output()
        .expect("python3 runs (pip install -r bench/requirements.txt)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let posted = bodies.lock().expect("lock").clone();
    assert_eq!(posted.len(), 6, "every event was posted");
    let first: serde_json::Value = serde_json::from_str(&posted[0]).expect("json");
    assert_eq!(first["eventType"], "START");
}

#[test]
fn two_executions_at_once_share_a_state_directory() {
    let t = TestDir::new();
    let a = definition(
        &t,
        "a.toml",
        &SMALL
            .replace("\"data\"", "\"data-a\"")
            .replace("\"manifests\"", "\"manifests-a\"")
            .replace("\"more\"", "\"more-a\""),
    );
    let b = definition(
        &t,
        "b.toml",
        &SMALL
            .replace("\"data\"", "\"data-b\"")
            .replace("\"manifests\"", "\"manifests-b\"")
            .replace("\"more\"", "\"more-b\""),
    );
    let exe = env!("CARGO_BIN_EXE_shardline");
    let start = |file: &str| {
        std::process::Command::new(exe)
            .args(["pipeline", "run", file])
            .current_dir(t.dir.path())
            .output()
    };
    let (ra, rb) = std::thread::scope(|s| {
        let ha = s.spawn(|| start(&a));
        let hb = s.spawn(|| start(&b));
        (ha.join().expect("a"), hb.join().expect("b"))
    });
    for r in [ra, rb] {
        let r = r.expect("runs");
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    let list = t.run(&["pipeline", "list"]).ok();
    assert_eq!(list.matches("succeeded").count(), 2, "{list}");
    let check = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('PRAGMA integrity_check').fetchone()[0])",
        ])
        .arg(t.path(".shardline/state.db"))
        .output()
        .expect("python3");
    assert_eq!(String::from_utf8_lossy(&check.stdout).trim(), "ok");
}

#[test]
fn sigterm_stops_the_execution_and_leaves_it_resumable() {
    let t = TestDir::new();
    with_input(&t);
    let dir = t.arg("");
    let slow = format!("sh -c 'touch {dir}/started; sleep 30; touch {dir}/finished'");
    let file = definition(&t, "s.toml", &command_step("slow", &slow, ""));
    let child = start_until(&t, &file, "started");
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("was stopped"), "{stderr}");
    let shown = show(&t);
    assert_eq!(shown["execution"]["status"], "stopped");
    assert_eq!(step(&shown, "slow")["status"], "stopped");
    // Its program died with it.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let ps = std::process::Command::new("pgrep")
        .args(["-f", &format!("touch {dir}/finished")])
        .output()
        .expect("pgrep");
    assert!(ps.stdout.is_empty(), "the step's program is still running");
}

#[test]
fn a_running_steps_instance_log_can_be_followed() {
    let t = TestDir::new();
    with_input(&t);
    let dir = t.arg("");
    let slow =
        format!("sh -c 'touch {dir}/started; for i in 1 2 3 4; do echo line$i; sleep 0.4; done'");
    let file = definition(&t, "f.toml", &command_step("slow", &slow, ""));
    let child = start_until(&t, &file, "started");
    // Follows while it runs, and ends when the step ends, with every line.
    let log = t
        .run(&["logs", "last", "slow", "--instance", "algo-1", "--follow"])
        .ok();
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success());
    for i in 1..=4 {
        assert!(log.contains(&format!("line{i}")), "line{i} missing: {log}");
    }
}

#[test]
fn on_s3_the_cache_follows_the_objects_etags() {
    let mut t = TestDir::new();
    let garage =
        shardline_testkit::garage::LocalGarage::start(&t.path("garage"), "lake").expect("garage");
    t.env = garage.env();
    let source = garage.url("pets");
    t.shapes(&source, 2, 6);
    let text = format!(
        r#"
[steps.manifests]
kind = "manifest"
source = "{source}"
out = "{out}"
split = "train=0.5,validation=0.25,test=0.25"
"#,
        out = garage.url("manifests")
    );
    let file = definition(&t, "s3.toml", &text);
    let stdout = t.run(&["pipeline", "run", &file]).ok();
    assert!(stdout.contains("✓ manifests succeeded"), "{stdout}");
    let stdout = t.run(&["pipeline", "run", &file]).ok();
    assert!(stdout.contains("= manifests cached"), "{stdout}");
    // The same keys with other bytes: new ETags, so the objects are digested again (datagen
    // writes over a lake only when told).
    t.run(&[
        "datagen",
        "shapes",
        "--out",
        &source,
        "--classes",
        "2",
        "--per-class",
        "6",
        "--size",
        "16",
        "--seed",
        "9",
        "--force",
    ])
    .ok();
    let stdout = t.run(&["pipeline", "run", &file]).ok();
    assert!(
        stdout.contains("miss: input source content changed"),
        "{stdout}"
    );
}

/// `--sbatch-arg` may add to every step's job, not override what the Slurm engine sets itself.
#[test]
fn sbatch_args_cannot_override_the_engine() {
    let t = common::TestDir::new();
    let quickstart = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/quickstart.toml"
    );
    for (arg, flag) in [
        ("--output=/tmp/x.out", "--output"),
        ("--dependency=afterany:1", "--dependency"),
        ("-n9", "-n9"),
    ] {
        let err = t
            .run(&[
                "pipeline",
                "run",
                quickstart,
                "--engine",
                "slurm",
                &format!("--sbatch-arg={arg}"),
            ])
            .fails();
        assert!(
            err.contains("the Slurm engine sets") && err.contains(flag),
            "{arg}: {err}"
        );
    }
    let err = t
        .run(&[
            "pipeline",
            "run",
            quickstart,
            "--sbatch-arg=--partition=cpu",
        ])
        .fails();
    assert!(err.contains("--sbatch-arg needs --engine slurm"), "{err}");
    // Refused before anything is recorded.
    assert!(!t.path(".shardline").exists());
}

/// A manifest step's `part_keys` of 0 is refused by name, as the CLI's `--part-keys 0` is.
#[test]
fn a_manifest_step_with_no_keys_per_part_is_refused() {
    let t = common::TestDir::new();
    std::fs::write(
        t.path("p.toml"),
        r#"name = "parts"

[steps.data]
kind = "datagen"
out = "data"
classes = 2
per_class = 20
size = 16

[steps.manifests]
kind = "manifest"
source = "{{ steps.data.outputs.out }}"
out = "m"
part_keys = 0
"#,
    )
    .unwrap();
    let err = t.run(&["pipeline", "run", "p.toml"]).fails();
    assert!(err.contains("`part_keys` must be at least 1"), "{err}");
}

/// Commands that only read the execution store never create one.
#[test]
fn reading_commands_never_create_a_store() {
    let t = TestDir::new();
    for args in [
        vec!["pipeline", "list", "--state", "nowhere"],
        vec!["pipeline", "show", "last", "--state", "nowhere"],
        vec!["logs", "last", "data", "--state", "nowhere"],
        vec!["lineage", "model:x", "--state", "nowhere"],
    ] {
        let err = t.run(&args).fails();
        assert!(err.contains("no execution store here"), "{args:?}: {err}");
        assert!(!t.path("nowhere").exists(), "{args:?} created the store");
    }
}

/// A datagen step, as `shardline datagen` does, refuses an out that holds other data; the user's
/// file is left as it was.
#[test]
fn a_datagen_step_refuses_an_out_holding_other_data() {
    let t = common::TestDir::new();
    std::fs::create_dir_all(t.path("lake/cats")).unwrap();
    std::fs::write(t.path("lake/cats/mine.jpg"), b"a photo").unwrap();
    std::fs::write(
        t.path("p.toml"),
        "name = \"over\"\n\n[steps.data]\nkind = \"datagen\"\nout = \"lake\"\nclasses = 2\nper_class = 2\nsize = 8\n",
    )
    .unwrap();
    let err = t.run(&["pipeline", "run", "p.toml"]).fails();
    assert!(err.contains("this dataset does not write"), "{err}");
    assert_eq!(
        std::fs::read(t.path("lake/cats/mine.jpg")).unwrap(),
        b"a photo"
    );
}
