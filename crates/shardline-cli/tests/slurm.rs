//! Pipelines on a real Slurm cluster: Debian's slurmctld and one slurmd per network-namespace
//! host (the testkit's `Slurm` harness), the quickstart pipeline submitted as one job per step
//! with `afterok` dependencies, a failed step's dependants cancelled by Slurm, and a stopped
//! execution's jobs cancelled. Needs root and Slurm (`.ci/run` installs it); fails, never skips,
//! without them.

mod common;

use std::time::{Duration, Instant};

use shardline_testkit::hosts::Hosts;
use shardline_testkit::slurm::Slurm;

const SHARDLINE: &str = env!("CARGO_BIN_EXE_shardline");

/// `shardline ARGS` on host 1 of the cluster, in `t`'s directory, to its end.
fn shardline(slurm: &Slurm<'_>, t: &common::TestDir, args: &[&str]) -> common::Run {
    let mut command = slurm.client(0, SHARDLINE);
    command
        .args(args)
        .current_dir(t.dir.path())
        .timeout(Duration::from_secs(900));
    common::Run {
        output: command.output().expect("run shardline on host 1"),
    }
}

fn show(slurm: &Slurm<'_>, t: &common::TestDir, execution: &str) -> serde_json::Value {
    let state = t.arg("state");
    let text = shardline(
        slurm,
        t,
        &["pipeline", "show", execution, "--json", "--state", &state],
    )
    .ok();
    serde_json::from_str(&text).expect("show --json")
}

