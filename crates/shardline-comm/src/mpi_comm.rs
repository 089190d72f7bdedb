//! Workers as MPI processes, on one machine or many (`mpirun -np 4 -H host1:2,host2:2 ...`).
//!
//! Every collective is preceded by an all-gather of a small header (sequence number, operation,
//! length), so ranks that submit different collectives are named instead of deadlocking. A rank
//! that dies or stops submitting cannot be detected by MPI itself; a watchdog thread bounds every
//! collective by the timeout and, when it passes, prints which collective stalled and exits the
//! process with an error, which makes `mpirun` stop the whole job rather than hang.

use std::sync::mpsc;
use std::time::Duration;

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator as _, CommunicatorCollectives as _, Root as _};

use crate::{Communicator, Error, Op};

/// The exit status of a rank whose watchdog stopped a stalled collective.
pub const STALLED_EXIT: i32 = 75;

/// This process's end of the MPI world.
pub struct Mpi {
    world: SimpleCommunicator,
    local_rank: usize,
    sequence: u64,
    /// Reused send buffer: a fresh allocation per allreduce costs page faults on every step.
    scratch: Vec<f32>,
    watchdog: mpsc::Sender<Option<(u64, &'static str)>>,
    // Dropped last: finalises MPI.
    _universe: Universe,
}

fn code(op: Op) -> u64 {
    match op {
        Op::AllreduceSum => 1,
        Op::Broadcast { root } => 2 + ((root as u64) << 8),
        Op::Barrier => 3,
    }
}

fn decode(code: u64) -> Op {
    match code & 0xff {
        1 => Op::AllreduceSum,
        2 => Op::Broadcast {
            root: (code >> 8) as usize,
        },
        _ => Op::Barrier,
    }
}

impl Mpi {
    /// Initialises MPI (once per process) and joins the world. Collectives that stall for longer
    /// than `timeout` end the process.
    pub fn init(timeout: Duration) -> Result<Mpi, Error> {
        let universe = mpi::initialize()
            .ok_or_else(|| Error::Invalid("MPI was already initialised in this process".into()))?;
        let world = universe.world();
        let local_rank = world.split_shared(0).rank() as usize;
        let rank = world.rank();
        let (watchdog, armed) = mpsc::channel::<Option<(u64, &'static str)>>();
        std::thread::spawn(move || {
            let mut current: Option<(u64, &'static str)> = None;
            loop {
                let message = match current {
                    Some(_) => armed.recv_timeout(timeout),
                    None => armed
                        .recv()
                        .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                };
                match message {
                    Ok(next) => current = next,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        let (sequence, op) = current.unwrap_or((0, "?"));
                        eprintln!(
                            "error: rank {rank}: collective #{sequence} ({op}) stalled for {:.1}s: another rank died, is stuck, or submitted other collectives; stopping this rank so that the job ends",
                            timeout.as_secs_f64()
                        );
                        std::process::exit(STALLED_EXIT);
                    }
                }
            }
        });
        Ok(Mpi {
            world,
            local_rank,
            sequence: 0,
            scratch: Vec::new(),
            watchdog,
            _universe: universe,
        })
    }

    /// Checks that every rank submits the same collective, naming the first that does not.
    fn agree(&mut self, op: Op, len: usize) -> Result<u64, Error> {
        let sequence = self.sequence;
        self.sequence += 1;
        let _ = self.watchdog.send(Some((
            sequence,
            match op {
                Op::AllreduceSum => "allreduce",
                Op::Broadcast { .. } => "broadcast",
                Op::Barrier => "barrier",
            },
        )));
        let header = [sequence, code(op), len as u64];
        let mut all = vec![0u64; 3 * self.size()];
        self.world.all_gather_into(&header[..], &mut all[..]);
        let me = self.rank();
        for (rank, theirs) in all.chunks_exact(3).enumerate() {
            if theirs != header {
                let _ = self.watchdog.send(None);
                // Report from the lower rank's point of view so every rank names the same pair.
                return Err(Error::Mismatch {
                    sequence,
                    rank: rank.max(me),
                    theirs: decode(if rank > me { theirs[1] } else { header[1] }),
                    their_len: (if rank > me { theirs[2] } else { header[2] }) as usize,
                    other: rank.min(me),
                    ours: decode(if rank > me { header[1] } else { theirs[1] }),
                    our_len: (if rank > me { header[2] } else { theirs[2] }) as usize,
                });
            }
        }
        Ok(sequence)
    }

    fn done(&self) {
        let _ = self.watchdog.send(None);
    }
}

/// Elements of one allreduce call: 1 MiB of `f32`.
const ALLREDUCE_PIECE: usize = 256 * 1024;

impl Communicator for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn local_rank(&self) -> usize {
        self.local_rank
    }

    fn broadcast(&mut self, buffer: &mut [f32], root: usize) -> Result<(), Error> {
        if root >= self.size() {
            return Err(Error::Invalid(format!(
                "broadcast root {root} is not a rank of {}",
                self.size()
            )));
        }
        self.agree(Op::Broadcast { root }, buffer.len())?;
        if !buffer.is_empty() {
            self.world
                .process_at_rank(root as i32)
                .broadcast_into(buffer);
        }
        self.done();
        Ok(())
    }

    fn allreduce_sum(&mut self, buffer: &mut [f32]) -> Result<(), Error> {
        self.agree(Op::AllreduceSum, buffer.len())?;
        // In pieces of 1 MiB: each piece is copied into the send buffer (rsmpi has no
        // MPI_IN_PLACE) and reduced while it is still in cache. One allreduce of a large buffer
        // measured slower than its pieces (about 70% of a plain allreduce at 8 MiB, against
        // 90% and more in pieces).
        for piece in buffer.chunks_mut(ALLREDUCE_PIECE) {
            self.scratch.clear();
            self.scratch.extend_from_slice(piece);
            self.world
                .all_reduce_into(&self.scratch[..], piece, SystemOperation::sum());
        }
        self.done();
        Ok(())
    }

    fn barrier(&mut self) -> Result<(), Error> {
        self.agree(Op::Barrier, 0)?;
        self.world.barrier();
        self.done();
        Ok(())
    }
}
