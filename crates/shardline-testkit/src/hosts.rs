//! Several "hosts" on one machine, as Linux network namespaces on a bridge, for tests that run
//! `mpirun` across hosts over TCP.
//!
//! [`Hosts::start`] builds `n` hosts. Each host is
//!
//! - a network namespace (`ip netns add`) with a veth pair into a private Linux bridge, its end
//!   renamed `eth0` and given the address `10.77.<k>.<i+1>/24`, where `k` is leased per harness
//!   (a lock file under `/run/shardline-hosts/`) so concurrent test processes get different subnets;
//! - a long-lived "init" process, started as
//!   `ip netns exec NS unshare --uts --mount --propagation private sh -c '...'`, which sets the
//!   host name (`h1`, `h2`, ...; a network namespace alone has no UTS namespace of its own),
//!   bind-mounts the harness's hosts file over `/etc/hosts` (so every short host name, and its
//!   SageMaker name `algo-<i+1>`, resolves in
//!   every host, as Open MPI needs) and then waits on a pipe from the harness, so it also ends when
//!   the test process dies.
//!
//! A program runs inside host `i` with `nsenter --target <init pid> --uts --net --mount`
//! ([`Hosts::command`], [`Hosts::exec`]). Open MPI 4.1 launches its daemons into the hosts without
//! ssh: [`Hosts::mpirun_env`] points `plm_rsh_agent` at a generated script that enters the named
//! host the same way, and restricts MPI to the TCP and self transports on the test subnet;
//! [`Hosts::mpirun`] builds an `mpirun` started inside the first host.
//!
//! Every name the harness creates starts with its tag, `shl<pid in hex>x<two-digit sequence in hex>`
//! ([`Hosts::tag`]): the bridge is `<tag>b`, the root-side veths `<tag>v<i>`, the namespaces
//! `<tag>n<i>` (all within Linux's 15-character interface-name limit). Teardown ([`Hosts::stop`],
//! or `Drop`, which also runs while a failing test unwinds) kills every process in the hosts'
//! namespaces and the process groups of the commands it started, deletes the namespaces, veths
//! and bridge, and releases the subnet. A harness whose process was killed outright leaves its
//! namespaces behind; the next [`Hosts::start`] on the machine removes those of dead processes.
//!
//! Everything here needs root (or `CAP_SYS_ADMIN` and `CAP_NET_ADMIN`); [`Hosts::start`] fails
//! with [`HostsError::NotRoot`] otherwise.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The first two octets of every test subnet: hosts live on `10.77.<k>.0/24`.
pub const SUBNET_PREFIX: [u8; 2] = [10, 77];
/// The most hosts one harness builds.
pub const MAX_HOSTS: usize = 200;
/// The prefix of every namespace and link name a harness creates.
pub const NAME_PREFIX: &str = "shl";
const LEASE_DIR: &str = "/run/shardline-hosts";

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// Why the hosts could not be started, used or torn down.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// The harness needs root to create namespaces and links.
    #[error(
        "the network-namespace hosts need root (CAP_SYS_ADMIN and CAP_NET_ADMIN); run the test as root, e.g. in the CI container or with `sudo -E`"
    )]
    NotRoot,
    /// A command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// Its standard error (and standard output, when it wrote nothing to standard error).
        stderr: String,
    },
    /// A command could not be started at all.
    #[error("`{command}` could not be started: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// A setup step failed for a reason other than a command's exit status.
    #[error("hosts setup failed at {step}: {detail}")]
    Setup {
        /// The step.
        step: String,
        /// What went wrong.
        detail: String,
    },
    /// Teardown left something behind.
    #[error("hosts teardown incomplete: {0}")]
    Teardown(String),
    /// Local I/O failed.
    #[error("hosts: {0}")]
    Io(#[from] std::io::Error),
}

/// One host of a [`Hosts`] harness.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its host name (`h1`, `h2`, ...): short, no dots, resolvable in every host.
    pub name: String,
    /// Its address on the test subnet.
    pub addr: Ipv4Addr,
    /// The name of its network namespace (`ip netns`).
    pub netns: String,
    /// The name of its veth's end in the root namespace (the end inside is `eth0`).
    pub veth: String,
    /// The pid of its init process, whose namespaces commands enter.
    pub init_pid: u32,
}