fn statuses(show: &serde_json::Value) -> Vec<(String, String)> {
    show["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap_or("").to_string(),
                s["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The log of one instance of a step of the last execution.
fn step_log(
    slurm: &Slurm<'_>,
    t: &common::TestDir,
    state: &str,
    step: &str,
    instance: &str,
) -> String {
    shardline(
        slurm,
        t,
        &[
            "logs",
            "last",
            step,
            "--instance",
            instance,
            "--state",
            state,
        ],
    )
    .ok()
}

/// The jobs Slurm knows, in the order they were submitted, as (name, state, nodes).
/// Every job Slurm knows: the step it runs (its comment, `step NAME`), its state and its node.
fn jobs(slurm: &Slurm<'_>) -> Vec<(String, String, String)> {
    let mut jobs: Vec<(u64, (String, String, String))> = slurm
        .client(0, "squeue")
        .args(["-h", "-t", "all", "-o", "%i|%k|%T|%N"])
        .run()
        .expect("squeue")
        .lines()
        .filter_map(|l| {
            let mut p = l.split('|');
            let id = p.next()?.parse().ok()?;
            Some((
                id,
                (
                    p.next()?.to_string(),
                    p.next()?.to_string(),
                    p.next().unwrap_or("").to_string(),
                ),
            ))
        })
        .collect();
    jobs.sort_by_key(|(id, _)| *id);
    jobs.into_iter().map(|(_, j)| j).collect()
}

#[test]
fn the_quickstart_pipeline_runs_as_slurm_jobs_and_caches_as_locally() {
    let t = common::TestDir::new();
    let hosts = Hosts::start(3, &t.path("hosts")).expect("three hosts (run as root)");
    let slurm = Slurm::start(&hosts, &t.path("slurm")).expect("a Slurm cluster on them");
    let dir = t.arg("out");
    let state = t.arg("state");
    let params = [
        "--param",
        &format!("dir={dir}"),
        "--param",
        "per_class=40",
        "--param",
        "instances=3",
        "--param",
        "epochs=3",
        "--param",
        "min_accuracy=0",
    ];
    let quickstart = |engine: &'static str| -> Vec<String> {
        let mut args: Vec<String> = [
            "pipeline",
            "run",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../examples/quickstart.toml"
            ),
            "--engine",
            engine,
            "--state",
            &state,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(params.iter().map(|a| a.to_string()));
        args
    };
    let args = quickstart("slurm");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = shardline(&slurm, &t, &args);
    let out = run.stdout() + &run.stderr();
    assert!(
        run.output.status.success(),
        "{out}\n{}\n{}",
        slurm.jobs().unwrap_or_default(),
        slurm.logs()
    );
    assert!(out.contains("submitted as Slurm job"), "{out}");
    // The steps' log lines come back to the coordinator's terminal as they are written.
    assert!(
        out.contains("data │ datagen: 4 classes × 40 images into"),
        "{out}"
    );
    // Jobs on every node open the store: it left WAL for the rollback journal.
    assert!(t.path("state/state.db.shared").exists());
    assert!(!t.path("state/state.db-wal").exists());

    // Every step was a job, and every job completed; steps after others waited on them.
    let names = [
        "data",
        "manifests",
        "process",
        "train",
        "evaluate",
        "check",
        "register",
        "predict",
        "too_low",
    ];
    let known = jobs(&slurm);
    for name in names {
        let job = format!("step {name}");
        let found: Vec<_> = known.iter().filter(|(n, _, _)| *n == job).collect();
        assert_eq!(found.len(), 1, "{job} in {known:?}");
        assert_eq!(found[0].1, "COMPLETED", "{job} in {known:?}");
    }
    let first = show(&slurm, &t, "last");
    let s = statuses(&first);
    for (step, status) in &s {
        let want = if step == "too_low" {
            "skipped"
        } else {
            "succeeded"
        };
        assert_eq!(status, want, "{s:?}");
    }
    // Three processing instances' logs came back into the store, and the training ranks' too.
    let process = &first["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["step"] == "process")
        .unwrap()
        .clone();
    assert_eq!(process["instances"], 3, "{process}");
    for instance in ["algo-1", "algo-2", "algo-3", "slurm"] {
        let log = step_log(&slurm, &t, &state, "process", instance);
        assert!(!log.is_empty(), "{instance}'s log is empty");
    }
    if cfg!(feature = "mpi") {
        // One rank per task, started by srun --mpi=pmix; three tasks do not fit on one node.
        let log = step_log(&slurm, &t, &state, "train", "algo-3");
        assert!(log.contains("rank 2 of 3 on host h"), "{log}");
        // The transform's instances are tasks too: instance 3 predicted its own share.
        let log = step_log(&slurm, &t, &state, "predict", "algo-3");
        assert!(log.contains("rank 2 of 3 on host h"), "{log}");
        assert!(log.contains("algo-3: "), "{log}");
        let train = known.iter().find(|(n, _, _)| n == "step train").unwrap();
        assert!(
            train.2.contains(',') || train.2.contains('['),
            "the training job ran on one node only: {train:?}"
        );
    }

    // Run again on Slurm: every step that ran is a cache hit, decided inside its job.
    let again = quickstart("slurm");
    let again: Vec<&str> = again.iter().map(String::as_str).collect();
    shardline(&slurm, &t, &again).ok();
    let shown = show(&slurm, &t, "last");
    let second = statuses(&shown);
    for (step, status) in &second {
        let want = match step.as_str() {
            "too_low" => "skipped",
            // Conditions are decided on every run.
            "check" => "succeeded",
            _ => "cached",
        };
        assert_eq!(status, want, "{second:?}\n{shown:#}");
    }
    // And locally: the same keys, so the same hits.
    let local = quickstart("local");
    let local: Vec<&str> = local.iter().map(String::as_str).collect();
    shardline(&slurm, &t, &local).ok();
    let third = statuses(&show(&slurm, &t, "last"));
    assert_eq!(third, second);
    slurm.stop().expect("slurm teardown");
    hosts.stop().expect("hosts teardown");
}

#[test]
fn a_failed_step_cancels_its_dependants_and_stopping_cancels_the_jobs() {
    let t = common::TestDir::new();
    let hosts = Hosts::start(2, &t.path("hosts")).expect("two hosts (run as root)");
    let slurm = Slurm::start(&hosts, &t.path("slurm")).expect("a Slurm cluster on them");
    let state = t.arg("state");
    std::fs::write(
        t.path("fail.sh"),
        "#!/bin/sh\necho failing on purpose\nexit 3\n",
    )
    .unwrap();
    std::fs::write(t.path("slow.sh"), "#!/bin/sh\necho slow\nexec sleep 317\n").unwrap();
    for script in ["fail.sh", "slow.sh"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(t.path(script), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::create_dir_all(t.path("in")).unwrap();
    std::fs::write(t.path("in/part-0.csv"), "1,2\n").unwrap();
    let definition = |program: &str| {
        format!(
            r#"name = "jobs"

[steps.first]
kind = "command"
contract = "training"
program = "{program}"
inputs = {{ train = "{input}" }}
out = "{out}/first"

[steps.second]
kind = "command"
contract = "training"
program = "{program}"
inputs = {{ train = "{input}" }}
out = "{out}/second"
after = ["first"]
"#,
            program = t.arg(program),
            input = t.arg("in"),
            out = t.arg("out"),
        )
    };
    std::fs::write(t.path("fail.toml"), definition("fail.sh")).unwrap();
    std::fs::write(t.path("slow.toml"), definition("slow.sh")).unwrap();

    // A failed step: its dependant never runs; Slurm cancels its job and the store says why.
    let err = shardline(
        &slurm,
        &t,
        &[
            "pipeline",
            "run",
            &t.arg("fail.toml"),
            "--engine",
            "slurm",
            "--state",
            &state,
        ],
    )
    .fails();
    assert!(err.contains("step `first` failed"), "{err}");
    let log = shardline(&slurm, &t, &["logs", "last", "first", "--state", &state]).ok();
    assert!(log.contains("failing on purpose"), "{log}");
    let s = show(&slurm, &t, "last");
    assert_eq!(
        statuses(&s),
        [
            ("first".to_string(), "failed".to_string()),
            ("second".to_string(), "not-run".to_string())
        ]
    );
    let reason = s["steps"][1]["reason"].as_str().unwrap_or("").to_string();
    assert!(reason.contains("`first` failed"), "{reason}");
    assert!(reason.contains("Slurm cancelled job"), "{reason}");

    // Stopping the coordinator cancels the running job and the one waiting on it.
    let mut command = slurm.client(0, SHARDLINE);
    command
        .args([
            "pipeline",
            "run",
            &t.arg("slow.toml"),
            "--engine",
            "slurm",
            "--state",
            &state,
        ])
        .current_dir(t.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut coordinator = command.spawn().expect("start the coordinator");
    let started = Instant::now();
    loop {
        let running = jobs(&slurm)
            .iter()
            .any(|(n, s, _)| n == "step first" && s == "RUNNING");
        let step_running = std::fs::read_dir(t.path("state/logs"))
            .map(|_| {
                let s = show(&slurm, &t, "last");
                statuses(&s)
                    .iter()
                    .any(|(step, status)| step == "first" && status == "running")
            })
            .unwrap_or(false);
        if running && step_running {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let log = |instance: &str| {
                let run = shardline(
                    &slurm,
                    &t,
                    &[
                        "logs",
                        "last",
                        "first",
                        "--instance",
                        instance,
                        "--state",
                        &state,
                    ],
                );
                run.stdout() + &run.stderr()
            };
            panic!(
                "the slow step never ran: {:?}\n{}\n{}",
                jobs(&slurm),
                log("slurm"),
                log("main")
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &coordinator.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let waited = Instant::now();
    let exit = loop {
        if let Some(s) = coordinator.try_wait().unwrap() {
            break s;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(90),
            "the coordinator did not stop"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!exit.success());
    let after: Vec<_> = jobs(&slurm)
        .into_iter()
        .filter(|(n, _, _)| n.starts_with("step "))
        .collect();
    let slow: Vec<_> = after.iter().rev().take(2).collect();
    for (name, state, _) in &slow {
        assert_eq!(state, "CANCELLED", "{name}: {after:?}");
    }
    let s = show(&slurm, &t, "last");
    assert_eq!(s["execution"]["status"], "stopped", "{s}");
    assert_eq!(
        statuses(&s),
        [
            ("first".to_string(), "stopped".to_string()),
            ("second".to_string(), "not-run".to_string())
        ]
    );
    // Nothing of the cancelled job runs on any host.
    let sleeping = std::process::Command::new("pgrep")
        .args(["-f", "sleep 317"])
        .output()
        .unwrap();
    assert!(
        sleeping.stdout.is_empty(),
        "left running: {}",
        String::from_utf8_lossy(&sleeping.stdout)
    );

    // `max_parallel = 1`: three independent steps run one after another, held by Slurm.
    let mut steps = String::from("name = \"serial\"\nmax_parallel = 1\n");
    for name in ["a", "b", "c"] {
        let script = t.path(&format!("{name}.sh"));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ndate +%s.%N > {times}/{name}.start\nsleep 1\necho done > \"$SM_MODEL_DIR/done.txt\"\ndate +%s.%N > {times}/{name}.end\n",
                times = t.arg("times")
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        steps.push_str(&format!(
            "\n[steps.{name}]\nkind = \"command\"\ncontract = \"training\"\nprogram = \"{program}\"\ninputs = {{ train = \"{input}\" }}\nout = \"{out}/{name}\"\n",
            program = script.display(),
            input = t.arg("in"),
            out = t.arg("serial-out"),
        ));
    }
    std::fs::create_dir_all(t.path("times")).unwrap();
    std::fs::write(t.path("serial.toml"), steps).unwrap();
    shardline(
        &slurm,
        &t,
        &[
            "pipeline",
            "run",
            &t.arg("serial.toml"),
            "--engine",
            "slurm",
            "--state",
            &state,
        ],
    )
    .ok();
    let time = |name: &str| -> f64 {
        std::fs::read_to_string(t.path(&format!("times/{name}")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let mut spans: Vec<(f64, f64)> = ["a", "b", "c"]
        .iter()
        .map(|n| (time(&format!("{n}.start")), time(&format!("{n}.end"))))
        .collect();
    spans.sort_by(|x, y| x.0.total_cmp(&y.0));
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "two steps ran at once: {spans:?}");
    }
    slurm.stop().expect("slurm teardown");
    hosts.stop().expect("hosts teardown");
}
