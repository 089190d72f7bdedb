//! `shardline-bench pipeline`: the executor's own costs. A fully cached rerun of the quickstart
//! pipeline (the `shardline` binary, start to exit), the executor's overhead per step (a chain
//! of tiny datagen steps through the executor, against the same library calls made directly),
//! and validation plus planning of a generated 500-step definition.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use shardline_pipeline::{Event, Options, Runner};
use shardline_process::launch::LocalProcesses;

use crate::Ui;

/// Flags of `shardline-bench pipeline`.
#[derive(Debug, clap::Args)]
pub struct PipelineArgs {
    /// Where the quickstart's data, outputs and state live (replaced).
    #[arg(long, default_value = "bench/data/pipeline")]
    pub dir: PathBuf,
    /// Fully cached reruns timed; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub reruns: usize,
    /// Steps of the chain that measures the overhead per step.
    #[arg(long, default_value_t = 40)]
    pub steps: usize,
    /// Steps of the generated definition that is validated and planned.
    #[arg(long, default_value_t = 500)]
    pub plan_steps: usize,
}

fn chain(steps: usize, out: &str) -> String {
    let mut text = String::from("name = \"chain\"\nmax_parallel = 1\n");
    for i in 0..steps {
        text.push_str(&format!(
            "\n[steps.s{i}]\nkind = \"datagen\"\nout = \"{out}/s{i}\"\nclasses = 1\nper_class = 1\nsize = 8\n"
        ));
        if i > 0 {
            text.push_str(&format!("after = [\"s{}\"]\n", i - 1));
        }
    }
    text
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Runs the benchmark and prints its table.
pub async fn run(args: PipelineArgs, ui: &Ui) -> Result<()> {
    let exe = crate::shardline_exe()?;
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)?;
    let dir = args.dir.canonicalize()?;
    let state = dir.join("state");
    let quickstart = |no_cache: bool| {
        let mut command = std::process::Command::new(&exe);
        command
            .args(["--quiet", "quickstart", "--per-class", "40"])
            .arg("--dir")
            .arg(dir.join("out"))
            .arg("--state")
            .arg(&state)
            .args(["--param", "epochs=2", "--param", "min_accuracy=0"]);
        if no_cache {
            command.arg("--no-cache");
        }
        command
    };
    ui.say("pipeline: running the quickstart pipeline once to fill the cache...");
    let status = quickstart(false)
        .status()
        .context("run shardline quickstart")?;
    if !status.success() {
        bail!("bench: the quickstart pipeline failed");
    }
    let mut times = Vec::new();
    for _ in 0..args.reruns.max(1) {
        let started = Instant::now();
        let output = quickstart(false).output()?;
        if !output.status.success() {
            bail!(
                "bench: a cached rerun failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        times.push(started.elapsed().as_secs_f64());
    }
    let cached = median(times);

    // Overhead per step: the same datagen calls, directly and through the executor.
    let out = dir.join("chain");
    let config = shardline_datagen::ShapesConfig {
        classes: 1,
        per_class: 1,
        size: 8,
        ..shardline_datagen::ShapesConfig::default()
    };
    let started = Instant::now();
    for i in 0..args.steps {
        let store = shardline_store::Store::open(&format!("{}/direct/s{i}", out.display()))?;
        shardline_datagen::generate(&store, &config, &|| {}).await?;
    }
    let direct = started.elapsed().as_secs_f64();
    let text = chain(args.steps, &format!("{}/executor", out.display()));
    let def = shardline_pipeline::parse("chain.toml", &text)?;
    let options = Options::new(
        dir.join("chain-state"),
        dir.join("registry").display().to_string(),
    );
    let launcher = LocalProcesses {
        program: exe.clone(),
        args: vec!["instance".into()],
        env: Vec::new(),
    };
    let noop = |_: &Event| {};
    let runner = Runner {
        options: &options,
        launcher: &launcher,
        on_event: &noop,
    };
    let started = Instant::now();
    let summary = runner.run(&def, &[], std::future::pending()).await?;
    let executor = started.elapsed().as_secs_f64();
    if !summary.succeeded() {
        bail!(
            "bench: the chain pipeline failed: {:?}",
            summary.execution.message
        );
    }
    let overhead_ms = 1e3 * (executor - direct) / args.steps as f64;

    // Validation and planning of a large definition.
    let text = chain(args.plan_steps, &format!("{}/plan", out.display()));
    let plan_options = Options::new(dir.join("plan-state"), String::new());
    let planner = Runner {
        options: &plan_options,
        launcher: &launcher,
        on_event: &noop,
    };
    let started = Instant::now();
    let def = shardline_pipeline::parse("plan.toml", &text)?;
    let validated = started.elapsed().as_secs_f64();
    let lines = planner.plan(&def, &[], None).await?;
    let planned = started.elapsed().as_secs_f64();
    if lines.len() != args.plan_steps {
        bail!("bench: the plan has {} lines", lines.len());
    }

    ui.say("");
    ui.say(format!(
        "pipeline executor ({}, {} cores)",
        crate::stages::cpu_model(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    ));
    ui.say(format!(
        "  {:<58} {:>12} {:>10}",
        "measure", "shardline", "target"
    ));
    ui.say(format!(
        "  {:<58} {:>10.3} s {:>10}",
        format!(
            "fully cached rerun of the quickstart (median of {})",
            args.reruns.max(1)
        ),
        cached,
        "< 1 s"
    ));
    ui.say(format!(
        "  {:<58} {:>9.2} ms {:>10}",
        format!("executor overhead per step ({} datagen steps)", args.steps),
        overhead_ms,
        "< 50 ms"
    ));
    ui.say(format!(
        "  {:<58} {:>9.1} ms {:>10}",
        format!("validate {} steps", args.plan_steps),
        1e3 * validated,
        ""
    ));
    ui.say(format!(
        "  {:<58} {:>9.1} ms {:>10}",
        format!("validate + plan {} steps", args.plan_steps),
        1e3 * planned,
        "< 200 ms"
    ));
    ui.say(format!(
        "  (the chain: {:.1} ms per step through the executor, {:.1} ms per direct call)",
        1e3 * executor / args.steps as f64,
        1e3 * direct / args.steps as f64
    ));
    Ok(())
}
