//! Tensor fusion: many small gradients packed into a few buffers, each averaged by one
//! allreduce, then unpacked. Fewer, larger collectives cost less than one per tensor.

use std::time::Instant;

use crate::{Communicator, Error};

/// What one fused allreduce did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FusedStats {
    /// Collectives issued.
    pub buckets: usize,
    /// Bytes reduced.
    pub bytes: usize,
    /// Seconds spent in the collectives.
    pub seconds: f64,
}

/// Averages every tensor over the ranks, packing them in order into buckets of at most
/// `bucket_bytes` (a tensor larger than a bucket is split across buckets).
pub fn allreduce_fused(
    comm: &mut dyn Communicator,
    tensors: &mut [&mut [f32]],
    bucket_bytes: usize,
) -> Result<FusedStats, Error> {
    let capacity = (bucket_bytes / 4).max(1);
    let total: usize = tensors.iter().map(|t| t.len()).sum();
    let mut stats = FusedStats {
        bytes: total * 4,
        ..FusedStats::default()
    };
    let mut bucket: Vec<f32> = Vec::with_capacity(capacity.min(total));
    // (tensor, offset in tensor, length) of each piece in the bucket, in order.
    let mut pieces: Vec<(usize, usize, usize)> = Vec::new();
    let mut flush = |bucket: &mut Vec<f32>,
                     pieces: &mut Vec<(usize, usize, usize)>,
                     tensors: &mut [&mut [f32]]| {
        if bucket.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        comm.allreduce_mean(bucket)?;
        stats.seconds += started.elapsed().as_secs_f64();
        stats.buckets += 1;
        let mut at = 0;
        for &(t, offset, len) in pieces.iter() {
            tensors[t][offset..offset + len].copy_from_slice(&bucket[at..at + len]);
            at += len;
        }
        bucket.clear();
        pieces.clear();
        Ok::<(), Error>(())
    };
    for t in 0..tensors.len() {
        let mut offset = 0;
        while offset < tensors[t].len() {
            let room = capacity - bucket.len();
            let len = room.min(tensors[t].len() - offset);
            bucket.extend_from_slice(&tensors[t][offset..offset + len]);
            pieces.push((t, offset, len));
            offset += len;
            if bucket.len() == capacity {
                flush(&mut bucket, &mut pieces, tensors)?;
            }
        }
    }
    flush(&mut bucket, &mut pieces, tensors)?;
    Ok(stats)
}
