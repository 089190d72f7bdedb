//! The launcher seam with real OS processes: the conformance suite on `shardline instance`
//! processes, and a killed launcher leaving no instance or user script running.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestDir;
use shardline_process::conformance;
use shardline_process::launch::{Launcher, LocalProcesses};

#[test]
fn the_os_process_launcher_conforms() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let make = || -> Box<dyn Launcher> {
        Box::new(LocalProcesses {
            program: env!("CARGO_BIN_EXE_shardline").into(),
            args: vec!["instance".into()],
            env: Vec::new(),
        })
    };
    runtime
        .block_on(conformance::suite(&make, dir.path(), true))
        .expect("the OS-process launcher passes the conformance suite");
}

/// Whether `pid` is gone (or a zombie nobody has reaped yet).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Err(_) => true,
        Ok(status) => status
            .lines()
            .any(|l| l.starts_with("State:") && (l.contains('Z') || l.contains('X'))),
    }
}

fn pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A lake of `objects` one-byte objects in two classes, under `t`'s `lake/`.
fn lake(t: &TestDir, objects: usize) {
    for i in 0..objects {
        let class = t.path(&format!("lake/c{}", i % 2));
        std::fs::create_dir_all(&class).expect("mkdir");
        std::fs::write(class.join(format!("{i}.bin")), b"x").expect("write");
    }
}

/// The arguments of a two-instance script job over `lake/` into `out/`.
fn script_job(t: &TestDir, script: &str) -> Vec<String> {
    [
        "process",
        "--input",
        &format!("train={}/", t.arg("lake")),
        "--out",
        &t.arg("out"),
        "--instances",
        "2",
        "--script",
        script,
    ]
    .map(str::to_string)
    .to_vec()
}

/// Starts the launcher of a two-instance script job, in the background.
fn start(t: &TestDir, script: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(script_job(t, script))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the launcher")
}

#[test]
fn killing_the_launcher_leaves_no_instance_or_script_running() {
    for signal in [libc::SIGKILL, libc::SIGTERM, libc::SIGINT] {
        let t = TestDir::new();
        lake(&t, 4);
        let record = t.path("pids");
        // Each instance's script records its shell and a grandchild that would outlive it.
        let script = format!(
            "echo $$ >> {0}; sleep 300 & echo $! >> {0}; wait",
            record.display()
        );
        let mut launcher = start(&t, &script);
        let deadline = Instant::now() + Duration::from_secs(60);
        while pids(&record).len() < 4 {
            assert!(
                Instant::now() < deadline,
                "the scripts did not start: {:?}",
                pids(&record)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let started = pids(&record);
        let status = Command::new("kill")
            .args([format!("-{signal}"), launcher.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let _ = launcher.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !started.iter().all(|&p| gone(p)) {
            if Instant::now() > deadline {
                let left: Vec<i32> = started.iter().copied().filter(|&p| !gone(p)).collect();
                for pid in &left {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                }
                panic!(
                    "signal {signal}: processes left running after the launcher was killed: {left:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // A rerun cleans what the killed job left and finishes.
        let copy = "mkdir -p {root}/processing/output/train && \
                    cp -r {root}/processing/input/train/. {root}/processing/output/train/";
        let args = script_job(&t, copy);
        let out = t
            .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .ok();
        assert!(out.contains("the script ran on 2 instance(s)"), "{out}");
        assert!(t.path("out/lineage.json").exists());
    }
}

#[test]
fn instance_logs_can_be_followed_while_the_job_runs() {
    let t = TestDir::new();
    lake(&t, 2);
    let gate = t.path("gate");
    let script = format!(
        "echo script-started; while [ ! -e {0} ]; do sleep 0.1; done; mkdir -p {{root}}/processing/output/train",
        gate.display()
    );
    let mut launcher = start(&t, &script);
    // While every script waits on the gate, both logs already say the script started.
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = |host: &str| std::fs::read_to_string(t.path(&format!("out/logs/{host}.log")));
    while !["algo-1", "algo-2"]
        .iter()
        .all(|h| log(h).is_ok_and(|text| text.contains("script-started")))
    {
        if Instant::now() > deadline {
            let _ = launcher.kill();
            panic!(
                "the logs did not show the running scripts: {:?} {:?}",
                log("algo-1"),
                log("algo-2")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        launcher.try_wait().expect("wait").is_none(),
        "the job is still running"
    );
    std::fs::write(&gate, b"").expect("open the gate");
    let status = launcher.wait().expect("wait");
    assert!(status.success());
}

/// The libraries name settings; the command names the flags that set them.
#[test]
fn errors_name_the_flag_that_sets_the_setting() {
    let t = TestDir::new();
    let err = t
        .run(&[
            "process",
            "--input",
            "train=lake/",
            "--out",
            "out",
            "--error-budget",
            "2",
        ])
        .fails();
    assert!(
        err.contains("--error-budget") && !err.contains('`'),
        "{err}"
    );
    let err = t
        .run(&["train", "--data", "p", "--out", "m", "--lr", "0"])
        .fails();
    assert!(err.contains("--lr 0 must be a positive number"), "{err}");
    let err = t
        .run(&[
            "transform",
            "--model",
            "m",
            "--manifest",
            "t.manifest",
            "--out",
            "o",
            "--instances",
            "0",
        ])
        .fails();
    assert!(
        err.contains("error: transform: --instances must be at least 1"),
        "{err}"
    );
}
