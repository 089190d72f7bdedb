//! Fault injection for the crash-and-retry tests: `SHARDLINE_FAULT=<host>:<point>` makes that
//! instance abort at that point on its first attempt, as a kill would stop it;
//! `SHARDLINE_FAULT=<host>:stall-<point>` makes it stop there and do nothing for an hour, as a
//! host that is cut off or hung looks to the others; `SHARDLINE_FAULT=<host>:pause-<point>` makes
//! it stop there until the file `$SHARDLINE_FAULT_RESUME` exists (it writes
//! `$SHARDLINE_FAULT_RESUME.paused` first, so that a test knows when to act). Points: `after-<n>` (after n objects) and
//! `before-publish` (shards staged, commit not written). Unset, this does nothing.

/// Aborts (or stalls) the process if the fault named by `SHARDLINE_FAULT` is this `host` at
/// `point`, on the first attempt (`SHARDLINE_ATTEMPT` unset or 1).
pub fn point(host: &str, point: &str) {
    let Ok(spec) = std::env::var("SHARDLINE_FAULT") else {
        return;
    };
    let first_attempt = std::env::var("SHARDLINE_ATTEMPT").map_or(true, |a| a == "1");
    if !first_attempt {
        return;
    }
    if spec == format!("{host}:{point}") {
        eprintln!("SHARDLINE_FAULT: aborting {host} at {point}");
        std::process::abort();
    }
    if spec == format!("{host}:stall-{point}") {
        eprintln!("SHARDLINE_FAULT: stalling {host} at {point}");
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
    if spec == format!("{host}:pause-{point}")
        && let Ok(resume) = std::env::var("SHARDLINE_FAULT_RESUME")
    {
        eprintln!("SHARDLINE_FAULT: pausing {host} at {point} until {resume} exists");
        let _ = std::fs::write(format!("{resume}.paused"), b"");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3600);
        while !std::path::Path::new(&resume).exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
