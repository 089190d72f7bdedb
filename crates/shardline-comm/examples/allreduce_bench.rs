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
}
