//! Shardline as a SageMaker training container on several instances, unchanged.
//!
//! SageMaker starts the same container, with the same arguments, on every instance of a training
//! job and tells each who it is in `/opt/ml/input/config/resourceconfig.json` (`current_host`,
//! `hosts`, `network_interface_name`); the training toolkit, when an image has it, repeats that
//! as `SM_CURRENT_HOST`, `SM_HOSTS` and `SM_NETWORK_INTERFACE_NAME`. As SageMaker's MPI
//! integration does, the first host (the leader) starts the job with `mpirun` over the host list,
//! one rank per host, and the others (followers) wait for the MPI daemon that `mpirun` starts on
//! them to come and go, then exit.
//!
//! [`detect`] reads the hosts; [`TrainingHosts::lead`] is what the leader does (its command is
//! [`TrainingHosts::mpirun`]);
//! [`TrainingHosts::follow`] is what a follower does.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Error;

/// SageMaker's training root.
pub const ROOT: &str = "/opt/ml";

/// Who this instance of a training job is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingHosts {
    /// This instance's host name (`algo-2`).
    pub current: String,
    /// Every host of the job, in order (`algo-1`, `algo-2`, ...).
    pub hosts: Vec<String>,
    /// The network interface the hosts reach each other on (`eth0`).
    pub interface: Option<String>,
    /// Where it was read from, for messages.
    pub source: String,
}

#[derive(serde::Deserialize)]
struct ResourceConfig {
    current_host: String,
    hosts: Vec<String>,
    #[serde(default)]
    network_interface_name: Option<String>,
}

fn bad(input: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::BadInput {
        stage: "train",
        input: input.into(),
        reason: reason.into(),
    }
}

