//! `shardline-bench simulate`: the processing stage's sharding and retry logic at 1,000
//! instances, with stragglers and failures injected, checked and tabulated.
//!
//! The sharding is the contract's own (`shardline_contract::distribute::shares`, checked against
//! `share`); the retries are the process stage's own supervisor (`launch::supervise`), driven
//! through a [`Launcher`] whose instances do no work but end as the scenario says: attempt `a` of
//! rank `r` fails, after a fraction of its work, with the scenario's probability (a seeded draw per
//! (rank, attempt)). Durations are computed, not slept: an instance's share divided by its
//! throughput (a straggler's divided by its slowdown), a failed attempt costing the fraction it
//! got through. Every invariant is checked and a broken one fails the run: every key in exactly
//! one share, shares within one key of each other, only failed instances started again and each
//! exactly as often as it failed, the job failing exactly when an instance used up its attempts,
//! naming the first such instance.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{Result, bail, ensure};
use shardline_contract::distribute::{Distribution, share, shares};
use shardline_lineage::SplitMix64;
use shardline_process::ProcessConfig;
use shardline_process::launch::{InstanceJob, Launcher, Running, supervise};

use crate::Ui;

/// Flags of `shardline-bench simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Processing instances.
    #[arg(long, default_value_t = 1000)]
    pub instances: usize,
    /// Keys of the manifest.
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: usize,
    /// Objects per second one instance processes (the process benchmark's figure).
    #[arg(long, default_value_t = 150.0)]
    pub throughput: f64,
    /// Attempts per instance (the stage's max_attempts).
    #[arg(long, default_value_t = 3)]
    pub attempts: usize,
    /// The seed of the injected faults.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// One scenario: faults injected.
struct Scenario {
    name: &'static str,
    /// Probability that an attempt fails.
    fail: f64,
    /// Fraction of instances that are stragglers, and how much slower they are.
    stragglers: f64,
    slowdown: f64,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "no faults",
        fail: 0.0,
        stragglers: 0.0,
        slowdown: 1.0,
    },
    Scenario {
        name: "1% stragglers, 4x slower",
        fail: 0.0,
        stragglers: 0.01,
        slowdown: 4.0,
    },
    Scenario {
        name: "2% of attempts fail",
        fail: 0.02,
        stragglers: 0.0,
        slowdown: 1.0,
    },
    Scenario {
        name: "10% fail + 1% stragglers",
        fail: 0.10,
        stragglers: 0.01,
        slowdown: 4.0,
    },
    Scenario {
        name: "30% of attempts fail",
        fail: 0.30,
        stragglers: 0.0,
        slowdown: 1.0,
    },
];

