//! `shardline-bench serve`: the endpoint under `wrk` with single 32x32 PNG requests at 1, 16
//! and 64 concurrent connections, with and without dynamic batching; requests/s, p50, p99 and
//! errors in a table. Server and load tool share the machine, as the target says.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::Ui;

/// Flags of `shardline-bench serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Seconds of load per row (the target is stated for 60).
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Concurrent connections, one row each.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub connections: Vec<usize>,
    /// Where the generated model and image live (reused across runs).
    #[arg(long, default_value = "bench/data")]
    pub dir: PathBuf,
}

/// One row of wrk's answer.
struct Load {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    requests: u64,
}

/// wrk prints latencies as `812.00us`, `1.23ms` or `2.00s`.
fn millis(text: &str) -> Option<f64> {
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic())?);
    let value: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        "m" => value * 60_000.0,
        _ => return None,
    })
}

fn parse_wrk(text: &str) -> Result<Load> {
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l[prefix.len()..].split_whitespace().next())
            .map(str::to_string)
    };
    let requests_per_second = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .context("bench: wrk printed no Requests/sec")?;
    let p50_ms = field("50%")
        .and_then(|v| millis(&v))
        .context("bench: no p50")?;
    let p99_ms = field("99%")
        .and_then(|v| millis(&v))
        .context("bench: no p99")?;
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let non_2xx: u64 = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // "Socket errors: connect 0, read 0, write 0, timeout 0"
    let socket: u64 = text
        .lines()
        .find(|l| l.trim().starts_with("Socket errors:"))
        .map(|l| {
            l.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Ok(Load {
        requests_per_second,
        p50_ms,
        p99_ms,
        errors: non_2xx + socket,
        requests,
    })
}

/// Generates 32x32 shapes, trains the default CNN on them for one epoch and keeps one PNG.
fn prepare(exe: &Path, dir: &Path, ui: &Ui) -> Result<PathBuf> {
    let marker = dir.join("COMPLETE");
    let image = dir.join("request.png");
    if marker.exists() {
        return Ok(image);
    }
    ui.say("  generating 32x32 PNG shapes and training a model on them ...");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let run = |args: &[&str]| -> Result<()> {
        let status = Command::new(exe)
            .arg("--quiet")
            .args(args)
            .current_dir(dir)
            .status()
            .with_context(|| format!("bench: cannot run shardline {args:?}"))?;
        if !status.success() {
            bail!("bench: shardline {args:?} failed ({status})");
        }
        Ok(())
    };
    run(&[
        "datagen",
        "shapes",
        "--out",
        "data",
        "--classes",
        "4",
        "--per-class",
        "200",
        "--size",
        "32",
        "--format",
        "png",
        "--force",
    ])?;
    run(&["manifest", "--source", "data", "--out", "m"])?;
    run(&[
        "process",
        "--input",
        "train=m/train.manifest",
        "--input",
        "validation=m/validation.manifest",
        "--input",
        "test=m/test.manifest",
        "--out",
        "p",
        "--size",
        "32x32",
    ])?;
    run(&[
        "train",
        "--data",
        "p",
        "--out",
        "model",
        "--workers",
        "1",
        "--epochs",
        "3",
    ])?;
    let first = std::fs::read_dir(dir.join("data/circle"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .min()
        .context("bench: no image was generated")?;
    std::fs::copy(first, &image)?;
    std::fs::write(&marker, b"")?;
    Ok(image)
}

/// Starts `shardline serve` on a free port; returns the child and its address.
fn start(exe: &Path, dir: &Path, extra: &[&str]) -> Result<(std::process::Child, String)> {
    let mut child = Command::new(exe)
        .args(["serve", "--model", "model", "--port", "0"])
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("bench: cannot start shardline serve")?;
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
    stdout.read_line(&mut line)?;
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let address = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("bench: the server said {line:?}"))?
        .to_string();
    Ok((child, address))
}

/// Runs the benchmark.
pub async fn run(args: ServeArgs, ui: &Ui) -> Result<()> {
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("bench: wrk is not installed; install it (Debian: apt-get install wrk) and rerun");
    }
    std::fs::create_dir_all(&args.dir)?;
    let dir = args.dir.canonicalize()?.join("serve");
    let exe = crate::shardline_exe()?;
    let image = prepare(&exe, &dir, ui)?;
    let script = dir.join("post.lua");
    std::fs::write(
        &script,
        format!(
            "local f = io.open({:?}, \"rb\")\nwrk.method = \"POST\"\nwrk.body = f:read(\"*all\")\nf:close()\nwrk.headers[\"Content-Type\"] = \"image/png\"\n",
            image.display().to_string()
        ),
    )?;
    let bytes = std::fs::metadata(&image)?.len();
    let mut text = format!(
        "serve: POST /invocations, one {bytes}-byte 32x32 PNG per request, wrk (1 thread) and the server on the same {} cores, {}; {} s per row\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        crate::stages::cpu_model(),
        args.duration
    );
    text.push_str("| server | connections | requests/s | p50 ms | p99 ms | errors | requests |\n");
    text.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for (name, flags) in [
        (
            "batching, adaptive (max 32, 2 ms)",
            vec!["--max-batch", "32", "--max-delay-ms", "2"],
        ),
        (
            "batching, always 2 ms (max 32)",
            vec![
                "--max-batch",
                "32",
                "--max-delay-ms",
                "2",
                "--batching",
                "delay",
            ],
        ),
        (
            "no batching",
            vec!["--max-batch", "1", "--max-delay-ms", "0"],
        ),
    ] {
        let (mut child, address) = start(&exe, &dir, &flags)?;
        for &connections in &args.connections {
            ui.say(format!("  {name}, {connections} connections ..."));
            let output = Command::new("wrk")
                .args(["-t", "1", "-c", &connections.to_string()])
                .args(["-d", &format!("{}s", args.duration), "--latency", "-s"])
                .arg(&script)
                .arg(format!("http://{address}/invocations"))
                .output()
                .context("bench: cannot run wrk")?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            let load = parse_wrk(&stdout).with_context(|| format!("wrk printed:\n{stdout}"))?;
            text.push_str(&format!(
                "| {name} | {connections} | {:.0} | {:.2} | {:.2} | {} | {} |\n",
                load.requests_per_second, load.p50_ms, load.p99_ms, load.errors, load.requests
            ));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    crate::out(&text);
    std::fs::write(args.dir.join("serve-bench.md"), &text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let text = "Running 10s test @ http://127.0.0.1:1/invocations\n  1 threads and 64 connections\n  Latency Distribution\n     50%    1.50ms\n     75%    2.00ms\n     90%    3.00ms\n     99%  812.00us\n  20000 requests in 10.00s, 4.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:   2000.50\n";
        let load = parse_wrk(text).expect("parse");
        assert_eq!(load.requests_per_second, 2000.5);
        assert_eq!(load.p50_ms, 1.5);
        assert!((load.p99_ms - 0.812).abs() < 1e-9);
        assert_eq!(load.errors, 7);
        assert_eq!(load.requests, 20000);
    }
}
