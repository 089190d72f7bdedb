//! Shardline's collectives for data-parallel training, Horovod's model: every rank holds a full
//! copy of the model; parameters are broadcast from rank 0 at the start; gradients are averaged by
//! allreduce each step, packed into fused buckets.
//!
//! The seam is [`Communicator`]: a small trait (rank, size, broadcast, allreduce, barrier) that
//! each engine implements. [`InProcess`] connects workers that are threads of one process. Every
//! implementation passes the same [`conformance`] suite. Collectives are checked, not trusted: a
//! rank that submits a different collective (another operation or length) or disappears makes the
//! others fail with an error naming it, within a timeout, instead of hanging — Horovod's most
//! reported failure.
//!
//! This crate knows nothing about models, tensors' meaning or data.

pub mod conformance;
mod fused;
mod in_process;
#[cfg(feature = "mpi")]
pub mod mpi_comm;

pub use fused::{FusedStats, allreduce_fused};
pub use in_process::InProcess;

/// Which collective a rank submitted, for mismatch reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Element-wise sum over ranks.
    AllreduceSum,
    /// Copy from the root rank to all.
    Broadcast {
        /// The rank whose buffer is copied.
        root: usize,
    },
    /// Wait for every rank.
    Barrier,
}

/// Why a collective failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// Ranks submitted different collectives at the same step.
    #[error(
        "collective #{sequence}: rank {rank} submitted {theirs:?} of {their_len} values while rank {other} submitted {ours:?} of {our_len}; every rank must submit the same collectives in the same order"
    )]
    Mismatch {
        /// The collective's sequence number.
        sequence: u64,
        /// The rank that disagreed.
        rank: usize,
        /// What it submitted.
        theirs: Op,
        /// Its buffer length.
        their_len: usize,
        /// A rank it disagreed with.
        other: usize,
        /// What that rank submitted.
        ours: Op,
        /// That rank's buffer length.
        our_len: usize,
    },
    /// A rank left the group (its worker ended or died).
    #[error("collective #{sequence}: rank {rank} is gone (its worker ended or died)")]
    RankGone {
        /// The collective's sequence number.
        sequence: u64,
        /// The rank that left.
        rank: usize,
    },
    /// Not every rank arrived in time.
    #[error(
        "collective #{sequence} timed out after {seconds:.1}s waiting for rank(s) {missing:?}; they may be stuck, dead, or submitting other collectives"
    )]
    Timeout {
        /// The collective's sequence number.
        sequence: u64,
        /// How long the caller waited.
        seconds: f64,
        /// The ranks that did not arrive.
        missing: Vec<usize>,
    },
    /// The arguments were invalid.
    #[error("invalid collective: {0}")]
    Invalid(String),
}

/// The collectives data-parallel training needs. Every rank must call the same collectives in
/// the same order with buffers of the same length.
pub trait Communicator {
    /// This worker's rank, 0-based.
    fn rank(&self) -> usize;
    /// The number of workers.
    fn size(&self) -> usize;
    /// This worker's rank among the workers of its machine.
    fn local_rank(&self) -> usize {
        self.rank()
    }
    /// Replaces `buffer` on every rank with `root`'s.
    fn broadcast(&mut self, buffer: &mut [f32], root: usize) -> Result<(), Error>;
    /// Replaces `buffer` on every rank with the element-wise sum over ranks.
    fn allreduce_sum(&mut self, buffer: &mut [f32]) -> Result<(), Error>;
    /// Returns once every rank has called it.
    fn barrier(&mut self) -> Result<(), Error>;

    /// Replaces `buffer` on every rank with the element-wise mean over ranks.
    fn allreduce_mean(&mut self, buffer: &mut [f32]) -> Result<(), Error> {
        self.allreduce_sum(buffer)?;
        let scale = 1.0 / self.size() as f32;
        buffer.iter_mut().for_each(|v| *v *= scale);
        Ok(())
    }
}
