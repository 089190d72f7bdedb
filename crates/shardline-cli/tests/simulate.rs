//! The 1,000-instance simulator (`shardline-bench simulate`) runs the process stage's own sharding
//! and supervisor with injected stragglers and failures and checks every invariant itself: it
//! exits non-zero when one breaks.

use std::process::Command;

#[test]
fn the_simulator_checks_sharding_and_retries_at_a_thousand_instances() {
    let out = Command::new(env!("CARGO_BIN_EXE_shardline-bench"))
        .args(["simulate", "--instances", "1000", "--keys", "20000"])
        .output()
        .expect("run shardline-bench simulate");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("20000 keys over 1000 instances (ShardedByKey): every key in exactly one share, shares of 20 to 20 keys"), "{text}");
    // No faults: each instance started once; 30% failing attempts: some instance runs out.
    assert!(
        text.contains("| no faults | 1000 | 0 | 0 (0.00%) |"),
        "{text}"
    );
    let worst = text
        .lines()
        .find(|l| l.starts_with("| 30% of attempts fail"))
        .expect("a row");
    assert!(worst.contains("failed: algo-"), "{worst}");
    assert!(text.contains("every invariant held"), "{text}");
}

/// The manifest-stream benchmark writes a manifest in parts, shards it as a stream and checks
/// that the share is byte for byte the in-memory one (it exits non-zero otherwise).
#[test]
fn a_streamed_share_of_a_manifest_in_parts_is_the_in_memory_share() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_shardline-bench"))
        .args([
            "manifest-stream",
            "--keys",
            "20000",
            "--part-keys",
            "3000",
            "--instances",
            "7",
            "--rank",
            "5",
        ])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("run shardline-bench manifest-stream");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("| 20000 |") && text.contains("python json.load"),
        "{text}"
    );
    assert!(text.contains("byte for byte the in-memory one"), "{text}");
}
