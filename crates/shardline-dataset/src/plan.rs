//! Which shards each rank reads in an epoch. A pure function, tested without I/O.
//!
//! The rule:
//! - when the shards come from exactly as many processing instances as there are ranks, rank `r`
//!   reads the shards of instance `algo-<r+1>` (the advice: scale processing instances to the
//!   training workers);
//! - otherwise whole shards are dealt so that the ranks' sample counts are as even as possible
//!   (largest shard first, to the rank with the fewest samples; ties by shard name);
//! - every rank runs the same number of steps, `min over ranks of floor(samples / batch)`, so no
//!   rank waits at the epoch's end for a collective the others never submit; each rank's extra
//!   samples are the ones it would have read last, and the shard order is shuffled per epoch, so
//!   different samples are left out in different epochs.

use shardline_contract::shards::ShardRecord;

use crate::Error;

/// One epoch's reading plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochPlan {
    /// For each rank, the positions (into the shard list) of the shards it reads, in order.
    pub shards: Vec<Vec<usize>>,
    /// Steps every rank runs.
    pub steps: usize,
    /// Samples each rank reads.
    pub samples: Vec<u64>,
    /// Whole shards could not give every rank a batch (fewer shards than ranks, say): every
    /// rank reads every shard, in the same order, and keeps every `world`-th sample from its
    /// rank on (see [`EpochPlan::part`]).
    pub split: bool,
}

impl EpochPlan {
    /// Which samples of its shards rank `rank` keeps: `(rank, world)` keeps those whose position
    /// in the rank's reading order is `rank` modulo `world`; `(0, 1)` keeps them all.
    pub fn part(&self, rank: usize) -> (usize, usize) {
        if self.split {
            (rank, self.shards.len().max(1))
        } else {
            (0, 1)
        }
    }
}

fn instance_of(url: &str) -> Option<&str> {
    url.rfind('-').map(|i| &url[..i])
}

