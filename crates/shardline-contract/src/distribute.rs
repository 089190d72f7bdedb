//! Which instance processes which object: a pure function, tested without I/O.
//!
//! The rule (ours; SageMaker leaves `ShardedByS3Key` undocumented): sort the objects' full URIs
//! byte-wise and deal them round-robin, the i-th URI to instance `i mod N` (0-based rank; the
//! instance is named `algo-<rank+1>`). Every instance's share differs from the mean by less than
//! one object, the rule is the same on every machine, and it never splits an object. With fewer
//! objects than instances, the last instances receive nothing. `FullyReplicated` gives every
//! instance every object.

use serde::{Deserialize, Serialize};

/// How a channel's objects are spread over the instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Distribution {
    /// Each instance receives a unique subset (SageMaker's `ShardedByS3Key`).
    ShardedByKey,
    /// Each instance receives every object (SageMaker's default).
    FullyReplicated,
}

impl Distribution {
    /// The rule as recorded in lineage.
    pub fn rule(self) -> &'static str {
        match self {
            Distribution::ShardedByKey => {
                "ShardedByKey: full URIs sorted byte-wise, the i-th to rank i mod N (algo-<rank+1>)"
            }
            Distribution::FullyReplicated => "FullyReplicated: every rank receives every object",
        }
    }
}

impl std::str::FromStr for Distribution {
    type Err = String;

    fn from_str(text: &str) -> Result<Distribution, String> {
        match text {
            "sharded-by-key" | "ShardedByKey" | "ShardedByS3Key" => Ok(Distribution::ShardedByKey),
            "fully-replicated" | "FullyReplicated" => Ok(Distribution::FullyReplicated),
            _ => Err(format!(
                "unknown distribution {text:?}; use sharded-by-key or fully-replicated"
            )),
        }
    }
}

/// The positions (into `uris`) of the objects that instance `rank` of `instances` processes, in
/// sorted-URI order.
pub fn share(
    uris: &[String],
    rank: usize,
    instances: usize,
    distribution: Distribution,
) -> Vec<usize> {
    let order = sorted(uris);
    match distribution {
        Distribution::FullyReplicated => order,
        Distribution::ShardedByKey => order
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % instances.max(1) == rank)
            .map(|(_, position)| position)
            .collect(),
    }
}

/// Every instance's [`share`] at once (one sort instead of one per instance): element `r` is
/// rank `r`'s.
pub fn shares(uris: &[String], instances: usize, distribution: Distribution) -> Vec<Vec<usize>> {
    let n = instances.max(1);
    let order = sorted(uris);
    match distribution {
        Distribution::FullyReplicated => vec![order; n],
        Distribution::ShardedByKey => {
            let mut all = vec![Vec::with_capacity(uris.len() / n + 1); n];
            for (i, position) in order.into_iter().enumerate() {
                all[i % n].push(position);
            }
            all
        }
    }
}

fn sorted(uris: &[String]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..uris.len()).collect();
    order.sort_by(|&a, &b| uris[a].cmp(&uris[b]));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_shares_at_once_are_each_instances_share() {
        let u = uris(103);
        for distribution in [Distribution::ShardedByKey, Distribution::FullyReplicated] {
            let all = shares(&u, 7, distribution);
            assert_eq!(all.len(), 7);
            for (rank, s) in all.iter().enumerate() {
                assert_eq!(*s, share(&u, rank, 7, distribution));
            }
        }
    }

    fn uris(n: usize) -> Vec<String> {
        // Deliberately unsorted input.
        (0..n)
            .rev()
            .map(|i| format!("s3://b/p/c{}/{i:04}.jpg", i % 3))
            .collect()
    }

    #[test]
    fn sharded_shares_partition_the_objects_evenly() {
        for (n, instances) in [(10usize, 3usize), (1000, 7), (5, 5), (0, 2)] {
            let all = uris(n);
            let mut seen = vec![0; n];
            let mut sizes = Vec::new();
            for rank in 0..instances {
                let part = share(&all, rank, instances, Distribution::ShardedByKey);
                sizes.push(part.len());
                for p in part {
                    seen[p] += 1;
                }
            }
            assert!(
                seen.iter().all(|&c| c == 1),
                "n={n}: every object exactly once"
            );
            let (min, max) = (
                sizes.iter().min().copied().unwrap_or(0),
                sizes.iter().max().copied().unwrap_or(0),
            );
            assert!(max - min <= 1, "n={n} instances={instances}: {sizes:?}");
        }
    }

    #[test]
    fn the_rule_is_sorted_round_robin() {
        let all = vec![
            "s3://b/c".to_string(),
            "s3://b/a".to_string(),
            "s3://b/b".to_string(),
        ];
        assert_eq!(share(&all, 0, 2, Distribution::ShardedByKey), vec![1, 0]);
        assert_eq!(share(&all, 1, 2, Distribution::ShardedByKey), vec![2]);
    }

    #[test]
    fn fewer_objects_than_instances_leaves_the_last_empty() {
        let all = uris(2);
        assert_eq!(
            share(&all, 2, 4, Distribution::ShardedByKey),
            Vec::<usize>::new()
        );
        assert_eq!(
            share(&all, 3, 4, Distribution::ShardedByKey),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn fully_replicated_gives_everyone_everything() {
        let all = uris(9);
        for rank in 0..3 {
            assert_eq!(share(&all, rank, 3, Distribution::FullyReplicated).len(), 9);
        }
    }

    #[test]
    fn parses_both_spellings() {
        assert_eq!("sharded-by-key".parse(), Ok(Distribution::ShardedByKey));
        assert_eq!("ShardedByS3Key".parse(), Ok(Distribution::ShardedByKey));
        assert_eq!(
            "fully-replicated".parse(),
            Ok(Distribution::FullyReplicated)
        );
        assert!("sharded".parse::<Distribution>().is_err());
    }
}
