//! Instance names: rank 0 is `algo-1`, as SageMaker names the hosts of a job. One parser for
//! both directions.

/// The host name of a 0-based rank: `algo-1` for rank 0.
pub fn host(rank: usize) -> String {
    format!("algo-{}", rank + 1)
}

/// The 0-based rank of a host name `algo-<n>` (n ≥ 1); `None` for anything else.
pub fn rank(host: &str) -> Option<usize> {
    let n: usize = host.strip_prefix("algo-")?.parse().ok()?;
    if n == 0 || host != format!("algo-{n}") {
        return None;
    }
    Some(n - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ranks_round_trip() {
        for r in [0, 1, 9, 10, 1234] {
            assert_eq!(rank(&host(r)), Some(r));
        }
        assert_eq!(host(0), "algo-1");
        for bad in [
            "algo-0", "algo-", "algo-01", "algo-+1", "host-1", "algo-1x", "",
        ] {
            assert_eq!(rank(bad), None, "{bad}");
        }
    }
}
