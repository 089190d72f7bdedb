//! Who this instance is: its rank, the world size and its host name, read from the launcher
//! that started it. A pure function of the environment and the SageMaker resource config, so
//! every source is tested without starting anything.
//!
//! Sources, first match wins:
//! 1. Shardline's own local launcher: `SHARDLINE_RANK`, `SHARDLINE_WORLD_SIZE`.
//! 2. Open MPI (`mpirun`): `OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_SIZE`.
//! 3. Slurm (`srun`): `SLURM_PROCID`, `SLURM_NTASKS`.
//! 4. A Kubernetes Indexed Job: `JOB_COMPLETION_INDEX`, with the world size from
//!    `SHARDLINE_WORLD_SIZE` or `--instances`.
//! 5. SageMaker: `/opt/ml/config/resourceconfig.json` (`current_host`, `hosts`).

use serde::Deserialize;

/// This instance's place in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// 0-based rank.
    pub rank: usize,
    /// Number of instances.
    pub size: usize,
    /// Where the identity came from, for logs.
    pub source: &'static str,
}

impl Identity {
    /// The SageMaker-style host name, `algo-<rank+1>`.
    pub fn host(&self) -> String {
        host(self.rank)
    }
}

pub use shardline_contract::instance::host;

#[derive(Deserialize)]
struct ResourceConfig {
    current_host: String,
    hosts: Vec<String>,
}

/// Reads the identity from environment variables (`var`) and the content of SageMaker's
/// resource config, if present. `instances` is the `--instances` flag, used by sources that do
/// not carry the world size. Returns `Ok(None)` when no launcher identity is present.
pub fn detect(
    var: &dyn Fn(&str) -> Option<String>,
    resource_config: Option<&str>,
    instances: Option<usize>,
) -> Result<Option<Identity>, String> {
    let number = |name: &str| -> Result<Option<usize>, String> {
        match var(name) {
            None => Ok(None),
            Some(text) => text
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| format!("{name}={text:?} is not a whole number")),
        }
    };
    let pair = |rank: &str, size: &str, source: &'static str| -> Result<Option<Identity>, String> {
        match (number(rank)?, number(size)?) {
            (Some(rank), Some(size)) => Ok(Some(Identity { rank, size, source })),
            (Some(_), None) => Err(format!("{rank} is set but {size} is not")),
            _ => Ok(None),
        }
    };
    let found = if let Some(id) = pair(
        "SHARDLINE_RANK",
        "SHARDLINE_WORLD_SIZE",
        "shardline launcher",
    )? {
        Some(id)
    } else if let Some(id) = pair("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "Open MPI")? {
        Some(id)
    } else if let Some(id) = pair("SLURM_PROCID", "SLURM_NTASKS", "Slurm")? {
        Some(id)
    } else if let Some(rank) = number("JOB_COMPLETION_INDEX")? {
        let size = number("SHARDLINE_WORLD_SIZE")?.or(instances).ok_or_else(|| {
            "JOB_COMPLETION_INDEX is set but the world size is not: set SHARDLINE_WORLD_SIZE or `instances` (the Job's completions)".to_string()
        })?;
        Some(Identity {
            rank,
            size,
            source: "Kubernetes Indexed Job",
        })
    } else if let Some(text) = resource_config {
        let config: ResourceConfig = serde_json::from_str(text)
            .map_err(|e| format!("resourceconfig.json is not valid ({e})"))?;
        let rank = config
            .hosts
            .iter()
            .position(|h| *h == config.current_host)
            .ok_or_else(|| {
                format!(
                    "resourceconfig.json: current_host {:?} is not in hosts",
                    config.current_host
                )
            })?;
        Some(Identity {
            rank,
            size: config.hosts.len(),
            source: "SageMaker resourceconfig.json",
        })
    } else {
        None
    };
    if let Some(id) = &found {
        if id.size == 0 || id.rank >= id.size {
            return Err(format!(
                "{}: rank {} is not below the world size {}",
                id.source, id.rank, id.size
            ));
        }
        if let Some(n) = instances
            && n != id.size
        {
            return Err(format!(
                "{} says the world size is {}, but `instances` is {n}; drop `instances` or make them agree",
                id.source, id.size
            ));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        vars: &[(&str, &str)],
        config: Option<&str>,
        instances: Option<usize>,
    ) -> Result<Option<Identity>, String> {
        let map: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        detect(&|name| map.get(name).cloned(), config, instances)
    }

    fn id(rank: usize, size: usize, source: &'static str) -> Option<Identity> {
        Some(Identity { rank, size, source })
    }

    #[test]
    fn reads_every_launcher() {
        assert_eq!(check(&[], None, None), Ok(None));
        assert_eq!(
            check(
                &[("SHARDLINE_RANK", "1"), ("SHARDLINE_WORLD_SIZE", "2")],
                None,
                None
            ),
            Ok(id(1, 2, "shardline launcher"))
        );
        assert_eq!(
            check(
                &[("OMPI_COMM_WORLD_RANK", "3"), ("OMPI_COMM_WORLD_SIZE", "4")],
                None,
                Some(4)
            ),
            Ok(id(3, 4, "Open MPI"))
        );
        assert_eq!(
            check(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "8")], None, None),
            Ok(id(0, 8, "Slurm"))
        );
        assert_eq!(
            check(&[("JOB_COMPLETION_INDEX", "2")], None, Some(3)),
            Ok(id(2, 3, "Kubernetes Indexed Job"))
        );
        assert_eq!(
            check(
                &[],
                Some(r#"{"current_host": "algo-2", "hosts": ["algo-1", "algo-2", "algo-3"]}"#),
                None
            ),
            Ok(id(1, 3, "SageMaker resourceconfig.json"))
        );
        assert_eq!(host(0), "algo-1");
    }

    #[test]
    fn reports_inconsistent_identities() {
        let err = |r: Result<Option<Identity>, String>| r.expect_err("inconsistent");
        assert!(
            err(check(
                &[("SLURM_PROCID", "x"), ("SLURM_NTASKS", "2")],
                None,
                None
            ))
            .contains("SLURM_PROCID")
        );
        assert!(
            err(check(
                &[("OMPI_COMM_WORLD_RANK", "2"), ("OMPI_COMM_WORLD_SIZE", "2")],
                None,
                None
            ))
            .contains("not below")
        );
        assert!(
            err(check(&[("JOB_COMPLETION_INDEX", "0")], None, None))
                .contains("SHARDLINE_WORLD_SIZE")
        );
        assert!(
            err(check(
                &[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")],
                None,
                Some(3)
            ))
            .contains("`instances` is 3")
        );
        assert!(
            err(check(
                &[],
                Some(r#"{"current_host": "x", "hosts": ["algo-1"]}"#),
                None
            ))
            .contains("current_host")
        );
    }
}
