//! The in-process communicator: the conformance suite on 1, 2 and 4 threads, and the failures
//! that must never hang.

use std::time::Duration;

use shardline_comm::{Communicator, Error, InProcess, conformance};

fn on_threads<T: Send + 'static>(
    size: usize,
    timeout: Duration,
    work: fn(InProcess) -> T,
) -> Vec<T> {
    let handles: Vec<_> = InProcess::group(size, timeout)
        .into_iter()
        .map(|comm| std::thread::spawn(move || work(comm)))
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect()
}

#[test]
fn conforms_on_1_2_and_4_threads() {
    for size in [1, 2, 4] {
        for result in on_threads(size, Duration::from_secs(30), |mut comm| {
            conformance::run(&mut comm)
        }) {
            assert_eq!(result, Ok(()), "size {size}");
        }
    }
}

#[test]
fn a_mismatched_collective_names_the_rank() {
    let results = on_threads(2, Duration::from_secs(30), |mut comm| {
        let mut buffer = vec![1.0; if comm.rank() == 1 { 5 } else { 4 }];
        comm.allreduce_sum(&mut buffer)
    });
    for result in results {
        match result {
            Err(Error::Mismatch {
                rank: 1,
                their_len: 5,
                our_len: 4,
                ..
            }) => {}
            other => panic!("expected a mismatch naming rank 1, got {other:?}"),
        }
    }
}

#[test]
fn a_rank_that_dies_fails_the_others_instead_of_hanging() {
    let results = on_threads(3, Duration::from_secs(30), |mut comm| {
        if comm.rank() == 2 {
            // This worker ends (as a panicking thread would) without joining the collective.
            return Ok(());
        }
        let mut buffer = vec![1.0; 8];
        comm.allreduce_sum(&mut buffer)
    });
    for result in &results[..2] {
        assert!(
            matches!(result, Err(Error::RankGone { rank: 2, .. })),
            "{result:?}"
        );
    }
}

#[test]
fn a_rank_that_never_arrives_times_out_naming_it() {
    let results = on_threads(2, Duration::from_millis(300), |mut comm| {
        if comm.rank() == 1 {
            // Stays alive but submits nothing for longer than the timeout.
            std::thread::sleep(Duration::from_secs(2));
            return Ok(());
        }
        comm.barrier()
    });
    match &results[0] {
        Err(Error::Timeout { missing, .. }) => assert_eq!(missing, &vec![1]),
        other => panic!("expected a timeout naming rank 1, got {other:?}"),
    }
    let message = results[0].clone().expect_err("timeout").to_string();
    assert!(message.contains("rank(s) [1]"), "{message}");
}
