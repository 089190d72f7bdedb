//! Runs the communicator conformance suite on every rank of an MPI job:
//! `mpirun -np 2 mpi_conformance [mismatch|stall]`. Prints `rank <r>: ok` or the failure.

use std::time::Duration;

use shardline_comm::{Communicator, conformance, mpi_comm::Mpi};

fn main() {
    let mut comm = match Mpi::init(Duration::from_secs(5)) {
        Ok(comm) => comm,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let rank = comm.rank();
    match std::env::args().nth(1).as_deref() {
        Some("mismatch") => {
            let mut buffer = vec![1.0f32; 4 + rank];
            match comm.allreduce_sum(&mut buffer) {
                Err(e) => println!("rank {rank}: {e}"),
                Ok(()) => println!("rank {rank}: no error"),
            }
        }
        Some("stall") => {
            if rank + 1 == comm.size() {
                // The last rank: alive, but never joins the collective.
                std::thread::sleep(Duration::from_secs(30));
            }
            let _ = comm.barrier();
            println!("rank {rank}: barrier returned");
        }
        _ => match conformance::run(&mut comm) {
            Ok(()) => println!("rank {rank}: ok"),
            Err(e) => {
                println!("rank {rank}: {e}");
                std::process::exit(1);
            }
        },
    }
}