#[derive(Debug)]
struct Init {
    child: Child,
    // Held open: the init process waits for its end of this pipe to close.
    stdin: Option<ChildStdin>,
}

/// Several hosts on one machine, each a network namespace with its own address, host name and
/// hosts file, torn down completely on [`Hosts::stop`] or drop.
#[derive(Debug)]
pub struct Hosts {
    tag: String,
    dir: PathBuf,
    subnet: u8,
    lease: Option<PathBuf>,
    bridge: Option<String>,
    namespaces: Vec<String>,
    veths: Vec<String>,
    hosts: Vec<Host>,
    inits: Vec<Init>,
    agent: PathBuf,
    started: Mutex<Vec<u32>>,
    stopped: bool,
}

fn command_line(program: &OsStr, args: &[OsString]) -> String {
    let mut line = program.to_string_lossy().into_owned();
    for arg in args {
        line.push(' ');
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'') {
            line.push_str(&format!("{arg:?}"));
        } else {
            line.push_str(&arg);
        }
    }
    line
}

/// Runs a command to completion and returns its standard output, or an error naming the command
/// and its standard error.
fn run_checked(command: &mut Command) -> Result<String, HostsError> {
    let args: Vec<OsString> = command.get_args().map(OsStr::to_os_string).collect();
    let line = command_line(command.get_program(), &args);
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HostsError::Spawn {
            command: line.clone(),
            source,
        })?;
    check_output(line, output)
}

fn check_output(line: String, output: Output) -> Result<String, HostsError> {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    Err(HostsError::Command {
        command: line,
        status: output.status.to_string(),
        stderr: if stderr.is_empty() {
            stdout.trim().to_string()
        } else {
            stderr
        },
    })
}

fn ip(args: &[&str]) -> Result<String, HostsError> {
    run_checked(Command::new("ip").args(args))
}

fn is_root() -> bool {
    // The effective uid is the second field of `Uid:` in /proc/self/status.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Whether `pid` names a live process (a zombie counts as dead).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The pid of the harness process a name was made by, when it is one of ours.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (pid, _) = rest.split_once('x')?;
    u32::from_str_radix(pid, 16).ok()
}