/// A uniform draw in [0, 1) for (seed, rank, attempt, salt).
fn draw(seed: u64, rank: usize, attempt: usize, salt: u64) -> f64 {
    let mut rng = SplitMix64(
        seed ^ (rank as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ (attempt as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
            ^ salt,
    );
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Instances that end as the scenario says, recording every start.
struct Simulated {
    seed: u64,
    fail: f64,
    starts: Mutex<Vec<(usize, usize)>>,
}

impl Simulated {
    fn fails(&self, rank: usize, attempt: usize) -> bool {
        draw(self.seed, rank, attempt, 1) < self.fail
    }
}

impl Launcher for Simulated {
    fn start(&self, job: &InstanceJob) -> Result<Running, shardline_process::Error> {
        if let Ok(mut starts) = self.starts.lock() {
            starts.push((job.rank, job.attempt));
        }
        let (tx, messages) = tokio::sync::mpsc::unbounded_channel();
        let failed = self.fails(job.rank, job.attempt);
        if failed {
            let _ = tx.send(shardline_process::launch::Message::Line(
                "error: injected failure".into(),
            ));
        }
        drop(tx);
        Ok(Running {
            messages,
            exit: Box::pin(async move {
                if failed {
                    Err("exited with status 1".to_string())
                } else {
                    Ok(())
                }
            }),
            kill: Arc::new(|| {}),
        })
    }
}

struct Outcome {
    starts: usize,
    redone_instances: usize,
    redone_objects: f64,
    makespan: f64,
    median: f64,
    result: String,
}

async fn scenario(
    args: &SimulateArgs,
    sizes: &[usize],
    s: &Scenario,
    dir: &std::path::Path,
) -> Result<Outcome> {
    let n = args.instances;
    let launcher = Simulated {
        seed: args.seed,
        fail: s.fail,
        starts: Mutex::new(Vec::new()),
    };
    let mut config = ProcessConfig::default();
    config.settings.instances = n;
    config.max_attempts = args.attempts;
    let result = supervise(&launcher, &config, "simulated", dir, &|_| {}).await;
    let starts = launcher
        .starts
        .lock()
        .map(|s| s.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    let mut per_rank: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (rank, attempt) in &starts {
        per_rank.entry(*rank).or_default().push(*attempt);
    }
    // The supervisor's logic, checked against the injected faults.
    let mut exhausted = None;
    let mut makespans = Vec::with_capacity(n);
    let mut redone_objects = 0.0;
    let mut redone_instances = 0;
    for (rank, &size) in sizes.iter().enumerate() {
        let mut expected = 1;
        while expected < args.attempts && launcher.fails(rank, expected) {
            expected += 1;
        }
        let attempts = per_rank.get(&rank).cloned().unwrap_or_default();
        ensure!(
            attempts == (1..=expected).collect::<Vec<_>>(),
            "rank {rank} was started for attempts {attempts:?}; the faults call for 1..={expected}"
        );
        if launcher.fails(rank, expected) && exhausted.is_none() {
            exhausted = Some(rank);
        }
        if expected > 1 {
            redone_instances += 1;
        }
        let slow = if draw(args.seed, rank, 0, 2) < s.stragglers {
            s.slowdown
        } else {
            1.0
        };
        let full = size as f64 / args.throughput * slow;
        let mut time = 0.0;
        for attempt in 1..=expected {
            if launcher.fails(rank, attempt) {
                let part = draw(args.seed, rank, attempt, 3);
                time += full * part;
                redone_objects += size as f64 * part;
            } else {
                time += full;
            }
        }
        makespans.push(time);
    }
    match (&result, exhausted) {
        (Ok(()), None) => {}
        (Err(e), Some(rank)) => {
            let named = format!("algo-{}", rank + 1);
            ensure!(
                e.to_string().contains(&named),
                "the job failed ({e}), but not naming {named}, the first instance out of attempts"
            );
        }
        (Ok(()), Some(rank)) => bail!("rank {rank} used up its attempts, yet the job succeeded"),
        (Err(e), None) => bail!("the job failed ({e}) with no instance out of attempts"),
    }
    let mut sorted = makespans.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(Outcome {
        starts: starts.len(),
        redone_instances,
        redone_objects,
        makespan: sorted.last().copied().unwrap_or(0.0),
        median: sorted[sorted.len() / 2],
        result: match result {
            Ok(()) => "succeeded".into(),
            Err(_) => format!(
                "failed: algo-{} out of attempts",
                exhausted.map_or(0, |r| r + 1)
            ),
        },
    })
}

/// Runs the simulation and prints its table.
pub async fn run(args: SimulateArgs, ui: &Ui) -> Result<()> {
    ensure!(
        args.instances > 0 && args.keys > 0,
        "simulate: --instances and --keys must be positive"
    );
    // Keys as a lake names them: class prefixes, unsorted.
    let uris: Vec<String> = (0..args.keys)
        .map(|i| format!("s3://lake/raw/class-{:03}/{:012}.jpg", (i * 7919) % 997, i))
        .collect();
    let all = shares(&uris, args.instances, Distribution::ShardedByKey);
    for rank in [0, args.instances / 2, args.instances - 1] {
        ensure!(
            all[rank] == share(&uris, rank, args.instances, Distribution::ShardedByKey),
            "shares() and share() disagree for rank {rank}"
        );
    }
    let mut seen = vec![0u8; args.keys];
    for s in &all {
        for &p in s {
            seen[p] += 1;
        }
    }
    ensure!(
        seen.iter().all(|&c| c == 1),
        "a key is in no share or in several"
    );
    let sizes: Vec<usize> = all.iter().map(Vec::len).collect();
    let (min, max) = (
        sizes.iter().min().copied().unwrap_or(0),
        sizes.iter().max().copied().unwrap_or(0),
    );
    ensure!(max - min <= 1, "shares differ by {} keys", max - min);
    ui.say(format!(
        "sharding: {} keys over {} instances (ShardedByKey): every key in exactly one share, shares of {min} to {max} keys",
        args.keys, args.instances
    ));
    ui.say(format!(
        "retries: the process stage's supervisor, {} attempts per instance; {} objects/s per instance; durations computed, not slept",
        args.attempts, args.throughput
    ));
    ui.say("");
    ui.say("| scenario | attempts started | instances redone | objects redone | makespan s | slowest / median | whole-job retry | outcome |");
    ui.say("|---|---:|---:|---:|---:|---:|---|---|");
    let dir = tempfile::tempdir()?;
    for s in SCENARIOS {
        let o = scenario(&args, &sizes, s, dir.path()).await?;
        // Retrying the whole job when any instance fails: a round succeeds with (1-p)^N.
        let round = (1.0 - s.fail).powi(args.instances as i32);
        let whole = if s.fail == 0.0 {
            "= per-instance".to_string()
        } else {
            format!("a round succeeds with p = {round:.1e}")
        };
        ui.say(format!(
            "| {} | {} | {} | {:.0} ({:.2}%) | {:.0} | {:.2} | {whole} | {} |",
            s.name,
            o.starts,
            o.redone_instances,
            o.redone_objects,
            100.0 * o.redone_objects / args.keys as f64,
            o.makespan,
            o.makespan / o.median.max(f64::MIN_POSITIVE),
            o.result
        ));
    }
    ui.say("");
    ui.say("every invariant held (shares, restarts per instance, the job's outcome and the instance it names)");
    Ok(())
}
