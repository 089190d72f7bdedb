//! A real Slurm cluster on the network-namespace hosts of a [`Hosts`] harness: Debian's
//! `slurmctld` on the first host, one `slurmd` per host, and a private `munged` for their
//! credentials.
//!
//! [`Slurm::start`] writes a `slurm.conf` (and `cgroup.conf`) under its directory, starts
//!
//! - `munged` in the root namespace with its own key, socket, pid and seed files under the
//!   directory (a Unix socket named by a path is reachable from every network namespace; the
//!   configuration points Slurm at it with `AuthInfo=socket=...`);
//! - `slurmctld -D` inside host 1, listening on its address;
//! - `slurmd -D -N hK` inside each host, its spool, pid, log and temporary directory (`TmpFS`,
//!   where PMIx puts its per-step files: the hosts share one `/tmp`) under `<dir>/nodes/hK`,
//!
//! and waits until every node is idle. Every program and client reads the configuration from
//! `SLURM_CONF` ([`Slurm::env`]). Processes are tracked by pid (`proctrack/linuxproc`, no task
//! plugin), so nothing needs cgroups beyond the plugin slurmd initialises at start: cgroup v1,
//! pointed at an empty folder of the harness's (whatever the machine's own hierarchy is).
//!
//! Teardown ([`Slurm::stop`] or `Drop`, which also runs while a failing test unwinds) cancels
//! every job, stops the daemons (SIGTERM, then SIGKILL) and kills any step daemon left in the
//! hosts; the [`Hosts`] harness, dropped after, removes the namespaces.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::hosts::{HostCommand, Hosts, HostsError};

/// How long the nodes may take to register as idle.
const READY: Duration = Duration::from_secs(60);

/// A Slurm cluster on the hosts of a [`Hosts`] harness; stopped on [`Slurm::stop`] or drop.
#[derive(Debug)]
pub struct Slurm<'h> {
    hosts: &'h Hosts,
    dir: PathBuf,
    conf: PathBuf,
    daemons: Vec<(String, Child)>,
    stopped: bool,
}

fn program_exists(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| d.join(name).is_file())
            || ["/usr/sbin", "/sbin"]
                .iter()
                .any(|d| Path::new(d).join(name).is_file())
    })
}

fn setup(step: &str, detail: impl Into<String>) -> HostsError {
    HostsError::Setup {
        step: step.into(),
        detail: detail.into(),
    }
}

