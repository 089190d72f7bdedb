//! The network-namespace hosts harness, for real: three hosts with their own names and addresses
//! that reach each other by name, `mpirun` across them over TCP, and a teardown that leaves
//! nothing behind, also when the test panics. Needs root; fails (never skips) without it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use shardline_testkit::hosts::{Hosts, HostsError};

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("hosts-{name}-{}", std::process::id()))
}

fn start(n: usize, name: &str) -> Hosts {
    match Hosts::start(n, &dir(name)) {
        Ok(hosts) => hosts,
        Err(HostsError::NotRoot) => panic!(
            "this test builds network namespaces and must run as root: {}",
            HostsError::NotRoot
        ),
        Err(e) => panic!("starting {n} hosts failed: {e}"),
    }
}

fn root_output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a pid is a live process (zombies, which hold no namespace, count as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// What a harness leaves behind: namespaces and links with its tag, and live pids of `pids`.
fn leftovers(tag: &str, pids: &[u32]) -> Vec<String> {
    let mut left = Vec::new();
    for line in root_output("ip", &["netns", "list"]).lines() {
        if line.contains(tag) {
            left.push(format!("netns {line}"));
        }
    }
    for line in root_output("ip", &["-o", "link", "show"]).lines() {
        if line.contains(tag) {
            left.push(format!("link {line}"));
        }
    }
    for pid in pids {
        if alive(*pid) {
            left.push(format!("process {pid}"));
        }
    }
    left
}

#[test]
fn three_hosts_reach_each_other_and_run_mpirun_over_tcp() {
    let hosts = start(3, "mpirun");
    let tag = hosts.tag().to_string();
    assert!(tag.len() + 4 <= 15, "names must fit IFNAMSIZ: {tag}");
    let mut pids = hosts.init_pids();
    let names = hosts.names();
    assert_eq!(names, ["h1", "h2", "h3"]);

    for (i, host) in hosts.hosts().iter().enumerate() {
        let hostname = hosts.exec(i, &["hostname"]).expect("hostname");
        assert_eq!(hostname.trim(), host.name, "host {i}'s name");
        let addrs = hosts
            .exec(i, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
            .expect("ip addr");
        assert!(
            addrs.contains(&format!("inet {}/24", host.addr)),
            "host {i} should have {}: {addrs}",
            host.addr
        );
        // Nothing but lo and eth0: the host does not see the machine's interfaces.
        let links = hosts
            .exec(i, &["ip", "-o", "link", "show"])
            .expect("ip link");
        assert_eq!(links.lines().count(), 2, "host {i}'s links: {links}");
        for (j, other) in hosts.hosts().iter().enumerate() {
            let resolved = hosts
                .exec(i, &["getent", "hosts", &other.name])
                .expect("getent");
            assert!(
                resolved.split_whitespace().next() == Some(&other.addr.to_string()),
                "{} should resolve {} to {}: {resolved}",
                host.name,
                other.name,
                other.addr
            );
            if i == j {
                continue;
            }
            // A TCP "ping" by name (there is no ICMP ping in the images): a connection to a
            // closed port is refused by the other host's kernel, which proves a route to it;
            // a missing route or host shows up as a timeout or "No route to host".
            let probe = hosts
                .command(i, "bash")
                .args(["-c", "exec 3<>/dev/tcp/$0/9", &other.name])
                .timeout(Duration::from_secs(5))
                .output()
                .expect("tcp probe");
            let stderr = String::from_utf8_lossy(&probe.stderr);
            assert!(
                probe.status.success() || stderr.contains("Connection refused"),
                "{} cannot reach {} by name: {probe:?}",
                host.name,
                other.name
            );
        }
    }

    let env = hosts.mpirun_env();
    let subnet = hosts.subnet();
    for (key, value) in [
        ("OMPI_MCA_btl", "tcp,self"),
        ("OMPI_MCA_pml", "ob1"),
        ("OMPI_MCA_btl_tcp_if_include", subnet.as_str()),
        ("OMPI_MCA_oob_tcp_if_include", subnet.as_str()),
        ("OMPI_MCA_plm_rsh_no_tree_spawn", "1"),
    ] {
        assert!(
            env.iter().any(|(k, v)| k == key && v == value),
            "{key}={value} missing from {env:?}"
        );
    }

    let mut mpirun = hosts.mpirun(
        3,
        &[
            "sh",
            "-c",
            "echo \"$(hostname) $OMPI_COMM_WORLD_RANK $OMPI_COMM_WORLD_SIZE\"",
        ],
    );
    mpirun.timeout(Duration::from_secs(60));
    let line = mpirun.display();
    let out = mpirun.run().unwrap_or_else(|e| panic!("{line}: {e}"));
    let mut ranks = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for row in out.lines() {
        let fields: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            fields.len(),
            3,
            "unexpected mpirun output line {row:?} in {out}"
        );
        assert_eq!(fields[2], "3", "world size in {out}");
        ranks.insert(fields[1].parse::<u32>().expect("rank"));
        seen.insert(fields[0].to_string());
    }
    assert_eq!(ranks, BTreeSet::from([0, 1, 2]), "ranks in {out}");
    assert_eq!(
        seen,
        names.iter().cloned().collect::<BTreeSet<_>>(),
        "three distinct hosts in {out}"
    );

    // Real MPI traffic between the hosts: a ring exchange and an allreduce, over the only
    // transports allowed (tcp between ranks, self within one).
    let ring = compile_ring(hosts.dir());
    let mut mpirun = hosts.mpirun(3, &[ring.as_os_str()]);
    mpirun.timeout(Duration::from_secs(60));
    let line = mpirun.display();
    let out = mpirun.run().unwrap_or_else(|e| panic!("{line}: {e}"));
    let mut seen = BTreeSet::new();
    for row in out.lines() {
        let fields: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            fields.len(),
            5,
            "unexpected ring output line {row:?} in {out}"
        );
        let rank: u32 = fields[1].parse().expect("rank");
        let got: u32 = fields[3].parse().expect("token");
        assert_eq!(fields[2], "3", "world size in {out}");
        assert_eq!(
            got,
            (rank + 2) % 3,
            "rank {rank} gets its predecessor's token: {out}"
        );
        assert_eq!(fields[4], "3", "allreduce of the ranks in {out}");
        assert_eq!(
            fields[0], names[rank as usize],
            "rank {rank}'s host in {out}"
        );
        seen.insert(rank);
    }
    assert_eq!(seen, BTreeSet::from([0, 1, 2]), "ranks in {out}");

    // A long-running process in a host, which the teardown must kill.
    let mut sleeper = hosts
        .command(1, "sh")
        .args(["-c", "sleep 1000 & sleep 1000"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn sleeper");
    pids.push(sleeper.id());
    assert!(
        leftovers(&tag, &[]).len() >= 7,
        "namespaces and links exist while running"
    );

    drop(hosts);
    let _ = sleeper.wait();
    let left = leftovers(&tag, &pids);
    assert!(left.is_empty(), "left behind after drop: {left:?}");
    let _ = std::fs::remove_dir_all(dir("mpirun"));
}

const RING: &str = r#"#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
  int rank, size, len, sum = 0, got = -1;
  char name[MPI_MAX_PROCESSOR_NAME];
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Get_processor_name(name, &len);
  MPI_Sendrecv(&rank, 1, MPI_INT, (rank + 1) % size, 0, &got, 1, MPI_INT,
               (rank + size - 1) % size, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  printf("%s %d %d %d %d\n", name, rank, size, got, sum);
  MPI_Finalize();
  return 0;
}
"#;

/// Builds the ring program with `mpicc` (Open MPI's development package, which CI installs).
fn compile_ring(dir: &std::path::Path) -> PathBuf {
    let source = dir.join("ring.c");
    let binary = dir.join("ring");
    std::fs::write(&source, RING).expect("write ring.c");
    let out = Command::new("mpicc")
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("mpicc (install libopenmpi-dev): {e}"));
    assert!(out.status.success(), "mpicc failed: {out:?}");
    binary
}

#[test]
fn a_panicking_test_still_tears_down() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let hosts = start(2, "panic");
        let child = hosts
            .command(0, "sleep")
            .arg("1000")
            .spawn()
            .expect("spawn sleep");
        let mut pids = hosts.init_pids();
        pids.push(child.id());
        // The caller waits for the child after the panic (the harness must have killed it).
        tx.send((hosts.tag().to_string(), pids, child))
            .expect("send");
        panic!("deliberate panic with the hosts up");
    });
    assert!(result.is_err(), "the closure panics");
    let (tag, pids, mut child) = rx.recv().expect("tag");
    let status = child.wait().expect("wait for the sleep");
    assert!(!status.success(), "the sleep was killed: {status}");
    let left = leftovers(&tag, &pids);
    assert!(left.is_empty(), "left behind after a panic: {left:?}");
    let _ = std::fs::remove_dir_all(dir("panic"));
}

#[test]
fn stop_reports_a_clean_teardown() {
    let hosts = start(1, "stop");
    let tag = hosts.tag().to_string();
    let pids = hosts.init_pids();
    assert_eq!(hosts.exec(0, &["hostname"]).expect("hostname").trim(), "h1");
    hosts.stop().expect("stop");
    let left = leftovers(&tag, &pids);
    assert!(left.is_empty(), "left behind after stop: {left:?}");
    let _ = std::fs::remove_dir_all(dir("stop"));
}
