//! `shardline manifest`: flags, validation, progress and the summary of the manifest step.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use object_store::throttle::{ThrottleConfig, ThrottledStore};
use shardline_manifest::{Config, Progress, Split};
use shardline_store::Store;

use crate::progress::Ui;

/// Flags of `shardline manifest`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The store to list: its first-level prefixes are the class labels
    /// (s3://b/pets/cat/x.jpg with --source s3://b/pets is class "cat").
    #[arg(long, value_name = "URL")]
    pub source: String,
    /// Where to write the manifests, dataset.parquet, dataset.csv, labels.json and lineage.json.
    #[arg(long, value_name = "URL")]
    pub out: String,
    /// Channel fractions; channels are train, validation and test, fractions sum to 1.
    #[arg(long, default_value = "train=0.8,validation=0.1,test=0.1")]
    pub split: String,
    /// Seed of the stable hash that assigns objects to channels.
    #[arg(long, default_value_t = Config::default().seed)]
    pub seed: u64,
    /// Fail unless every class has at least this many objects in every channel.
    #[arg(long, default_value_t = Config::default().min_per_class, value_name = "N")]
    pub min_per_class: usize,
    /// Replace an output that holds a different dataset (another source or other settings).
    #[arg(long)]
    pub force: bool,
    /// Also write <channel>.augmented.manifest (JSON Lines with source-ref, class, class-id).
    #[arg(long)]
    pub augmented: bool,
    /// How many class prefixes to list at once.
    #[arg(long, default_value_t = Config::default().concurrency, value_name = "N")]
    pub concurrency: usize,
    /// Write a channel of more keys as parts of this many keys, behind an index at
    /// <channel>.manifest (each part a SageMaker manifest; every shardline command reads the index).
    #[arg(long, default_value_t = Config::default().part_keys, value_name = "N")]
    pub part_keys: usize,
    /// Benchmarks only: add this much latency to every listing request, to model a remote store.
    #[arg(long, default_value_t = 0, value_name = "MS", hide = true)]
    pub simulate_latency_ms: u64,
}

struct Bars {
    classes: ProgressBar,
}

impl Progress for Bars {
    fn classes_found(&self, classes: usize) {
        self.classes.set_length(classes as u64);
    }
    fn class_listed(&self, _objects: usize) {
        self.classes.inc(1);
    }
    fn writing(&self) {
        self.classes.finish_and_clear();
    }
}

/// Validates the flags into the step's settings, before any I/O.
pub fn config(args: &Args) -> Result<Config> {
    let split: Split = args.split.parse()?;
    if args.concurrency == 0 {
        anyhow::bail!("manifest: --concurrency must be at least 1");
    }
    if args.part_keys == 0 {
        anyhow::bail!("manifest: --part-keys must be at least 1");
    }
    Ok(Config {
        split,
        seed: args.seed,
        min_per_class: args.min_per_class,
        force: args.force,
        augmented: args.augmented,
        concurrency: args.concurrency,
        part_keys: args.part_keys,
    })
}

fn open(url: &str, flag: &str, latency_ms: u64) -> Result<Store> {
    let store = Store::open(url).with_context(|| format!("manifest: {flag} {url}"))?;
    if latency_ms == 0 {
        return Ok(store);
    }
    let delay = Duration::from_millis(latency_ms);
    // One delay per listing request. A request returns at most 1,000 keys, so a class prefix of
    // more objects would pay it once per page on a real store; the benchmark's classes fit in one.
    let throttle = ThrottleConfig {
        wait_list_per_call: delay,
        wait_list_with_delimiter_per_call: delay,
        ..ThrottleConfig::default()
    };
    let backend = Arc::new(ThrottledStore::new(store.backend(), throttle));
    Ok(Store::with_backend(backend, store.location().clone()))
}

/// Runs the step and prints its summary.
pub async fn run(args: Args, ui: &Ui) -> Result<()> {
    let config = config(&args)?;
    let source = open(&args.source, "--source", args.simulate_latency_ms)?;
    let out = open(&args.out, "--out", 0)?;
    run_config(&source, &out, &config, ui).await
}

/// Runs the step on resolved settings and prints its summary.
pub async fn run_config(source: &Store, out: &Store, config: &Config, ui: &Ui) -> Result<()> {
    let started = Instant::now();
    let bars = Bars {
        classes: ui.bar("listing", Some(0), "classes"),
    };
    let report = shardline_manifest::run(source, out, config, &bars).await?;
    bars.classes.finish_and_clear();
    for line in report.summary(started.elapsed().as_secs_f64()) {
        ui.say(line);
    }
    Ok(())
}
