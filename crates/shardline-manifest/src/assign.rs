//! Stratified, stable channel assignment. Pure functions, tested without any store.
//!
//! The rule, per class:
//! 1. Each object gets a number `u` in [0, 1) from a stable hash of its key and the seed
//!    (XXH3-64 with the seed, the same on every machine and Rust version). The split lays the
//!    channels out as intervals of [0, 1) in the order train, validation, test, and an object
//!    prefers the channel whose interval holds its `u`.
//! 2. An object that an earlier run at the same output already assigned keeps its channel.
//! 3. The counts are then corrected so that each channel holds `floor(n·f)` or `ceil(n·f)` objects
//!    of the class (and at least `min_per_class`): while a channel is outside its bounds, the free
//!    object whose `u` lies nearest the interval of a channel that can take it is moved there.
//!
//! Because only objects near an interval boundary ever move, and only when a count leaves its
//! bounds, adding objects to a class rarely changes where the others go; with the previous
//! assignment given (step 2) it never does.

use crate::split::Split;

/// The stable number in [0, 1) that places `key` among the channel intervals for `seed`.
pub fn unit_hash(seed: u64, key: &str) -> f64 {
    let hash = xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), seed);
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// The bounds `(lo, hi)` on each channel's count for a class of `n` objects.
pub fn bounds(n: usize, split: &Split, min_per_class: usize) -> Vec<(usize, usize)> {
    split
        .parts()
        .iter()
        .map(|(_, fraction)| {
            let exact = n as f64 * fraction;
            // Guard against 0.1 * 10 = 1.0000000000000002 turning into a ceiling of 2.
            let rounded = exact.round();
            let (lo, hi) = if (exact - rounded).abs() < 1e-9 {
                (rounded as usize, rounded as usize)
            } else {
                (exact.floor() as usize, exact.ceil() as usize)
            };
            (lo.max(min_per_class), hi.max(min_per_class))
        })
        .collect()
}

/// A class that cannot meet the per-channel minimum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// How many objects the class has.
    pub objects: usize,
    /// How many each channel would get, in split order.
    pub counts: Vec<usize>,
}

