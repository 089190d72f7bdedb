//! Allreduce bandwidth of Shardline's MPI communicator beside a plain MPI allreduce of the same
//! bytes, in the same job: `mpirun -np 2 target/release/examples/allreduce_bench`.
//! Prints a table; the bus bandwidth is 2(N-1)/N x bytes / time, as NCCL and Horovod report it.

use std::time::{Duration, Instant};

use mpi::collective::SystemOperation;
use mpi::traits::CommunicatorCollectives as _;
use shardline_comm::{Communicator, allreduce_fused, mpi_comm::Mpi};

fn main() {
    let mut comm = Mpi::init(Duration::from_secs(120)).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    // A second handle on the same world for the plain MPI baseline (MPI is already initialised).
    let world = mpi::topology::SimpleCommunicator::world();
    let n = comm.size() as f64;
    let rank = comm.rank();
    if rank == 0 {
        println!("allreduce, {} ranks\n", comm.size());
        println!(
            "| bytes | plain MPI ms | Shardline ms | Shardline fused (4 MiB buckets) ms | plain bus GB/s | Shardline bus GB/s | Shardline / plain |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|");
    }
    for mib in [1usize, 8, 32, 128] {
        let len = mib * 1024 * 1024 / 4;
        let iterations = (256 / mib).clamp(4, 64);
        let mut buffer: Vec<f32> = (0..len).map(|i| (i % 97) as f32 + rank as f32).collect();
        let mut out = vec![0f32; len];
        let time = |f: &mut dyn FnMut()| {
            f();
            world.barrier();
            let started = Instant::now();
            for _ in 0..iterations {
                f();
            }
            world.barrier();
            started.elapsed().as_secs_f64() / iterations as f64
        };
        let plain =
            time(&mut || world.all_reduce_into(&buffer[..], &mut out[..], SystemOperation::sum()));
        let ours = time(&mut || comm.allreduce_sum(&mut buffer).expect("allreduce"));
        // The same bytes as 64 tensors of equal size, fused into 4 MiB buckets.
        let fused = time(&mut || {
            let mut tensors: Vec<&mut [f32]> = buffer.chunks_mut(len.div_ceil(64)).collect();
            allreduce_fused(&mut comm, &mut tensors, 4 << 20).expect("fused");
        });
        let bus = |seconds: f64| 2.0 * (n - 1.0) / n * (len * 4) as f64 / seconds / 1e9;
        if rank == 0 {
            println!(
                "| {} MiB | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0}% |",
                mib,
                plain * 1e3,
                ours * 1e3,
                fused * 1e3,
                bus(plain),
                bus(ours),
                100.0 * plain / ours
            );
        }
    }
    // The α-β model of these links: a ring allreduce of m bytes over N ranks costs 2(N-1) steps
    // of latency α plus 2(N-1)/N·m bytes at 1/β. α is read off the latency-bound sizes (at most
    // 1 KiB: the mean time over 2(N-1) steps), β off the bandwidth-bound ones (the slope from
    // 256 KiB to 1 MiB, over 2(N-1)/N of the bytes).
    let sizes = [4usize, 64, 1024, 16 << 10, 64 << 10, 256 << 10, 1 << 20];
    let mut points = Vec::new();
    if rank == 0 {
        println!("\nsmall messages (plain MPI allreduce):\n");
        println!("| bytes | µs |");
        println!("|---:|---:|");
    }
    for bytes in sizes {
        let len = (bytes / 4).max(1);
        let buffer: Vec<f32> = vec![1.0; len];
        let mut out = vec![0f32; len];
        let iterations = (4_000_000 / bytes.max(4096)).clamp(20, 2000);
        for _ in 0..10 {
            world.all_reduce_into(&buffer[..], &mut out[..], SystemOperation::sum());
        }
        world.barrier();
        let started = Instant::now();
        for _ in 0..iterations {
            world.all_reduce_into(&buffer[..], &mut out[..], SystemOperation::sum());
        }
        world.barrier();
        let seconds = started.elapsed().as_secs_f64() / iterations as f64;
        points.push(((len * 4) as f64, seconds));
        if rank == 0 {
            println!("| {} | {:.1} |", len * 4, seconds * 1e6);
        }
    }
    if rank == 0 {
        let steps = 2.0 * (n - 1.0);
        let small: Vec<f64> = points
            .iter()
            .filter(|(m, _)| *m <= 1024.0)
            .map(|(_, t)| *t)
            .collect();
        let alpha = small.iter().sum::<f64>() / small.len() as f64 / steps;
        let (m1, t1) = points[points.len() - 2];
        let (m2, t2) = points[points.len() - 1];
        let seconds_per_byte = (t2 - t1) / (m2 - m1) / (steps / n);
        println!(
            "\nalpha-beta: alpha = {:.1} µs per ring step, beta = 1 / {:.3} GB/s (t = 2(N-1)·alpha + 2(N-1)/N·m·beta)",
            alpha * 1e6,
            1.0 / seconds_per_byte / 1e9
        );
    }
}
