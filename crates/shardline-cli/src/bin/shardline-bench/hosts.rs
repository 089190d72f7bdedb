//! `shardline-bench allreduce-hosts`: the allreduce benchmark (`examples/allreduce_bench` of
//! shardline-comm) with one rank per host across network-namespace hosts on this machine, over
//! TCP only, beside the same job on one host over shared memory. Needs root.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use shardline_testkit::hosts::Hosts;

use crate::Ui;

/// Flags of `shardline-bench allreduce-hosts`.
#[derive(Debug, clap::Args)]
pub struct HostsArgs {
    /// Ranks (one host each).
    #[arg(long, default_value_t = 3)]
    pub ranks: usize,
    /// The allreduce benchmark binary (default: examples/allreduce_bench beside this program;
    /// build it with `cargo build --release -p shardline-comm --features mpi --examples`).
    #[arg(long, value_name = "PATH")]
    pub bench: Option<PathBuf>,
    /// Where the harness keeps its files.
    #[arg(long, default_value = "bench/data/hosts")]
    pub dir: PathBuf,
}

/// Runs the benchmark on one host and across hosts, and prints both tables.
pub fn run(args: HostsArgs, ui: &Ui) -> Result<()> {
    let bench = match args.bench {
        Some(path) => path,
        None => std::env::current_exe()
            .context("bench: cannot find this executable")?
            .with_file_name("examples")
            .join("allreduce_bench"),
    };
    if !bench.is_file() {
        bail!(
            "bench: no {}; build it with `cargo build --release -p shardline-comm --features mpi --examples` or give --bench",
            bench.display()
        );
    }
    std::fs::create_dir_all(&args.dir)?;
    let dir = args.dir.canonicalize()?;
    let hosts = Hosts::start(args.ranks, &dir.join("harness"))
        .context("bench: the hosts harness needs root")?;
    ui.say(format!(
        "allreduce, {} ranks on one host (shared memory):",
        args.ranks
    ));
    let output = hosts
        .command(0, "mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np"])
        .arg(args.ranks.to_string())
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("OMPI_MCA_hwloc_base_binding_policy", "none")
        .arg(&bench)
        .output()?;
    if !output.status.success() {
        bail!("bench: {}", String::from_utf8_lossy(&output.stderr));
    }
    ui.say(String::from_utf8_lossy(&output.stdout));
    ui.say(format!(
        "allreduce, {} ranks on {} hosts (network namespaces, TCP on {}):",
        args.ranks,
        args.ranks,
        hosts.subnet()
    ));
    let output = hosts.mpirun(args.ranks, &[&bench]).output()?;
    if !output.status.success() {
        bail!("bench: {}", String::from_utf8_lossy(&output.stderr));
    }
    ui.say(String::from_utf8_lossy(&output.stdout));
    hosts.stop()?;
    Ok(())
}