/// Assigns the objects of one class to channels (indices into `split.parts()`).
///
/// `keys` are the class's keys; `previous[i]` is the channel an earlier run gave `keys[i]`, if
/// any. Returns the channel index of every key, or the shortfall when a channel would end up with
/// fewer than `min_per_class` objects.
pub fn assign_class(
    keys: &[&str],
    previous: &[Option<usize>],
    split: &Split,
    seed: u64,
    min_per_class: usize,
) -> Result<Vec<usize>, Shortfall> {
    let k = split.parts().len();
    let n = keys.len();
    let mut edges = Vec::with_capacity(k + 1);
    edges.push(0.0);
    let mut acc = 0.0;
    for (_, fraction) in split.parts() {
        acc += fraction;
        edges.push(acc);
    }
    edges[k] = 1.0;
    let interval_distance = |u: f64, channel: usize| {
        if u < edges[channel] {
            edges[channel] - u
        } else if u >= edges[channel + 1] {
            u - edges[channel + 1]
        } else {
            0.0
        }
    };

    let units: Vec<f64> = keys.iter().map(|key| unit_hash(seed, key)).collect();
    let mut channel: Vec<usize> = units
        .iter()
        .zip(previous)
        .map(|(&u, prev)| {
            prev.unwrap_or_else(|| (0..k).find(|&c| u < edges[c + 1]).unwrap_or(k - 1))
        })
        .collect();
    let mut counts = vec![0usize; k];
    for &c in &channel {
        counts[c] += 1;
    }
    let limits = bounds(n, split, min_per_class);
    let lo_sum: usize = limits.iter().map(|(lo, _)| lo).sum();
    if lo_sum > n {
        return Err(Shortfall {
            objects: n,
            counts: bounds(n, split, 0).iter().map(|(lo, _)| *lo).collect(),
        });
    }

    // Finds the free object in channel `from` nearest to the interval of one of `to`.
    let nearest = |channel: &[usize], from: usize, to: &[usize]| -> Option<(usize, usize)> {
        let mut best: Option<(f64, usize, usize)> = None;
        for i in 0..n {
            if channel[i] != from || previous[i].is_some() {
                continue;
            }
            for &target in to {
                let d = interval_distance(units[i], target);
                if best.is_none_or(|(bd, _, _)| d < bd) {
                    best = Some((d, i, target));
                }
            }
        }
        best.map(|(_, i, target)| (i, target))
    };

    loop {
        let mut moved = false;
        // Channels above their upper bound give objects to channels below theirs.
        for from in 0..k {
            if counts[from] > limits[from].1 {
                let to: Vec<usize> = (0..k).filter(|&c| counts[c] < limits[c].1).collect();
                if let Some((i, target)) = nearest(&channel, from, &to) {
                    channel[i] = target;
                    counts[from] -= 1;
                    counts[target] += 1;
                    moved = true;
                    break;
                }
            }
        }
        if moved {
            continue;
        }
        // Channels below their lower bound take objects from channels above theirs.
        for target in 0..k {
            if counts[target] < limits[target].0 {
                let donors = (0..k).filter(|&c| counts[c] > limits[c].0);
                let mut best: Option<(f64, usize, usize)> = None;
                for from in donors {
                    if let Some((i, _)) = nearest(&channel, from, &[target]) {
                        let d = interval_distance(units[i], target);
                        if best.is_none_or(|(bd, _, _)| d < bd) {
                            best = Some((d, i, from));
                        }
                    }
                }
                if let Some((_, i, from)) = best {
                    channel[i] = target;
                    counts[from] -= 1;
                    counts[target] += 1;
                    moved = true;
                    break;
                }
            }
        }
        if !moved {
            break;
        }
    }
    if counts.iter().any(|&c| c < min_per_class) {
        return Err(Shortfall { objects: n, counts });
    }
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize, class: &str) -> Vec<String> {
        (0..n).map(|i| format!("{class}/{i:06}.jpg")).collect()
    }

    fn counts(assignment: &[usize], k: usize) -> Vec<usize> {
        let mut counts = vec![0; k];
        for &c in assignment {
            counts[c] += 1;
        }
        counts
    }

    fn check(n: usize, split: &str, expected: &[usize]) {
        let split: Split = split.parse().expect("split");
        let owned = keys(n, "cat");
        let keys: Vec<&str> = owned.iter().map(String::as_str).collect();
        let assignment = assign_class(&keys, &vec![None; n], &split, 42, 1).expect("assign");
        assert_eq!(
            counts(&assignment, split.parts().len()),
            expected,
            "n={n} split={split}"
        );
    }

    #[test]
    fn counts_match_the_fractions_within_one_object() {
        check(10, "train=0.8,validation=0.1,test=0.1", &[8, 1, 1]);
        check(100, "train=0.8,validation=0.1,test=0.1", &[80, 10, 10]);
        check(3, "train=0.34,validation=0.33,test=0.33", &[1, 1, 1]);
        for n in [7usize, 13, 99, 1001, 2000] {
            let split = Split::default();
            let owned = keys(n, "dog");
            let keys: Vec<&str> = owned.iter().map(String::as_str).collect();
            let assignment = assign_class(&keys, &vec![None; n], &split, 7, 0).expect("assign");
            for (count, (_, fraction)) in counts(&assignment, 3).iter().zip(split.parts()) {
                let exact = n as f64 * fraction;
                assert!(
                    (*count as f64 - exact).abs() < 1.0 + 1e-9,
                    "n={n}: {count} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_assignment_and_another_seed_another() {
        let split = Split::default();
        let owned = keys(500, "cat");
        let keys: Vec<&str> = owned.iter().map(String::as_str).collect();
        let none = vec![None; keys.len()];
        let a = assign_class(&keys, &none, &split, 1, 1).expect("assign");
        assert_eq!(a, assign_class(&keys, &none, &split, 1, 1).expect("assign"));
        assert_ne!(a, assign_class(&keys, &none, &split, 2, 1).expect("assign"));
    }

    #[test]
    fn unit_hash_is_stable_across_platforms() {
        // Pinned values: if these change, every user's objects move between channels.
        assert_eq!(
            xxhash_rust::xxh3::xxh3_64_with_seed(b"cat/000001.jpg", 42),
            17746568672594545685
        );
        assert_eq!(
            format!("{:.12}", unit_hash(42, "cat/000001.jpg")),
            "0.962043415450"
        );
    }

    #[test]
    fn adding_objects_with_the_previous_assignment_moves_nothing() {
        let split = Split::default();
        let owned = keys(1000, "cat");
        let all: Vec<&str> = owned.iter().map(String::as_str).collect();
        let first = assign_class(&all[..900], &vec![None; 900], &split, 42, 1).expect("assign");
        let previous: Vec<Option<usize>> = (0..1000).map(|i| first.get(i).copied()).collect();
        let second = assign_class(&all, &previous, &split, 42, 1).expect("assign");
        assert_eq!(&second[..900], &first[..]);
        assert_eq!(counts(&second, 3), vec![800, 100, 100]);
    }

    #[test]
    fn adding_objects_without_history_moves_few() {
        let split = Split::default();
        let owned = keys(2000, "cat");
        let all: Vec<&str> = owned.iter().map(String::as_str).collect();
        let first = assign_class(&all[..1800], &vec![None; 1800], &split, 42, 1).expect("assign");
        let second = assign_class(&all, &vec![None; 2000], &split, 42, 1).expect("assign");
        let moved = first.iter().zip(&second).filter(|(a, b)| a != b).count();
        assert!(moved <= 30, "{moved} of 1800 objects moved");
    }

    #[test]
    fn too_small_classes_report_their_counts() {
        let split = Split::default();
        let owned = keys(5, "cat");
        let keys: Vec<&str> = owned.iter().map(String::as_str).collect();
        let short = assign_class(&keys, &[None; 5], &split, 42, 1).expect_err("too small");
        assert_eq!(short.objects, 5);
        assert_eq!(short.counts, vec![4, 0, 0]);
        assert!(assign_class(&keys[..3], &[None; 3], &split, 42, 1).is_err());
        let big = keys.len();
        assert!(
            assign_class(
                &keys,
                &vec![None; big],
                &"train=0.6,test=0.4".parse().expect("split"),
                42,
                2
            )
            .is_ok()
        );
    }
}
