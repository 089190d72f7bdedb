//! Workers as threads of one process, meeting at a shared table.
//!
//! Each collective is a round: every rank deposits its operation and buffer, the last to arrive
//! computes the result, every rank copies it out, and the round closes when all have read it.
//! Deposits carry the operation and length, so a rank that submits something else is named; a
//! rank whose communicator is dropped (its thread ended or panicked) is marked gone, and waiting
//! ranks fail at once instead of hanging; waits are bounded by a timeout.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{Communicator, Error, Op};

struct Deposit {
    op: Op,
    data: Vec<f32>,
}

struct State {
    /// The sequence number of the open round.
    sequence: u64,
    deposits: Vec<Option<Deposit>>,
    /// The round's result, once every rank has deposited.
    result: Option<Result<Arc<Vec<f32>>, Error>>,
    /// Ranks still to read the result before the round closes.
    readers: usize,
    gone: Vec<bool>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    size: usize,
    timeout: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One worker's end of an in-process group.
pub struct InProcess {
    rank: usize,
    shared: Arc<Shared>,
}

impl InProcess {
    /// Creates a group of `size` connected workers; hand one to each thread. A collective that
    /// waits longer than `timeout` for the others fails.
    pub fn group(size: usize, timeout: Duration) -> Vec<InProcess> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                sequence: 0,
                deposits: (0..size).map(|_| None).collect(),
                result: None,
                readers: 0,
                gone: vec![false; size],
            }),
            changed: Condvar::new(),
            size,
            timeout,
        });
        (0..size)
            .map(|rank| InProcess {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    fn collective(&mut self, op: Op, buffer: &mut [f32]) -> Result<(), Error> {
        let shared = self.shared.clone();
        let deadline = Instant::now() + shared.timeout;
        let mut state = shared.lock();
        // Wait for the previous round to close (every rank has read its result).
        while state.result.is_some() {
            state = self.wait(state, deadline, None)?;
        }
        let sequence = state.sequence;
        state.deposits[self.rank] = Some(Deposit {
            op,
            data: buffer.to_vec(),
        });
        if state.deposits.iter().all(Option::is_some) {
            let result = combine(sequence, &state.deposits);
            state.result = Some(result.map(Arc::new));
            state.readers = shared.size;
            shared.changed.notify_all();
        }
        while state.result.is_none() {
            // A rank that left without joining this round will never join it.
            if let Some(rank) =
                (0..shared.size).find(|&r| state.gone[r] && state.deposits[r].is_none())
            {
                return Err(Error::RankGone { sequence, rank });
            }
            state = self.wait(state, deadline, Some(sequence))?;
        }
        let result = state
            .result
            .clone()
            .unwrap_or_else(|| Err(Error::Invalid("no result".into())));
        state.readers -= 1;
        if state.readers == 0 {
            state.result = None;
            state.sequence += 1;
            state.deposits.iter_mut().for_each(|d| *d = None);
            shared.changed.notify_all();
        }
        drop(state);
        let values = result?;
        if !values.is_empty() {
            buffer.copy_from_slice(&values);
        }
        Ok(())
    }

    fn wait<'a>(
        &self,
        state: MutexGuard<'a, State>,
        deadline: Instant,
        sequence: Option<u64>,
    ) -> Result<MutexGuard<'a, State>, Error> {
        let now = Instant::now();
        if now >= deadline {
            let missing = state
                .deposits
                .iter()
                .enumerate()
                .filter(|(_, d)| d.is_none())
                .map(|(r, _)| r)
                .collect();
            return Err(Error::Timeout {
                sequence: sequence.unwrap_or(state.sequence),
                seconds: self.shared.timeout.as_secs_f64(),
                missing,
            });
        }
        let (state, _) = self
            .shared
            .changed
            .wait_timeout(state, deadline - now)
            .unwrap_or_else(|e| e.into_inner());
        Ok(state)
    }
}

/// Computes a round's result from every rank's deposit, or names the rank that disagrees.
fn combine(sequence: u64, deposits: &[Option<Deposit>]) -> Result<Vec<f32>, Error> {
    let all: Vec<&Deposit> = deposits.iter().flatten().collect();
    let first = all[0];
    for (rank, deposit) in all.iter().enumerate().skip(1) {
        if deposit.op != first.op || deposit.data.len() != first.data.len() {
            return Err(Error::Mismatch {
                sequence,
                rank,
                theirs: deposit.op,
                their_len: deposit.data.len(),
                other: 0,
                ours: first.op,
                our_len: first.data.len(),
            });
        }
    }
    match first.op {
        Op::Barrier => Ok(Vec::new()),
        Op::Broadcast { root } => Ok(all[root].data.clone()),
        Op::AllreduceSum => {
            let mut sum = first.data.clone();
            for deposit in &all[1..] {
                for (s, v) in sum.iter_mut().zip(&deposit.data) {
                    *s += v;
                }
            }
            Ok(sum)
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.gone[self.rank] = true;
        self.shared.changed.notify_all();
    }
}

impl Communicator for InProcess {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn broadcast(&mut self, buffer: &mut [f32], root: usize) -> Result<(), Error> {
        if root >= self.shared.size {
            return Err(Error::Invalid(format!(
                "broadcast root {root} is not a rank of {}",
                self.shared.size
            )));
        }
        self.collective(Op::Broadcast { root }, buffer)
    }

    fn allreduce_sum(&mut self, buffer: &mut [f32]) -> Result<(), Error> {
        self.collective(Op::AllreduceSum, buffer)
    }

    fn barrier(&mut self) -> Result<(), Error> {
        self.collective(Op::Barrier, &mut [])
    }
}