/// Sends SIGKILL to each pid (negative: a process group); ones already gone are ignored.
fn kill_all(targets: &[String]) {
    if targets.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--"])
        .args(targets)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The pids of the processes in a named network namespace.
fn netns_pids(netns: &str) -> Vec<String> {
    ip(&["netns", "pids", netns])
        .map(|out| out.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Kills the processes in the namespaces until none remain (or a deadline passes); returns what
/// remained.
fn empty_namespaces(namespaces: &[String], inits: &mut [Init]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for init in inits.iter_mut() {
            let _ = init.child.try_wait();
        }
        let pids: Vec<String> = namespaces.iter().flat_map(|ns| netns_pids(ns)).collect();
        // Zombies still show up until reaped; they hold no namespace.
        let live: Vec<String> = pids
            .into_iter()
            .filter(|pid| pid.parse().is_ok_and(alive))
            .collect();
        if live.is_empty() || Instant::now() > deadline {
            return live;
        }
        kill_all(&live);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes namespaces and links left by harness processes that no longer exist (killed before
/// they could tear down).
fn reap_stale() {
    let dead = |name: &str| owner_pid(name).is_some_and(|pid| !alive(pid));
    let stale: Vec<String> = ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| dead(name))
        .map(str::to_string)
        .collect();
    if !stale.is_empty() {
        empty_namespaces(&stale, &mut []);
        for ns in &stale {
            let _ = ip(&["netns", "del", ns]);
        }
    }
    let links: Vec<String> = ip(&["-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(':').nth(1))
        .map(|name| {
            name.trim()
                .split('@')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .filter(|name| dead(name))
        .collect();
    for link in links {
        let _ = ip(&["link", "del", &link]);
    }
    if let Ok(entries) = std::fs::read_dir(LEASE_DIR) {
        for entry in entries.flatten() {
            let stale = std::fs::read_to_string(entry.path())
                .ok()
                .and_then(|owner| owner.trim().parse::<u32>().ok())
                .is_some_and(|pid| !alive(pid));
            if stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Leases a subnet index `k` (`10.77.k.0/24`) that no other live harness and no root-namespace
/// address uses: a lock file created exclusively, holding the owner's pid.
fn lease_subnet(seed: u32) -> Result<(u8, PathBuf), HostsError> {
    std::fs::create_dir_all(LEASE_DIR)?;
    let used = ip(&["-o", "-4", "addr", "show"]).unwrap_or_default();
    let pid = std::process::id();
    for step in 0..256u32 {
        let k = ((seed.wrapping_mul(97).wrapping_add(step)) % 256) as u8;
        let prefix = format!("{}.{}.{k}.", SUBNET_PREFIX[0], SUBNET_PREFIX[1]);
        if used.contains(&format!("inet {prefix}")) {
            continue;
        }
        let path = Path::new(LEASE_DIR).join(format!("{prefix}0.lease"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => {
                use std::io::Write as _;
                writeln!(file, "{pid}")?;
                return Ok((k, path));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(HostsError::Setup {
        step: "subnet lease".into(),
        detail: format!("all 256 subnets 10.77.*.0/24 are leased (see {LEASE_DIR})"),
    })
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Hosts {
    /// Builds `n` hosts (1 to [`MAX_HOSTS`]); their hosts file, logs, temporary directories and the
    /// rsh agent live under `dir` (created; reused content is wiped).
    pub fn start(n: usize, dir: &Path) -> Result<Hosts, HostsError> {
        if !is_root() {
            return Err(HostsError::NotRoot);
        }
        if n == 0 || n > MAX_HOSTS {
            return Err(HostsError::Setup {
                step: "arguments".into(),
                detail: format!("{n} hosts asked for; 1 to {MAX_HOSTS} are possible"),
            });
        }
        reap_stale();
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        let dir = std::path::absolute(dir)?;
        let pid = std::process::id();
        let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed) % 256;
        let tag = format!("{NAME_PREFIX}{pid:x}x{seq:02x}");
        let (subnet, lease) = lease_subnet(pid.wrapping_add(seq.wrapping_mul(31)))?;
        let mut hosts = Hosts {
            tag,
            agent: dir.join("rsh-agent.sh"),
            dir,
            subnet,
            lease: Some(lease),
            bridge: None,
            namespaces: Vec::new(),
            veths: Vec::new(),
            hosts: Vec::new(),
            inits: Vec::new(),
            started: Mutex::new(Vec::new()),
            stopped: false,
        };
        // On an error, dropping `hosts` tears down whatever was built so far.
        hosts.build(n)?;
        Ok(hosts)
    }

    fn build(&mut self, n: usize) -> Result<(), HostsError> {
        let bridge = format!("{}b", self.tag);
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        self.bridge = Some(bridge.clone());
        ip(&["link", "set", &bridge, "up"])?;

        let mut hosts_file =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        let mut planned = Vec::new();
        for i in 0..n {
            let name = format!("h{}", i + 1);
            let addr = Ipv4Addr::new(
                SUBNET_PREFIX[0],
                SUBNET_PREFIX[1],
                self.subnet,
                (i + 1) as u8,
            );
            // Each host also answers to its SageMaker name, `algo-<i+1>`.
            let _ = writeln!(hosts_file, "{addr}\t{name}\talgo-{}", i + 1);
            planned.push((name, addr));
        }
        let hosts_path = self.dir.join("hosts");
        std::fs::write(&hosts_path, &hosts_file)?;

        for (i, (name, addr)) in planned.into_iter().enumerate() {
            let netns = format!("{}n{i:x}", self.tag);
            let veth = format!("{}v{i:x}", self.tag);
            let peer = format!("{}p{i:x}", self.tag);
            ip(&["netns", "add", &netns])?;
            self.namespaces.push(netns.clone());
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", &peer, "netns", &netns,
            ])?;
            self.veths.push(veth.clone());
            ip(&["link", "set", &veth, "master", &bridge, "up"])?;
            ip(&["-n", &netns, "link", "set", &peer, "name", "eth0"])?;
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &netns, "link", "set", "lo", "up"])?;

            let host_dir = self.dir.join(&name);
            std::fs::create_dir_all(host_dir.join("tmp"))?;
            let init_pid = self.start_init(&netns, &name, &hosts_path, &host_dir)?;
            self.hosts.push(Host {
                name,
                addr,
                netns,
                veth,
                init_pid,
            });
        }
        self.write_agent()?;
        Ok(())
    }

    fn start_init(
        &mut self,
        netns: &str,
        name: &str,
        hosts_path: &Path,
        host_dir: &Path,
    ) -> Result<u32, HostsError> {
        let script = format!(
            "set -e; hostname {name}; mount --bind {hosts} /etc/hosts; echo ready; exec cat >/dev/null",
            hosts = shell_quote(&hosts_path.to_string_lossy()),
        );
        let log_path = host_dir.join("init.log");
        let log = std::fs::File::create(&log_path)?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", netns, "unshare", "--uts", "--mount"])
            .args(["--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        let args: Vec<OsString> = command.get_args().map(OsStr::to_os_string).collect();
        let line = command_line(command.get_program(), &args);
        let mut child = command.spawn().map_err(|source| HostsError::Spawn {
            command: line.clone(),
            source,
        })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let init_pid = child.id();
        self.inits.push(Init { child, stdin });
        let mut ready = String::new();
        if let Some(stdout) = stdout {
            BufReader::new(stdout).read_line(&mut ready)?;
        }
        if ready.trim() != "ready" {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(HostsError::Command {
                command: line,
                status: "exited before it was ready".into(),
                stderr: log.trim().to_string(),
            });
        }
        Ok(init_pid)
    }

    fn write_agent(&self) -> Result<(), HostsError> {
        let mut cases = String::new();
        for (i, host) in self.hosts.iter().enumerate() {
            let _ = writeln!(
                cases,
                "  {}|algo-{}) pid={}; tmp={} ;;",
                host.name,
                i + 1,
                host.init_pid,
                shell_quote(&self.dir.join(&host.name).join("tmp").to_string_lossy()),
            );
        }
        let script = format!(
            r#"#!/bin/sh
# Open MPI's rsh agent for the hosts of harness {tag}: mpirun runs `agent HOST COMMAND...` as it
# would run `ssh HOST COMMAND...`; this enters HOST's namespaces instead and runs COMMAND with sh.
while [ $# -gt 0 ]; do
  case "$1" in
    -*) shift ;;
    *) break ;;
  esac
done
host=$1
shift
case "$host" in
{cases}  *) echo "rsh-agent ({tag}): unknown host '$host'" >&2; exit 255 ;;
esac
exec nsenter --target "$pid" --uts --net --mount --wd=/ -- env TMPDIR="$tmp" /bin/sh -c "$*"
"#,
            tag = self.tag,
        );
        std::fs::write(&self.agent, script)?;
        std::fs::set_permissions(&self.agent, std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    /// The prefix of every namespace and link name this harness created.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The directory holding the hosts file, logs, per-host temporary directories and the agent.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many hosts there are.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether there are no hosts (never, for a started harness).
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The hosts, in order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i` (from 0); panics when out of range, like indexing.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// The host names, in order.
    pub fn names(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.name.clone()).collect()
    }

    /// The test subnet in CIDR notation, e.g. `10.77.12.0/24`.
    pub fn subnet(&self) -> String {
        format!(
            "{}.{}.{}.0/24",
            SUBNET_PREFIX[0], SUBNET_PREFIX[1], self.subnet
        )
    }

    /// The names of the network namespaces, in host order.
    pub fn netns_names(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.netns.clone()).collect()
    }

    /// The names of the links created in the root namespace: the bridge and the veths.
    pub fn link_names(&self) -> Vec<String> {
        self.bridge.iter().chain(&self.veths).cloned().collect()
    }

    /// The pids of the hosts' init processes.
    pub fn init_pids(&self) -> Vec<u32> {
        self.hosts.iter().map(|h| h.init_pid).collect()
    }

    /// The path of the generated rsh agent that `mpirun` uses to start daemons in the hosts.
    pub fn agent(&self) -> &Path {
        &self.agent
    }

    /// A command running `program` inside host `i` (its network, UTS and mount namespaces), with
    /// `TMPDIR` set to the host's own temporary directory and the caller's working directory.
    /// Panics when `i` is out of range.
    pub fn command(&self, i: usize, program: impl AsRef<OsStr>) -> HostCommand<'_> {
        let host = &self.hosts[i];
        let mut inner = Command::new("nsenter");
        let env = vec![(
            OsString::from("TMPDIR"),
            self.dir.join(&host.name).join("tmp").into_os_string(),
        )];
        inner.args([
            "--target",
            &host.init_pid.to_string(),
            "--uts",
            "--net",
            "--mount",
        ]);
        HostCommand {
            hosts: self,
            host: host.name.clone(),
            inner,
            program: program.as_ref().to_os_string(),
            args: Vec::new(),
            env,
            wd: std::env::current_dir().ok(),
            timeout: None,
            stdin_set: false,
            prepared: false,
        }
    }

    /// Runs `argv` (program and arguments) inside host `i` and returns its standard output; an
    /// error names the command and its standard error. Panics when `i` is out of range.
    pub fn exec<S: AsRef<OsStr>>(&self, i: usize, argv: &[S]) -> Result<String, HostsError> {
        let (program, args) = argv.split_first().ok_or_else(|| HostsError::Setup {
            step: "exec".into(),
            detail: "an empty command line".into(),
        })?;
        self.command(i, program).args(args).run()
    }

    /// The prefix that runs a program inside host `i`, ending in `--` (`nsenter --target PID
    /// --uts --net --mount --wd=DIR --`), for harnesses that build their own commands (a server
    /// started on one host). Panics when `i` is out of range.
    pub fn enter(&self, i: usize) -> Vec<OsString> {
        let host = &self.hosts[i];
        let mut argv: Vec<OsString> = [
            "nsenter",
            "--target",
            &host.init_pid.to_string(),
            "--uts",
            "--net",
            "--mount",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        if let Ok(wd) = std::env::current_dir() {
            let mut flag = OsString::from("--wd=");
            flag.push(wd);
            argv.push(flag);
        }
        argv.push("--".into());
        argv
    }

    /// Mounts `source` over `target` inside host `i` only (its own mount namespace), as a
    /// machine's own directory: each host can have its own `/opt/ml`. `target` is created on the
    /// shared file system if missing (an empty directory, left in place).
    pub fn bind(&self, i: usize, source: &Path, target: &Path) -> Result<(), HostsError> {
        std::fs::create_dir_all(target)?;
        let host = &self.hosts[i];
        run_checked(
            Command::new("nsenter")
                .args(["--target", &host.init_pid.to_string(), "--mount", "--"])
                .arg("mount")
                .arg("--bind")
                .arg(source)
                .arg(target),
        )?;
        Ok(())
    }

    /// The environment `mpirun` needs to launch ranks into these hosts: the `OMPI_MCA_*` settings
    /// (rsh agent, no tree spawn, TCP and self transports only, on the test subnet, yield when
    /// idle, no core binding since all hosts share the machine's cores, oversubscription allowed)
    /// and Open MPI's run-as-root consent.
    pub fn mpirun_env(&self) -> Vec<(String, String)> {
        let subnet = self.subnet();
        [
            (
                "OMPI_MCA_plm_rsh_agent",
                self.agent.to_string_lossy().into_owned(),
            ),
            ("OMPI_MCA_plm_rsh_no_tree_spawn", "1".into()),
            ("OMPI_MCA_btl", "tcp,self".into()),
            ("OMPI_MCA_pml", "ob1".into()),
            ("OMPI_MCA_btl_tcp_if_include", subnet.clone()),
            ("OMPI_MCA_oob_tcp_if_include", subnet),
            ("OMPI_MCA_mpi_yield_when_idle", "1".into()),
            // mpirun notices a daemon whose host is cut off by the out-of-band keepalive: 300 s
            // idle + 9 probes × 20 s by default (8 minutes), during which it cannot finish
            // aborting a job Shardline's collective timeout already stopped. 5 + 3 × 2 s here.
            ("OMPI_MCA_oob_tcp_keepalive_time", "5".into()),
            ("OMPI_MCA_oob_tcp_keepalive_intvl", "2".into()),
            ("OMPI_MCA_oob_tcp_keepalive_probes", "3".into()),
            ("OMPI_MCA_hwloc_base_binding_policy", "none".into()),
            ("OMPI_MCA_rmaps_base_oversubscribe", "1".into()),
            ("OMPI_ALLOW_RUN_AS_ROOT", "1".into()),
            ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// `mpirun --allow-run-as-root --oversubscribe --host h1,...,hn -np NP PROGRAM ARGS...`
    /// started inside the first host with [`Hosts::mpirun_env`]. Each host has one slot, so ranks
    /// `0..n` run on `h1..hn` in order; Open MPI spreads further ranks over the hosts.
    pub fn mpirun<S: AsRef<OsStr>>(&self, np: usize, program_args: &[S]) -> HostCommand<'_> {
        let mut command = self.command(0, "mpirun");
        command
            .args(["--allow-run-as-root", "--oversubscribe", "--host"])
            .arg(self.names().join(","))
            .args(["-np", &np.to_string()])
            .args(program_args)
            .envs(self.mpirun_env());
        command
    }

    fn record(&self, pid: u32) {
        if let Ok(mut started) = self.started.lock() {
            started.push(pid);
        }
    }

    /// Tears everything down (as dropping does) and reports what could not be removed.
    pub fn stop(mut self) -> Result<(), HostsError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), HostsError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let mut problems = Vec::new();
        // The commands started through the harness: their process groups, then everything that
        // is in a host's network namespace (daemons, ranks, their children), then the inits.
        let started = match self.started.lock() {
            Ok(mut started) => std::mem::take(&mut *started),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        // A pid that no longer exists (not even as a zombie) may have been reused, so only groups
        // whose leader still exists are killed; members left in a host are swept below anyway.
        let groups: Vec<String> = started
            .iter()
            .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
            .flat_map(|pid| [format!("-{pid}"), pid.to_string()])
            .collect();
        kill_all(&groups);
        for init in &mut self.inits {
            init.stdin = None;
        }
        let remaining = empty_namespaces(&self.namespaces, &mut self.inits);
        if !remaining.is_empty() {
            problems.push(format!("processes {remaining:?} would not die"));
        }
        for init in &mut self.inits {
            let _ = init.child.kill();
            let _ = init.child.wait();
        }
        for pid in &started {
            if alive(*pid) {
                problems.push(format!("started process {pid} is still alive"));
            }
        }
        for ns in std::mem::take(&mut self.namespaces) {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                problems.push(e.to_string());
            }
        }
        // Deleting a namespace deletes the veth pairs with an end in it, but asynchronously (the
        // kernel frees the namespace in a work queue): wait for them, then delete stragglers.
        let veths = std::mem::take(&mut self.veths);
        let present = |links: &str| -> Vec<String> {
            veths
                .iter()
                .filter(|v| {
                    links.contains(&format!(": {v}@")) || links.contains(&format!(": {v}:"))
                })
                .cloned()
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut left = present(&ip(&["-o", "link", "show"]).unwrap_or_default());
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            left = present(&ip(&["-o", "link", "show"]).unwrap_or_default());
        }
        for veth in left {
            match ip(&["link", "del", &veth]) {
                Err(HostsError::Command { stderr, .. })
                    if stderr.contains("Cannot find device") => {}
                Err(e) => problems.push(e.to_string()),
                Ok(_) => {}
            }
        }
        if let Some(bridge) = self.bridge.take()
            && let Err(e) = ip(&["link", "del", &bridge])
        {
            problems.push(e.to_string());
        }
        if let Some(lease) = self.lease.take()
            && let Err(e) = std::fs::remove_file(&lease)
        {
            problems.push(format!("removing {}: {e}", lease.display()));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(HostsError::Teardown(problems.join("; ")))
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("shardline-testkit hosts {}: {e}", self.tag);
        }
    }
}

/// A program to run inside one host, built like [`std::process::Command`]. Processes it spawns
/// get their own process group, which the harness kills on teardown. Program, arguments,
/// environment, directory and timeout are fixed at the first run; later runs repeat it.
#[derive(Debug)]
pub struct HostCommand<'a> {
    hosts: &'a Hosts,
    host: String,
    inner: Command,
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    wd: Option<PathBuf>,
    timeout: Option<Duration>,
    stdin_set: bool,
    prepared: bool,
}

impl HostCommand<'_> {
    /// Adds an argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// Adds arguments.
    pub fn args<S: AsRef<OsStr>>(&mut self, args: impl IntoIterator<Item = S>) -> &mut Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets an environment variable.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.env
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// Sets environment variables.
    pub fn envs<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        &mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> &mut Self {
        for (k, v) in vars {
            self.env(k, v);
        }
        self
    }

    /// Sets the working directory inside the host (by default the caller's).
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.wd = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Kills the program (SIGTERM, then SIGKILL 5 s later) when it runs longer than `limit`,
    /// with coreutils' `timeout` inside the host.
    pub fn timeout(&mut self, limit: Duration) -> &mut Self {
        self.timeout = Some(limit);
        self
    }

    /// Sets standard input (by default inherited by `spawn` and `status`, null for `output` and
    /// `run`).
    pub fn stdin(&mut self, cfg: impl Into<Stdio>) -> &mut Self {
        self.inner.stdin(cfg);
        self.stdin_set = true;
        self
    }

    /// Sets standard output.
    pub fn stdout(&mut self, cfg: impl Into<Stdio>) -> &mut Self {
        self.inner.stdout(cfg);
        self
    }

    /// Sets standard error.
    pub fn stderr(&mut self, cfg: impl Into<Stdio>) -> &mut Self {
        self.inner.stderr(cfg);
        self
    }

    /// The command line as it runs in the host, for messages.
    pub fn display(&self) -> String {
        format!(
            "[{}] {}",
            self.host,
            command_line(&self.program, &self.args)
        )
    }

    fn prepare(&mut self) -> &mut Command {
        // The arguments go onto the inner command once; running the same builder again reuses it.
        if self.prepared {
            return &mut self.inner;
        }
        self.prepared = true;
        if let Some(wd) = &self.wd {
            let mut flag = OsString::from("--wd=");
            flag.push(wd);
            self.inner.arg(flag).current_dir(wd);
        }
        self.inner.arg("--");
        if let Some(limit) = self.timeout {
            self.inner
                .args(["timeout", "--kill-after=5"])
                .arg(format!("{}", limit.as_secs_f64()));
        }
        self.inner.arg(&self.program).args(&self.args);
        for (k, v) in &self.env {
            self.inner.env(k, v);
        }
        self.inner.process_group(0);
        &mut self.inner
    }

    /// Starts the program; the harness kills it (and its process group) on teardown if it is
    /// still running.
    pub fn spawn(&mut self) -> Result<Child, HostsError> {
        let line = self.display();
        let child = self.prepare().spawn().map_err(|source| HostsError::Spawn {
            command: line,
            source,
        })?;
        self.hosts.record(child.id());
        Ok(child)
    }

    /// Runs the program to completion, capturing its output (standard input is null unless set).
    pub fn output(&mut self) -> Result<Output, HostsError> {
        let line = self.display();
        if !self.stdin_set {
            self.inner.stdin(Stdio::null());
        }
        let child = self
            .prepare()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| HostsError::Spawn {
                command: line.clone(),
                source,
            })?;
        self.hosts.record(child.id());
        Ok(child.wait_with_output()?)
    }

    /// Runs the program to completion with inherited output and returns its exit status.
    pub fn status(&mut self) -> Result<ExitStatus, HostsError> {
        Ok(self.spawn()?.wait()?)
    }

    /// Runs the program to completion and returns its standard output; an error names the command
    /// and its standard error (or, when that is empty, its standard output).
    pub fn run(&mut self) -> Result<String, HostsError> {
        let line = self.display();
        let output = self.output()?;
        check_output(line, output)
    }
}