impl<'h> Slurm<'h> {
    /// Starts a cluster whose nodes are `hosts` (each with all the machine's CPUs), its files
    /// under `dir` (created; reused content is wiped).
    pub fn start(hosts: &'h Hosts, dir: &Path) -> Result<Slurm<'h>, HostsError> {
        for program in ["munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue"] {
            if !program_exists(program) {
                return Err(setup(
                    "programs",
                    format!(
                        "{program} is not installed; install Debian's slurmctld, slurmd, slurm-client and munge (`.ci/run` does)"
                    ),
                ));
            }
        }
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        let dir = std::path::absolute(dir)?;
        let mut slurm = Slurm {
            hosts,
            conf: dir.join("slurm.conf"),
            dir,
            daemons: Vec::new(),
            stopped: false,
        };
        slurm.write_config()?;
        slurm.start_munge()?;
        let ctld = hosts
            .command(0, "slurmctld")
            .args(["-D", "-i"])
            .env("SLURM_CONF", &slurm.conf)
            .stdin(Stdio::null())
            .stdout(log(&slurm.dir.join("slurmctld.out"))?)
            .stderr(log(&slurm.dir.join("slurmctld.err"))?)
            .spawn()?;
        slurm.daemons.push(("slurmctld".into(), ctld));
        for (i, host) in hosts.hosts().iter().enumerate() {
            let node_dir = slurm.dir.join("nodes").join(&host.name);
            let slurmd = hosts
                .command(i, "slurmd")
                .args(["-D", "-N", &host.name])
                .env("SLURM_CONF", &slurm.conf)
                .stdin(Stdio::null())
                .stdout(log(&node_dir.join("slurmd.out"))?)
                .stderr(log(&node_dir.join("slurmd.err"))?)
                .spawn()?;
            slurm
                .daemons
                .push((format!("slurmd {}", host.name), slurmd));
        }
        slurm.wait_idle()?;
        Ok(slurm)
    }

    fn write_config(&self) -> Result<(), HostsError> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let first = self.hosts.host(0);
        let d = self.dir.display();
        let mut conf = format!(
            "# Written by shardline-testkit's Slurm harness.
ClusterName=shardline
SlurmctldHost={ctld}({addr})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge/munge.socket
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
StateSaveLocation={d}/ctld
SlurmctldPidFile={d}/ctld/slurmctld.pid
SlurmctldLogFile={d}/ctld/slurmctld.log
SlurmdSpoolDir={d}/nodes/%n
SlurmdPidFile={d}/nodes/%n/slurmd.pid
SlurmdLogFile={d}/nodes/%n/slurmd.log
TmpFS={d}/nodes/%n/tmp
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# Ended jobs stay visible to squeue for 10 minutes.
MinJobAge=600
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
",
            ctld = first.name,
            addr = first.addr,
        );
        std::fs::create_dir_all(self.dir.join("ctld"))?;
        for host in self.hosts.hosts() {
            std::fs::create_dir_all(self.dir.join("nodes").join(&host.name).join("tmp"))?;
            let _ = writeln!(
                conf,
                "NodeName={} NodeAddr={} CPUs={cpus} RealMemory=1000 State=UNKNOWN",
                host.name, host.addr
            );
        }
        let _ = writeln!(
            conf,
            "PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
        );
        std::fs::write(&self.conf, conf)?;
        // slurmd loads a cgroup plugin at start even when no plugin uses cgroups (process
        // tracking by pid, no task plugin). Slurm 22.05 has no "disabled" plugin; v1's start
        // touches nothing, so it is pointed at an empty folder of the harness's own: the
        // machine's cgroup version (v1, hybrid or unified; writable or not) does not matter.
        let cgroup_dir = self.dir.join("cgroup");
        std::fs::create_dir_all(&cgroup_dir)?;
        std::fs::write(
            self.dir.join("cgroup.conf"),
            format!(
                "CgroupPlugin=cgroup/v1\nCgroupMountpoint={}\nCgroupAutomount=no\n",
                cgroup_dir.display()
            ),
        )?;
        Ok(())
    }

