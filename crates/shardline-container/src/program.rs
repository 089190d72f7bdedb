//! Running the user's command: through `sh -c` (or mpirun), in the container's root, with the
//! contract's environment; its output relayed line by line and kept as its log; dying with the
//! process that started it.

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

use crate::Error;

/// Makes a child get `signal` when its parent dies, and checks the parent is still there (it may
/// have died between fork and exec).
#[allow(unsafe_code)]
pub fn die_with_parent(command: &mut Command, signal: i32) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (prctl, getppid, _exit).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// One line the program wrote.
pub enum Output<'a> {
    /// On its standard output.
    Stdout(&'a str),
    /// On its standard error.
    Stderr(&'a str),
}

/// How the program ended, and everything it wrote.
pub struct Ended {
    /// Its exit status.
    pub status: std::process::ExitStatus,
    /// Its output, both streams, in the order read.
    pub log: Vec<u8>,
}

async fn relay(
    stream: impl AsyncRead + Unpin,
    log: Arc<Mutex<Vec<u8>>>,
    stderr: bool,
    on_line: &(dyn Fn(Output<'_>) + Send + Sync),
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        on_line(if stderr {
            Output::Stderr(&line)
        } else {
            Output::Stdout(&line)
        });
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        log.extend_from_slice(line.as_bytes());
        log.push(b'\n');
    }
}

/// Runs `command` (its environment and folder set by the caller) to its end, relaying each line
/// to `on_line` and keeping both streams as its log. The program is killed if this future is
/// dropped, and dies with this process.
pub async fn run(
    mut command: Command,
    stage: &'static str,
    hint: &str,
    on_line: &(dyn Fn(Output<'_>) + Send + Sync),
) -> Result<Ended, Error> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    die_with_parent(&mut command, libc::SIGKILL);
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let mut child = command.spawn().map_err(|source| Error::Start {
        stage,
        program,
        source,
        hint: hint.to_string(),
    })?;
    let log = Arc::new(Mutex::new(Vec::new()));
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let relays = async {
        let out = async {
            if let Some(s) = stdout {
                relay(s, log.clone(), false, on_line).await;
            }
        };
        let err = async {
            if let Some(s) = stderr {
                relay(s, log.clone(), true, on_line).await;
            }
        };
        tokio::join!(out, err);
    };
    let (status, ()) = tokio::join!(child.wait(), relays);
    let status = status.map_err(|e| Error::io("the script's process", e))?;
    let log = std::mem::take(&mut *log.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Ended { status, log })
}