/// The training job's hosts: from `<root>/input/config/resourceconfig.json`, else from
/// `SM_HOSTS` and `SM_CURRENT_HOST` (`var` reads the environment); `None` outside SageMaker.
pub fn detect(
    root: &Path,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<TrainingHosts>, Error> {
    let file = root.join("input/config/resourceconfig.json");
    let found = match std::fs::read_to_string(&file) {
        Ok(text) => {
            let c: ResourceConfig = serde_json::from_str(&text).map_err(|e| {
                bad(
                    file.display().to_string(),
                    format!("is not a SageMaker resource config ({e})"),
                )
            })?;
            TrainingHosts {
                current: c.current_host,
                hosts: c.hosts,
                interface: c.network_interface_name,
                source: file.display().to_string(),
            }
        }
        Err(_) => match (var("SM_HOSTS"), var("SM_CURRENT_HOST")) {
            (Some(hosts), Some(current)) => TrainingHosts {
                hosts: serde_json::from_str(&hosts).map_err(|e| {
                    bad(
                        "SM_HOSTS",
                        format!("{hosts:?} is not a JSON list of host names ({e})"),
                    )
                })?,
                current,
                interface: var("SM_NETWORK_INTERFACE_NAME"),
                source: "SM_HOSTS and SM_CURRENT_HOST".into(),
            },
            (Some(_), None) | (None, Some(_)) => {
                return Err(bad(
                    "SM_HOSTS and SM_CURRENT_HOST",
                    "only one of the two is set; a multi-host job needs both (or neither, to train on this host alone)"
                        .to_string(),
                ));
            }
            (None, None) => return Ok(None),
        },
    };
    let mut seen = std::collections::BTreeSet::new();
    if let Some(twice) = found.hosts.iter().find(|h| !seen.insert(h.as_str())) {
        return Err(bad(
            &found.source,
            format!(
                "the host {twice:?} is listed twice in {:?}; each host runs one rank",
                found.hosts
            ),
        ));
    }
    if !found.hosts.contains(&found.current) {
        return Err(bad(
            &found.source,
            format!(
                "the current host {:?} is not one of the hosts {:?}",
                found.current, found.hosts
            ),
        ));
    }
    Ok(Some(found))
}

/// The environment variables a rank on another host needs from the leader's (`mpirun -x`).
fn passed_on(name: &str) -> bool {
    ["AWS_", "SHARDLINE_", "SM_", "RUST_", "OMPI_MCA_"]
        .iter()
        .any(|p| name.starts_with(p))
        || matches!(name, "PATH" | "LD_LIBRARY_PATH" | "HOME")
}

impl TrainingHosts {
    /// Whether this instance starts the job (the first host).
    pub fn leads(&self) -> bool {
        self.hosts.first() == Some(&self.current)
    }

    /// The leader's command: `mpirun` with one rank per host running `program args`, the
    /// environment passed on to every rank, TCP on the job's interface.
    pub fn mpirun(&self, program: &Path, args: &[OsString]) -> std::process::Command {
        let mut command = std::process::Command::new("mpirun");
        command
            .args(["--allow-run-as-root", "--bind-to", "none", "--host"])
            .arg(
                self.hosts
                    .iter()
                    .map(|h| format!("{h}:1"))
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .args(["-np", &self.hosts.len().to_string()]);
        let mut names: Vec<String> = std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .filter(|k| passed_on(k))
            .collect();
        if let Some(interface) = &self.interface {
            for key in ["OMPI_MCA_btl_tcp_if_include", "OMPI_MCA_oob_tcp_if_include"] {
                if std::env::var_os(key).is_none() {
                    command.env(key, interface);
                    names.push(key.to_string());
                }
            }
        }
        names.sort();
        names.dedup();
        for name in names {
            command.arg("-x").arg(name);
        }
        command.arg(program).args(args);
        command
    }

    /// What the leader does: runs `program args` as one MPI rank per host ([`Self::mpirun`])
    /// and waits for it; on failure writes SageMaker's `<root>/output/failure` (what the console
    /// shows) and returns the error.
    pub fn lead(&self, root: &Path, program: &Path, args: &[OsString]) -> Result<(), Error> {
        let status = self
            .mpirun(program, args)
            .status()
            .map_err(|source| Error::Start {
                stage: "train",
                program: "mpirun".into(),
                source,
                hint: "is Open MPI installed in the image?".into(),
            })?;
        if status.success() {
            return Ok(());
        }
        let reason = format!("the MPI job over these hosts failed ({status})");
        let failure = root.join("output/failure");
        if let Some(dir) = failure.parent()
            && std::fs::create_dir_all(dir).is_ok()
        {
            // Best effort: the error below is the report; this file is SageMaker's copy of it.
            let _ = std::fs::write(
                &failure,
                format!("train: {}: {reason}", self.hosts.join(", ")),
            );
        }
        Err(bad(self.hosts.join(", "), reason))
    }

    /// What a follower does: waits (at most `appear`) for the MPI daemon the leader's `mpirun`
    /// starts on this host (`orted` in Open MPI 4, `prted` in Open MPI 5), then for it to end.
    pub fn follow(&self, appear: Duration) -> Result<(), Error> {
        let started = Instant::now();
        loop {
            if !daemons().is_empty() {
                break;
            }
            if started.elapsed() > appear {
                return Err(bad(
                    &self.source,
                    format!(
                        "this host ({}) waited {} s for the leader {} to start the MPI job, in vain; is {} reachable, and did it start?",
                        self.current,
                        appear.as_secs(),
                        self.hosts[0],
                        self.hosts[0]
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        while !daemons().is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }
}

/// The Open MPI daemons (`orted`, or Open MPI 5's `prted`) of this host: in this process's UTS
/// namespace (a container's host name),
/// so that hosts sharing one process table (namespace hosts on one machine) see only their own.
fn daemons() -> Vec<PathBuf> {
    let own = std::fs::read_link("/proc/self/ns/uts").ok();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            std::fs::read_to_string(p.join("comm"))
                .is_ok_and(|c| matches!(c.trim(), "orted" | "prted"))
                && std::fs::read_link(p.join("ns/uts")).ok() == own
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn hosts_come_from_the_resource_config_or_the_toolkit_variables() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(detect(dir.path(), &none).unwrap(), None);
        let env = |k: &str| match k {
            "SM_HOSTS" => Some(r#"["algo-1","algo-2"]"#.to_string()),
            "SM_CURRENT_HOST" => Some("algo-2".to_string()),
            _ => None,
        };
        let h = detect(dir.path(), &env).unwrap().unwrap();
        assert_eq!(h.hosts, ["algo-1", "algo-2"]);
        assert!(!h.leads());
        std::fs::create_dir_all(dir.path().join("input/config")).unwrap();
        std::fs::write(
            dir.path().join("input/config/resourceconfig.json"),
            r#"{"current_host": "algo-1", "hosts": ["algo-1", "algo-2", "algo-3"], "network_interface_name": "eth0"}"#,
        )
        .unwrap();
        let h = detect(dir.path(), &env).unwrap().unwrap();
        assert_eq!(h.hosts.len(), 3);
        assert!(h.leads());
        assert_eq!(h.interface.as_deref(), Some("eth0"));
        let args: Vec<String> = h
            .mpirun(Path::new("/usr/bin/shardline"), &["train".into()])
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = args.join(" ");
        assert!(
            line.contains("--host algo-1:1,algo-2:1,algo-3:1 -np 3"),
            "{line}"
        );
        assert!(line.contains("-x OMPI_MCA_btl_tcp_if_include"), "{line}");
        assert!(line.ends_with("/usr/bin/shardline train"), "{line}");
    }

    #[test]
    fn a_current_host_outside_the_hosts_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("input/config")).unwrap();
        std::fs::write(
            dir.path().join("input/config/resourceconfig.json"),
            r#"{"current_host": "algo-9", "hosts": ["algo-1"]}"#,
        )
        .unwrap();
        let e = detect(dir.path(), &none).unwrap_err().to_string();
        assert!(e.contains("resourceconfig.json"), "{e}");
        assert!(e.contains("algo-9"), "{e}");
        std::fs::write(
            dir.path().join("input/config/resourceconfig.json"),
            "not json",
        )
        .unwrap();
        let e = detect(dir.path(), &none).unwrap_err().to_string();
        assert!(e.contains("is not a SageMaker resource config"), "{e}");
        // A host twice would run two ranks on one host under one name.
        std::fs::write(
            dir.path().join("input/config/resourceconfig.json"),
            r#"{"current_host": "algo-1", "hosts": ["algo-1", "algo-2", "algo-1"]}"#,
        )
        .unwrap();
        let e = detect(dir.path(), &none).unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn half_of_the_toolkit_variables_is_an_error_not_a_local_run() {
        let dir = tempfile::tempdir().unwrap();
        let hosts_only = |k: &str| (k == "SM_HOSTS").then(|| r#"["algo-1","algo-2"]"#.to_string());
        let e = detect(dir.path(), &hosts_only).unwrap_err().to_string();
        assert!(e.contains("only one of the two"), "{e}");
    }
}