    fn start_munge(&mut self) -> Result<(), HostsError> {
        let munge = self.dir.join("munge");
        std::fs::create_dir_all(&munge)?;
        std::fs::set_permissions(&munge, std::fs::Permissions::from_mode(0o700))?;
        let key = munge.join("munge.key");
        let mut bytes = vec![0u8; 1024];
        let mut random = std::fs::File::open("/dev/urandom")?;
        std::io::Read::read_exact(&mut random, &mut bytes)?;
        std::fs::write(&key, &bytes)?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400))?;
        let socket = munge.join("munge.socket");
        let mut command = Command::new("munged");
        command
            .args(["-F", "-f"])
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--log-file={}", munge.join("munged.log").display()))
            .arg(format!("--pid-file={}", munge.join("munged.pid").display()))
            .arg(format!(
                "--seed-file={}",
                munge.join("munged.seed").display()
            ))
            .stdin(Stdio::null())
            .stdout(log(&munge.join("munged.out"))?)
            .stderr(log(&munge.join("munged.err"))?)
            .process_group(0);
        let child = command.spawn().map_err(|source| HostsError::Spawn {
            command: "munged".into(),
            source,
        })?;
        self.daemons.push(("munged".into(), child));
        let started = Instant::now();
        while !socket.exists() {
            if started.elapsed() > Duration::from_secs(10) {
                return Err(setup(
                    "munged",
                    format!(
                        "its socket did not appear; {}",
                        read(&munge.join("munged.err"))
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn wait_idle(&mut self) -> Result<(), HostsError> {
        let started = Instant::now();
        loop {
            if let Some((name, status)) = self
                .daemons
                .iter_mut()
                .find_map(|(name, c)| c.try_wait().ok().flatten().map(|s| (name.clone(), s)))
            {
                return Err(setup(
                    "daemons",
                    format!("{name} exited ({status}): {}", self.logs()),
                ));
            }
            let states = self
                .client(0, "sinfo")
                .args(["-h", "-N", "-o", "%N %T"])
                .output();
            if let Ok(out) = &states {
                let text = String::from_utf8_lossy(&out.stdout);
                let idle = text
                    .lines()
                    .filter(|l| l.split_whitespace().nth(1) == Some("idle"))
                    .count();
                if out.status.success() && idle == self.hosts.len() {
                    return Ok(());
                }
            }
            if started.elapsed() > READY {
                return Err(setup(
                    "nodes",
                    format!(
                        "not every node was idle within {} s ({}); {}",
                        READY.as_secs(),
                        states.map_or_else(
                            |e| e.to_string(),
                            |o| String::from_utf8_lossy(&o.stdout).trim().to_string()
                        ),
                        self.logs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The ends of the daemons' logs, for an error message.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        let mut files = vec![
            self.dir.join("ctld").join("slurmctld.log"),
            self.dir.join("slurmctld.err"),
        ];
        for host in self.hosts.hosts() {
            let node = self.dir.join("nodes").join(&host.name);
            files.push(node.join("slurmd.log"));
            files.push(node.join("slurmd.err"));
        }
        for file in files {
            let body = read(&file);
            let tail: Vec<&str> = body.lines().rev().take(6).collect();
            if !tail.is_empty() {
                let _ = write!(text, "\n--- {} ---", file.display());
                for line in tail.into_iter().rev() {
                    let _ = write!(text, "\n{line}");
                }
            }
        }
        text
    }

    /// The configuration file (`SLURM_CONF`).
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The directory of the configuration, the daemons' state and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What a Slurm client or a job needs: `SLURM_CONF`, and the Open MPI settings for ranks that
    /// `srun --mpi=pmix` starts (TCP and self transports on the test subnet, yield when idle,
    /// no core binding, run as root).
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .hosts
            .mpirun_env()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("OMPI_MCA_plm_rsh"))
            .collect();
        env.push((
            "SLURM_CONF".into(),
            self.conf.to_string_lossy().into_owned(),
        ));
        env
    }

    /// A command running `program` inside host `i` with [`Slurm::env`].
    pub fn client(&self, i: usize, program: &str) -> HostCommand<'h> {
        let mut command = self.hosts.command(i, program);
        command.envs(self.env());
        command
    }

    /// Every job the controller knows (`squeue -t all`): `id state reason name` per line.
    pub fn jobs(&self) -> Result<String, HostsError> {
        self.client(0, "squeue")
            .args(["-h", "-t", "all", "-o", "%i %T %r %j"])
            .run()
    }

    /// Stops the cluster (as dropping does) and reports what could not be stopped.
    pub fn stop(mut self) -> Result<(), HostsError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), HostsError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let _ = self
            .client(0, "scancel")
            .args(["--full", "--user=root"])
            .timeout(Duration::from_secs(10))
            .output();
        let mut problems = Vec::new();
        // slurmd before slurmctld before munged, each given KillWait to end its jobs' steps.
        for (name, child) in self.daemons.iter_mut().rev() {
            terminate(child);
            if !wait_for(child, Duration::from_secs(10)) {
                let _ = child.kill();
                if !wait_for(child, Duration::from_secs(5)) {
                    problems.push(format!("{name} (pid {}) did not exit", child.id()));
                }
            }
        }
        // Step daemons outlive a killed slurmd; they run inside the hosts.
        for host in self.hosts.hosts() {
            let _ = Command::new("ip")
                .args(["netns", "pids", &host.netns])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                            .unwrap_or_default();
                        if comm.trim().starts_with("slurmstepd") {
                            let _ = Command::new("kill").args(["-9", pid]).status();
                        }
                    }
                });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(HostsError::Teardown(problems.join("; ")))
        }
    }
}

impl Drop for Slurm<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("slurm harness: {e}");
        }
    }
}

fn log(path: &Path) -> Result<std::fs::File, HostsError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    Ok(std::fs::File::create(path)?)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn terminate(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
}

fn wait_for(child: &mut Child, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
