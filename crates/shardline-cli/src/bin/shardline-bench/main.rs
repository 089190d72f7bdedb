//! `shardline-bench`: each stage of Shardline measured against the way it is usually written in
//! Python, in the same run, on the same cores, with a table. A binary of its own, so that the
//! `shardline` command ships no benchmark code and installs nothing; this one may install the
//! Python peers it compares against (`pip install -r bench/requirements-train.txt`).
//!
//! It runs the `shardline` binary beside it (`target/release/shardline` for
//! `target/release/shardline-bench`), or the one named by `--shardline` / `SHARDLINE_BIN`.

mod hosts;
mod manifest_stream;
mod pipeline;
mod real;
mod serve;
mod simulate;
mod stages;
mod train;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Measure a Shardline stage against its usual Python implementation and print a table.
#[derive(Debug, Parser)]
#[command(name = "shardline-bench", version, max_term_width = 100)]
struct Cli {
    /// The shardline binary to measure (default: the one beside this program).
    #[arg(long, global = true, env = "SHARDLINE_BIN", value_name = "PATH")]
    shardline: Option<PathBuf>,
    #[command(subcommand)]
    command: stages::Command,
}

static SHARDLINE: OnceLock<Option<PathBuf>> = OnceLock::new();

/// The `shardline` binary the benchmarks run.
pub fn shardline_exe() -> Result<PathBuf> {
    if let Some(Some(path)) = SHARDLINE.get() {
        return Ok(path.clone());
    }
    let me = std::env::current_exe().context("bench: cannot find this executable")?;
    let beside = me.with_file_name("shardline");
    if !beside.is_file() {
        bail!(
            "bench: no shardline binary beside {}; build it (cargo build --release) or give --shardline PATH",
            me.display()
        );
    }
    Ok(beside)
}

/// How the benchmarks talk to the terminal: bars on a terminal only, result lines on stdout.
pub struct Ui;

impl Ui {
    /// A bar counting `unit`s up to `len` (drawn only when stderr is a terminal).
    pub fn bar(&self, message: &str, len: Option<u64>, unit: &str) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(
            len,
            if std::io::stderr().is_terminal() {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        if let Ok(style) = ProgressStyle::with_template(&format!(
            "{{msg:>10}} [{{bar:30}}] {{pos}}/{{len}} {unit}"
        )) {
            bar.set_style(style);
        }
        bar.set_message(message.to_string());
        bar
    }

    /// Prints a result line.
    pub fn say(&self, line: impl AsRef<str>) {
        out(line.as_ref());
    }
}

/// Writes a line to stdout; a reader that went away does not stop the benchmark.
pub fn out(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

fn main() -> ExitCode {
    // As `shardline` does: inference is timed in this process.
    shardline_train::kernels::keep_freed_memory();
    let cli = Cli::parse();
    let _ = SHARDLINE.set(cli.shardline);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(stages::run(cli.command, &Ui)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
