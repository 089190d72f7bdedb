//! The Slurm harness, for real: a controller and three `slurmd`s on namespace hosts run a job
//! whose tasks land on every host, honour `afterok` dependencies (a failed job's dependants are
//! cancelled), and leave no daemon behind. Needs root and Debian's Slurm; fails (never skips)
//! without them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shardline_testkit::hosts::Hosts;
use shardline_testkit::slurm::Slurm;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("slurm-{name}-{}", std::process::id()))
}

fn daemons() -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            == Some("Z")
        {
            continue;
        }
        let comm = comm.trim();
        if matches!(comm, "slurmctld" | "slurmd" | "slurmstepd" | "munged") {
            let text = String::from_utf8_lossy(&[cmdline, environ].concat()).replace('\0', " ");
            found.push(format!("{comm} {text}"));
        }
    }
    found
}

#[test]
fn a_cluster_on_three_hosts_runs_tasks_everywhere_and_honours_dependencies() {
    let base = dir("cluster");
    let hosts = Hosts::start(3, &base.join("hosts")).expect("hosts");
    let conf;
    {
        let slurm = Slurm::start(&hosts, &base.join("slurm")).expect("slurm");
        conf = slurm.conf().display().to_string();
        let out = slurm
            .client(0, "srun")
            .args(["-N3", "-n3", "-l", "hostname"])
            .timeout(Duration::from_secs(60))
            .run()
            .expect("srun");
        let mut names: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split_once(": ").map(|(_, h)| h.trim()))
            .collect();
        names.sort();
        assert_eq!(names, ["h1", "h2", "h3"], "{out}");

        let work = base.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let submit = |args: &[&str]| -> String {
            slurm
                .client(1, "sbatch")
                .args(["--parsable", "--kill-on-invalid-dep=yes"])
                .arg(format!("--chdir={}", work.display()))
                .arg(format!("--output={}/%j.out", work.display()))
                .args(args)
                .run()
                .expect("sbatch")
                .trim()
                .to_string()
        };
        let first = submit(&["--wrap", "echo first > first.txt"]);
        let failing = submit(&[&format!("--dependency=afterok:{first}"), "--wrap", "exit 3"]);
        let after_ok = submit(&[
            &format!("--dependency=afterok:{first}"),
            "--wrap",
            "cat first.txt > second.txt",
        ]);
        let never = submit(&[
            &format!("--dependency=afterok:{failing}"),
            "--wrap",
            "touch never.txt",
        ]);
        let started = Instant::now();
        let state = |id: &str| -> String {
            slurm
                .jobs()
                .unwrap_or_default()
                .lines()
                .find(|l| l.split_whitespace().next() == Some(id))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
                .unwrap_or_default()
        };
        loop {
            let states: Vec<String> = [&first, &failing, &after_ok, &never]
                .iter()
                .map(|j| state(j))
                .collect();
            if states.iter().all(|s| {
                !matches!(
                    s.as_str(),
                    "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | ""
                )
            }) {
                assert_eq!(
                    states,
                    ["COMPLETED", "FAILED", "COMPLETED", "CANCELLED"],
                    "{}",
                    slurm.jobs().unwrap_or_default()
                );
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "jobs did not end: {}\n{}",
                slurm.jobs().unwrap_or_default(),
                slurm.logs()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        assert_eq!(
            std::fs::read_to_string(work.join("second.txt")).unwrap(),
            "first\n"
        );
        assert!(!work.join("never.txt").exists());
        slurm.stop().expect("teardown");
    }
    let left: Vec<String> = daemons()
        .into_iter()
        .filter(|d| {
            d.contains(&conf)
                || d.contains(&base.display().to_string())
                || d.starts_with("slurmstepd")
        })
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");
    hosts.stop().expect("hosts teardown");
}
