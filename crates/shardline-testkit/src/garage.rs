//! A single-node Garage S3 server on loopback, for tests and benchmarks.
//!
//! Shardline's S3 path is tested against a real S3-compatible server, not a mock. This module
//! starts `garage server` (found on `PATH`, or at `$GARAGE_BIN`) in a temporary directory with
//! `replication_factor = 1`, assigns the layout, imports a key and creates a bucket with the
//! `garage` CLI, and stops the server when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The region Garage is configured with; S3 clients must sign for it.
pub const REGION: &str = "garage";
const KEY_ID: &str = "GK5ba1d100000000000000000a";
const SECRET: &str = "5ba1d1e000000000000000000000000000000000000000000000000000000001";

/// Why a local Garage could not be started.
#[derive(Debug, thiserror::Error)]
pub enum GarageError {
    /// The binary is missing.
    #[error(
        "the garage binary was not found ({0}); install it with `cargo install garage --locked` (see .ci/run) or set GARAGE_BIN"
    )]
    Missing(std::io::Error),
    /// A setup step failed.
    #[error("garage setup failed at `{step}`: {detail}")]
    Setup {
        /// The CLI step that failed.
        step: String,
        /// Its output.
        detail: String,
    },
    /// Local I/O failed.
    #[error("garage: {0}")]
    Io(#[from] std::io::Error),
}

/// A running single-node Garage server with one bucket and one key.
#[derive(Debug)]
pub struct LocalGarage {
    child: Child,
    dir: PathBuf,
    config: PathBuf,
    /// `http://ADDR:<port>` of the S3 API.
    pub endpoint: String,
    /// The bucket created for the caller.
    pub bucket: String,
    /// The prefix its commands run through (empty: run directly).
    enter: Vec<std::ffi::OsString>,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `garage server` on `config`, its output appended to `dir/garage.log`.
fn spawn_server(
    dir: &Path,
    config: &Path,
    enter: &[std::ffi::OsString],
) -> Result<Child, GarageError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("garage.log"))?;
    garage_command(enter)
        .arg("-c")
        .arg(config)
        .arg("server")
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(GarageError::Missing)
}

/// The garage binary, run through `enter` when it is given.
fn garage_command(enter: &[std::ffi::OsString]) -> Command {
    match enter.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(binary());
            command
        }
        None => Command::new(binary()),
    }
}

fn binary() -> String {
    std::env::var("GARAGE_BIN").unwrap_or_else(|_| "garage".to_string())
}

impl LocalGarage {
    /// Starts a server whose data lives under `dir` (created; reused content is wiped) and
    /// creates `bucket` with a read-write key.
    pub fn start(dir: &Path, bucket: &str) -> Result<LocalGarage, GarageError> {
        LocalGarage::start_in(dir, bucket, "127.0.0.1", &[])
    }

    /// As [`LocalGarage::start`], but listening on `addr` and with the server and its admin
    /// commands run through the `enter` prefix (a program and its arguments that end in `--`,
    /// e.g. `nsenter --target PID --net ... --`): a server on one host of a
    /// [`crate::hosts::Hosts`] harness, reached by the others over the namespace network.
    pub fn start_in(
        dir: &Path,
        bucket: &str,
        addr: &str,
        enter: &[std::ffi::OsString],
    ) -> Result<LocalGarage, GarageError> {
        // The ports are picked free and released before Garage binds them, so another process
        // can take one in between; a fresh pick on a failed start gets past that race.
        let mut attempt = 1;
        loop {
            match LocalGarage::start_once(dir, bucket, addr, enter) {
                Err(GarageError::Setup { .. }) if attempt < 3 => attempt += 1,
                result => return result,
            }
        }
    }

    fn start_once(
        dir: &Path,
        bucket: &str,
        addr: &str,
        enter: &[std::ffi::OsString],
    ) -> Result<LocalGarage, GarageError> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        let (s3_port, rpc_port) = (free_port()?, free_port()?);
        let config = dir.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "{addr}:{rpc_port}"
rpc_public_addr = "{addr}:{rpc_port}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "{addr}:{s3_port}"
root_domain = ".s3.garage.localhost"
"#,
                d = dir.display(),
                secret = "5ba1d1e000000000000000000000000000000000000000000000000000000000",
            ),
        )?;
        let child = spawn_server(dir, &config, enter)?;
        let mut garage = LocalGarage {
            child,
            dir: dir.to_path_buf(),
            config,
            endpoint: format!("http://{addr}:{s3_port}"),
            bucket: bucket.to_string(),
            enter: enter.to_vec(),
        };
        garage.setup()?;
        Ok(garage)
    }

    /// Kills the server and starts it again on the same data, ports and address, waiting until
    /// it answers: a restart in the middle of a client's work. `down` is how long it stays
    /// down.
    pub fn restart(&mut self, down: Duration) -> Result<(), GarageError> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = spawn_server(&self.dir, &self.config, &self.enter)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.cli(&["status"]).is_err() {
            if Instant::now() > deadline {
                return Err(GarageError::Setup {
                    step: "restart".into(),
                    detail: "the server did not answer within 60 s".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn cli(&self, args: &[&str]) -> Result<String, GarageError> {
        let output = garage_command(&self.enter)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(GarageError::Missing)?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(GarageError::Setup {
                step: args.join(" "),
                detail: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            })
        }
    }

    fn setup(&mut self) -> Result<(), GarageError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        // `status` needs the server's RPC endpoint, so it succeeds only once the server is up
        // (`node id` alone reads the key from disk and can answer earlier).
        loop {
            match self.cli(&["status"]) {
                Ok(_) => break,
                result => {
                    if let Some(status) = self.child.try_wait()? {
                        let log = std::fs::read_to_string(self.dir.join("garage.log"))
                            .unwrap_or_default();
                        return Err(GarageError::Setup {
                            step: "server".into(),
                            detail: format!("exited with {status}: {log}"),
                        });
                    }
                    if Instant::now() > deadline {
                        return Err(GarageError::Setup {
                            step: "status".into(),
                            detail: format!("{result:?}"),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        let id = self.cli(&["node", "id", "-q"])?;
        let node = id
            .trim()
            .get(..64)
            .map(str::to_string)
            .ok_or_else(|| GarageError::Setup {
                step: "node id".into(),
                detail: id.clone(),
            })?;
        self.cli(&["layout", "assign", &node, "-z", "dc1", "-c", "10G"])?;
        self.cli(&["layout", "apply", "--version", "1"])?;
        self.cli(&["key", "import", KEY_ID, SECRET, "-n", "shardline", "--yes"])?;
        self.cli(&["bucket", "create", &self.bucket])?;
        self.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            &self.bucket,
            "--key",
            KEY_ID,
        ])?;
        Ok(())
    }

    /// The environment variables an S3 client needs to reach this server, in the standard AWS
    /// names that `shardline_store::Store::open` reads.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ACCESS_KEY_ID", KEY_ID.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// The `s3://` URL of a prefix in the bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{}", self.bucket, prefix.trim_matches('/'))
    }
}

impl Drop for LocalGarage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
