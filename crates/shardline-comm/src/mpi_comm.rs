//! Workers as MPI processes, on one machine or many (`mpirun -np 4 -H host1:2,host2:2 ...`).
//!
//! Every collective is preceded by an exchange of a small header (sequence number, operation,
//! length): each rank sends its header to rank 0, which broadcasts the table back, so ranks that
//! submit different collectives are named instead of deadlocking. A rank that dies, stops
//! submitting or is cut off cannot be detected by MPI itself: rank 0 receives the headers with
//! non-blocking receives bounded by the timeout, and names the ranks (and their hosts) that did
//! not reach the collective; on the other ranks a watchdog thread bounds every collective by the
//! same timeout. Either way the process prints what stalled and exits with an error, which makes
//! `mpirun` stop the whole job rather than hang.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::point_to_point::{Destination as _, Source as _};
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
    timeout: Duration,
    /// Every rank's host name, for naming a rank that does not answer.
    hosts: Vec<String>,
    // Dropped last: finalises MPI.
    _universe: Universe,
}

/// The tag of the header messages (point-to-point, apart from the collectives' traffic).
const HEADER_TAG: i32 = 0x5348;

/// Bytes of a host name in the exchange at start-up.
const HOST_BYTES: usize = 64;

fn name(op: Op) -> &'static str {
    match op {
        Op::AllreduceSum => "allreduce",
        Op::Broadcast { .. } => "broadcast",
        Op::Barrier => "barrier",
    }
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
        let mut mine = [0u8; HOST_BYTES];
        let host = mpi::environment::processor_name().unwrap_or_default();
        let n = host.len().min(HOST_BYTES);
        mine[..n].copy_from_slice(&host.as_bytes()[..n]);
        let mut all = vec![0u8; HOST_BYTES * world.size() as usize];
        world.all_gather_into(&mine[..], &mut all[..]);
        let hosts = all
            .chunks_exact(HOST_BYTES)
            .map(|h| {
                let end = h.iter().position(|&b| b == 0).unwrap_or(HOST_BYTES);
                String::from_utf8_lossy(&h[..end]).into_owned()
            })
            .collect();
        Ok(Mpi {
            world,
            local_rank,
            sequence: 0,
            scratch: Vec::new(),
            watchdog,
            timeout,
            hosts,
            _universe: universe,
        })
    }

    /// Checks that every rank submits the same collective, naming the first that does not.
    fn agree(&mut self, op: Op, len: usize) -> Result<u64, Error> {
        let sequence = self.sequence;
        self.sequence += 1;
        let header = [sequence, code(op), len as u64];
        let mut all = vec![0u64; 3 * self.size()];
        if self.rank() == 0 {
            all[..3].copy_from_slice(&header);
            self.gather_headers(&mut all, sequence, op);
            let _ = self.watchdog.send(Some((sequence, name(op))));
        } else {
            let _ = self.watchdog.send(Some((sequence, name(op))));
            self.world
                .process_at_rank(0)
                .send_with_tag(&header[..], HEADER_TAG);
        }
        self.world.process_at_rank(0).broadcast_into(&mut all[..]);
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

    /// On rank 0: every other rank's header into `all`, or, once the timeout has passed, the
    /// ranks that did not send it named (with their hosts) and this process ended.
    fn gather_headers(&self, all: &mut [u64], sequence: u64, op: Op) {
        let deadline = Instant::now() + self.timeout;
        let world = &self.world;
        mpi::request::scope(|scope| {
            let mut pending: Vec<_> = all
                .chunks_exact_mut(3)
                .enumerate()
                .skip(1)
                .map(|(rank, slot)| {
                    let request = world
                        .process_at_rank(rank as i32)
                        .immediate_receive_into_with_tag(scope, slot, HEADER_TAG);
                    (rank, request)
                })
                .collect();
            loop {
                pending = pending
                    .into_iter()
                    .filter_map(|(rank, request)| match request.test() {
                        Ok(_) => None,
                        Err(request) => Some((rank, request)),
                    })
                    .collect();
                if pending.is_empty() {
                    return;
                }
                if Instant::now() > deadline {
                    let missing: Vec<String> = pending
                        .iter()
                        .map(|(rank, _)| {
                            let host = self.hosts.get(*rank).map_or("?", String::as_str);
                            format!("rank {rank} (on {host})")
                        })
                        .collect();
                    eprintln!(
                        "error: rank 0: {} did not reach collective #{sequence} ({}) within {:.1}s: it died, is stuck, its host is unreachable, or it submitted other collectives; stopping this rank so that the job ends",
                        missing.join(", "),
                        name(op),
                        self.timeout.as_secs_f64()
                    );
                    // The requests are never completed: the process ends here.
                    std::process::exit(STALLED_EXIT);
                }
                std::thread::yield_now();
            }
        });
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
