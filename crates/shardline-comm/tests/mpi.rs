//! The MPI communicator under a real `mpirun` (Open MPI): the same conformance suite as the
//! in-process group, a mismatched collective named on every rank, and a stalled rank that ends
//! the job instead of hanging it. Built with the `mpi` feature, which CI enables.
#![cfg(feature = "mpi")]

use std::process::Command;

fn example() -> std::path::PathBuf {
    // target/<profile>/deps/mpi-<hash> → target/<profile>/examples/mpi_conformance
    let exe = std::env::current_exe().expect("test path");
    let dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
    dir.join("examples/mpi_conformance")
}

/// Runs the example under mpirun, bounded by `timeout(1)` so that a hang fails the test (status
/// 124) instead of blocking CI.
fn mpirun(np: usize, args: &[&str]) -> (Option<i32>, String) {
    // Each job its own Open MPI session folder: the tests run at once, and Open MPI 4.1's mkdir
    // of the shared /tmp/ompi.<host>.<uid> races ("File exists", orte_init fails).
    static JOBS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let job = JOBS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = std::env::temp_dir().join(format!("shardline-mpi-{}-{job}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("a session folder for mpirun");
    let output = Command::new("timeout")
        .args([
            "120",
            "mpirun",
            "--allow-run-as-root",
            "--oversubscribe",
            "-np",
        ])
        .arg(np.to_string())
        .arg(example())
        .args(args)
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("TMPDIR", &tmp)
        .output()
        .expect("mpirun runs (install openmpi-bin; see .ci/run)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let _ = std::fs::remove_dir_all(&tmp);
    (output.status.code(), text)
}

#[test]
fn mpi_conforms_on_2_and_3_ranks() {
    for np in [2, 3] {
        let (status, text) = mpirun(np, &[]);
        assert_eq!(status, Some(0), "{text}");
        for rank in 0..np {
            assert!(text.contains(&format!("rank {rank}: ok")), "{text}");
        }
    }
}

#[test]
fn a_mismatched_collective_is_named_on_every_rank() {
    let (_, text) = mpirun(2, &["mismatch"]);
    let named =
        "rank 1 submitted AllreduceSum of 5 values while rank 0 submitted AllreduceSum of 4";
    assert_eq!(text.matches(named).count(), 2, "{text}");
}

#[test]
fn a_stalled_rank_ends_the_job_instead_of_hanging() {
    // Rank 2 sleeps 30 s without joining; rank 0 stops waiting for its header after the
    // timeout (5 s in the example), naming it and its host, and mpirun ends the job. A hang
    // would end in timeout's status 124 after 120 s.
    let (status, text) = mpirun(3, &["stall"]);
    assert_ne!(status, Some(124), "the job hung: {text}");
    assert_ne!(status, Some(0), "{text}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("host name");
    let named = format!(
        "rank 2 (on {}) did not reach collective #0 (barrier)",
        host.trim()
    );
    assert!(text.contains(&named), "{named:?} not in:\n{text}");
    assert!(
        !text.contains("rank 1 (on"),
        "only the stalled rank is named:\n{text}"
    );
}
