//! The conformance suite every [`Communicator`] passes. Each check is called on every rank of a
//! group at the same time (threads for the in-process group, processes under `mpirun` for MPI)
//! and returns what went wrong, so that a launcher can report it.

use crate::{Communicator, allreduce_fused};

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what()) }
}

/// Runs every check on this rank.
pub fn run(comm: &mut dyn Communicator) -> Result<(), String> {
    identity(comm)?;
    broadcast(comm)?;
    allreduce(comm)?;
    fused(comm)?;
    barrier_and_empty(comm)?;
    Ok(())
}

fn identity(comm: &mut dyn Communicator) -> Result<(), String> {
    check(comm.size() >= 1 && comm.rank() < comm.size(), || {
        format!("rank {} of size {}", comm.rank(), comm.size())
    })
}

fn broadcast(comm: &mut dyn Communicator) -> Result<(), String> {
    let size = comm.size();
    for root in 0..size {
        let mut buffer: Vec<f32> = (0..1000).map(|i| (comm.rank() * 1000 + i) as f32).collect();
        comm.broadcast(&mut buffer, root)
            .map_err(|e| e.to_string())?;
        let expected: Vec<f32> = (0..1000).map(|i| (root * 1000 + i) as f32).collect();
        check(buffer == expected, || {
            format!(
                "broadcast from {root}: rank {} got {:?}...",
                comm.rank(),
                &buffer[..3]
            )
        })?;
    }
    Ok(())
}

fn allreduce(comm: &mut dyn Communicator) -> Result<(), String> {
    let size = comm.size() as f32;
    let rank = comm.rank() as f32;
    // 600,001 values: more than two of the MPI communicator's 1 MiB pieces, the last one short.
    for len in [1usize, 7, 4096, 100_003, 600_001] {
        let mut buffer: Vec<f32> = (0..len).map(|i| rank + i as f32).collect();
        comm.allreduce_sum(&mut buffer).map_err(|e| e.to_string())?;
        // Sum over ranks r of (r + i) = size*i + size*(size-1)/2.
        let ok = buffer.iter().enumerate().all(|(i, v)| {
            (v - (size * i as f32 + size * (size - 1.0) / 2.0)).abs() <= 1e-3 * v.abs().max(1.0)
        });
        check(ok, || {
            format!("allreduce_sum of {len} values is wrong on rank {rank}")
        })?;
        let mut buffer = vec![rank; len];
        comm.allreduce_mean(&mut buffer)
            .map_err(|e| e.to_string())?;
        let mean = (size - 1.0) / 2.0;
        check(buffer.iter().all(|v| (v - mean).abs() < 1e-5), || {
            format!("allreduce_mean of {len} values is wrong")
        })?;
    }
    Ok(())
}

fn fused(comm: &mut dyn Communicator) -> Result<(), String> {
    let rank = comm.rank() as f32;
    let mean = (comm.size() as f32 - 1.0) / 2.0;
    let mut a = vec![rank; 10];
    let mut b = vec![rank * 2.0; 3000];
    let mut c = vec![rank + 1.0; 1];
    let stats = {
        let mut tensors: Vec<&mut [f32]> = vec![&mut a, &mut b, &mut c];
        allreduce_fused(comm, &mut tensors, 4096).map_err(|e| e.to_string())?
    };
    check(stats.buckets == 3, || {
        format!(
            "expected 3 buckets of at most 1024 values, got {}",
            stats.buckets
        )
    })?;
    check(a.iter().all(|v| (v - mean).abs() < 1e-5), || {
        "fused: first tensor".into()
    })?;
    check(b.iter().all(|v| (v - 2.0 * mean).abs() < 1e-5), || {
        "fused: split tensor".into()
    })?;
    check((c[0] - (mean + 1.0)).abs() < 1e-5, || {
        "fused: last tensor".into()
    })
}

fn barrier_and_empty(comm: &mut dyn Communicator) -> Result<(), String> {
    comm.barrier().map_err(|e| e.to_string())?;
    let mut empty: Vec<f32> = Vec::new();
    comm.allreduce_sum(&mut empty).map_err(|e| e.to_string())?;
    comm.barrier().map_err(|e| e.to_string())
}