fn mix(seed: u64, epoch: u64, text: &str) -> u64 {
    let mut bytes = seed.to_le_bytes().to_vec();
    bytes.extend_from_slice(&epoch.to_le_bytes());
    bytes.extend_from_slice(text.as_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// Plans epoch `epoch` for `world` ranks with `batch` samples per rank and step.
pub fn plan_epoch(
    shards: &[ShardRecord],
    world: usize,
    batch: usize,
    seed: u64,
    epoch: u64,
) -> Result<EpochPlan, Error> {
    let world = world.max(1);
    let batch = batch.max(1);
    let mut instances: Vec<&str> = shards.iter().filter_map(|s| instance_of(&s.url)).collect();
    instances.sort_unstable();
    instances.dedup();
    let mut per_rank: Vec<Vec<usize>> = vec![Vec::new(); world];
    let matched = instances.len() == world
        && (0..world).all(|r| instances.contains(&format!("algo-{}", r + 1).as_str()));
    if matched {
        for (i, shard) in shards.iter().enumerate() {
            if let Some(rank) = instance_of(&shard.url)
                .and_then(|h| h.strip_prefix("algo-"))
                .and_then(|n| n.parse::<usize>().ok())
            {
                per_rank[rank - 1].push(i);
            }
        }
    } else {
        let mut order: Vec<usize> = (0..shards.len()).collect();
        order.sort_by(|&a, &b| {
            shards[b]
                .nsamples
                .cmp(&shards[a].nsamples)
                .then_with(|| shards[a].url.cmp(&shards[b].url))
        });
        let mut load = vec![0u64; world];
        for i in order {
            let rank = (0..world).min_by_key(|&r| (load[r], r)).unwrap_or(0);
            load[rank] += shards[i].nsamples;
            per_rank[rank].push(i);
        }
    }
    for list in &mut per_rank {
        list.sort_by_key(|&i| (mix(seed, epoch, &shards[i].url), i));
    }
    let samples: Vec<u64> = per_rank
        .iter()
        .map(|list| list.iter().map(|&i| shards[i].nsamples).sum())
        .collect();
    let fewest = samples.iter().copied().min().unwrap_or(0);
    let steps = (fewest / batch as u64) as usize;
    if steps > 0 {
        return Ok(EpochPlan {
            shards: per_rank,
            steps,
            samples,
            split: false,
        });
    }
    // Too few shards for whole ones to go round: split the samples instead, so that any number
    // of ranks trains on any output that holds a batch for each.
    let total: u64 = shards.iter().map(|s| s.nsamples).sum();
    let w = world as u64;
    let samples: Vec<u64> = (0..w)
        .map(|r| total / w + u64::from(r < total % w))
        .collect();
    let steps = (total / w / batch as u64) as usize;
    if steps == 0 {
        return Err(Error::TooFewSamples {
            ranks: world,
            batch,
            needed: batch,
            rank: world - 1,
            samples: total / w,
        });
    }
    let mut order: Vec<usize> = (0..shards.len()).collect();
    order.sort_by_key(|&i| (mix(seed, epoch, &shards[i].url), i));
    Ok(EpochPlan {
        shards: vec![order; world],
        steps,
        samples,
        split: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardline_lineage::Digest;

    fn shard(url: &str, n: u64) -> ShardRecord {
        ShardRecord {
            url: url.into(),
            nsamples: n,
            filesize: 0,
            sha256: Digest::of(url.as_bytes()),
        }
    }

    #[test]
    fn one_instance_per_rank_when_the_counts_match() {
        let shards = vec![
            shard("algo-1-000000.tar", 50),
            shard("algo-2-000000.tar", 48),
            shard("algo-1-000001.tar", 10),
        ];
        let plan = plan_epoch(&shards, 2, 8, 0, 0).expect("plan");
        let mut first = plan.shards[0].clone();
        first.sort();
        assert_eq!(first, vec![0, 2]);
        assert_eq!(plan.shards[1], vec![1]);
        assert_eq!(plan.samples, vec![60, 48]);
        assert_eq!(plan.steps, 6, "48 / 8 on the smaller rank");
    }

    #[test]
    fn whole_shards_are_dealt_evenly_otherwise() {
        let shards: Vec<ShardRecord> = (0..7)
            .map(|i| shard(&format!("algo-1-{i:06}.tar"), 10 + i))
            .collect();
        let plan = plan_epoch(&shards, 3, 4, 0, 0).expect("plan");
        let (min, max) = (
            plan.samples.iter().min().copied().unwrap_or(0),
            plan.samples.iter().max().copied().unwrap_or(0),
        );
        assert!(max - min <= 16, "{:?}", plan.samples);
        let mut all: Vec<usize> = plan.shards.concat();
        all.sort();
        assert_eq!(
            all,
            (0..7).collect::<Vec<_>>(),
            "every shard read exactly once"
        );
        assert_eq!(plan.steps, (min / 4) as usize);
    }

    #[test]
    fn the_order_changes_by_epoch_not_by_call() {
        let shards: Vec<ShardRecord> = (0..20)
            .map(|i| shard(&format!("algo-1-{i:06}.tar"), 5))
            .collect();
        let a = plan_epoch(&shards, 1, 1, 7, 0).expect("plan");
        assert_eq!(a, plan_epoch(&shards, 1, 1, 7, 0).expect("plan"));
        assert_ne!(
            a.shards,
            plan_epoch(&shards, 1, 1, 7, 1).expect("plan").shards
        );
    }

    #[test]
    fn too_little_data_for_a_batch_is_an_error() {
        let shards = vec![shard("algo-1-000000.tar", 3)];
        let err = plan_epoch(&shards, 2, 4, 0, 0)
            .expect_err("too small")
            .to_string();
        assert!(err.contains("rank 1 gets only 1"), "{err}");
    }

    #[test]
    fn fewer_shards_than_ranks_split_the_samples() {
        // One processing instance's single shard, two training ranks (the defaults).
        let shards = vec![shard("algo-1-000000.tar", 11)];
        let plan = plan_epoch(&shards, 2, 4, 0, 0).expect("plan");
        assert!(plan.split);
        assert_eq!(plan.shards, vec![vec![0], vec![0]]);
        assert_eq!(plan.samples, vec![6, 5]);
        assert_eq!(plan.steps, 1);
        assert_eq!((plan.part(0), plan.part(1)), ((0, 2), (1, 2)));
        // Enough shards: whole ones, as before.
        let many: Vec<ShardRecord> = (0..4)
            .map(|i| shard(&format!("algo-1-{i:06}.tar"), 10))
            .collect();
        let plan = plan_epoch(&many, 2, 4, 0, 0).expect("plan");
        assert!(!plan.split);
        assert_eq!(plan.part(1), (0, 1));
    }
}
