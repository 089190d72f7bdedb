//! `shardline-bench manifest-stream`: manifests of 1, 10 and 100 million keys written, read,
//! sharded and written again as streams, with each phase's wall time and peak memory (a process
//! of its own each, measured with `wait4`), beside the same work done in memory (the contract's
//! `read_manifest` and `share`, as the stages do it today) and beside the usual Python
//! (`json.load` of every part, a slice, `json.dump`).
//!
//! Writing: sorted keys (`class-NNN/NNNNNNNNNN.jpg`) as parts of `--part-keys` behind an index
//! (`PartsWriter`). Sharding: instance `--rank` of `--instances` takes every key at a position
//! `i ≡ rank (mod instances)` of the sorted stream (ShardedByKey on a sorted manifest), checking
//! the order as it reads, and writes its share as one manifest (`ManifestWriter`): the
//! contract's `Share`, which `shardline process` instances use.
//!
//! Processing: the real `shardline process` binary as one instance (`--process-rank` of
//! `--process-instances`, an Indexed Job's identity) of the same manifest, with only its share of
//! the objects present (hard links to one small JPEG): it validates the whole manifest in one
//! streamed pass, then streams its share and processes it. Its peak memory is the stage's.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use shardline_contract::distribute::Distribution;
use shardline_contract::manifest_stream::{ManifestWriter, Opened, PartsWriter, Share, open};

use crate::Ui;

/// Flags of `shardline-bench manifest-stream`.
#[derive(Debug, clap::Args)]
pub struct StreamArgs {
    /// Manifest sizes, in keys.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000000,10000000,100000000"
    )]
    pub keys: Vec<u64>,
    /// Keys per part.
    #[arg(long, default_value_t = 10_000_000)]
    pub part_keys: u64,
    /// Instances the manifest is sharded to.
    #[arg(long, default_value_t = 8)]
    pub instances: u64,
    /// The instance whose share is taken.
    #[arg(long, default_value_t = 3)]
    pub rank: u64,
    /// Instances of the `shardline process` run (its share's objects are created on disk).
    #[arg(long, default_value_t = 4096)]
    pub process_instances: u64,
    /// The instance of the `shardline process` run.
    #[arg(long, default_value_t = 1)]
    pub process_rank: u64,
    /// Sizes up to this many keys also run in memory and with the Python peer.
    #[arg(long, default_value_t = 10_000_000)]
    pub in_memory_up_to: u64,
    /// Where the manifests are written (several GB for 100 million keys).
    #[arg(long, default_value = "bench/data/manifest-stream")]
    pub dir: PathBuf,
    /// The Python interpreter of the peer.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Internal: run one phase in this process (the benchmark starts itself for each).
    #[arg(long, hide = true)]
    pub phase: Option<String>,
}

fn key(i: u64, n: u64) -> String {
    // Sorted by construction: 1,000 classes, each a run of consecutive ids.
    let per_class = n.div_ceil(1000).max(1);
    format!("class-{:03}/{:010}.jpg", i / per_class, i)
}

fn write_phase(dir: &Path, n: u64, part_keys: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut w = PartsWriter::new(dir, "train.manifest", &lake_uri(dir)?, part_keys);
    for i in 0..n {
        w.key(&key(i, n))?;
    }
    let index = w.finish()?;
    ensure!(index.keys == n, "wrote {} keys of {n}", index.keys);
    Ok(())
}

fn lake_uri(dir: &Path) -> Result<String> {
    Ok(format!(
        "file://{}/",
        std::path::absolute(dir)?.join("lake").display()
    ))
}

/// Streams the index's parts through the contract's `Share` (rank's keys, in sorted order,
/// the order checked as they come) into `share.manifest`.
async fn shard_phase(dir: &Path, instances: u64, rank: u64) -> Result<()> {
    let store = shardline_store::Store::open(&dir.display().to_string())?;
    let Opened::Keys(keys) = open(&store, "train.manifest").await? else {
        bail!("bench: the manifest is not an index");
    };
    let total = keys.index().map(|(index, _)| index.keys).unwrap_or(0);
    let prefix = keys.prefix().unwrap_or_default().to_string();
    let out = std::fs::File::create(dir.join("share.manifest"))?;
    let mut writer = ManifestWriter::new(std::io::BufWriter::with_capacity(1 << 20, out), &prefix)?;
    let mut share = Share::new(
        keys,
        rank as usize,
        instances as usize,
        Distribution::ShardedByKey,
    );
    while let Some(key) = share.next().await? {
        writer.key(&key)?;
    }
    let (_, written, _, _) = writer.finish()?;
    ensure!(
        written == total / instances + u64::from(total % instances > rank),
        "the share has {written} keys"
    );
    Ok(())
}

/// The objects instance `rank` of `instances` processes, and the manifest's first one (which
/// `process` checks is reachable), as hard links to one small JPEG.
fn make_share_objects(dir: &Path, n: u64, instances: u64, rank: u64) -> Result<()> {
    let lake = dir.join("lake");
    std::fs::create_dir_all(&lake)?;
    let config = shardline_datagen::ShapesConfig {
        size: 16,
        ..shardline_datagen::ShapesConfig::default()
    };
    let image = lake.join("image.jpg");
    std::fs::write(&image, shardline_datagen::encode(&config, 0, 0)?)?;
    for i in std::iter::once(0).chain((rank..n).step_by(instances as usize)) {
        let path = lake.join(key(i, n));
        if path.exists() {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::hard_link(&image, &path)?;
    }
    Ok(())
}

/// The same in memory: every part read into one list (`read_manifest`), `share`, one write.
async fn memory_phase(dir: &Path, instances: u64, rank: u64) -> Result<()> {
    let store = shardline_store::Store::open(&dir.display().to_string())?;
    let (manifest, _) =
        shardline_contract::manifest_stream::read_manifest(&store, "train.manifest").await?;
    let mine = shardline_contract::distribute::share(
        &manifest.keys,
        rank as usize,
        instances as usize,
        shardline_contract::distribute::Distribution::ShardedByKey,
    );
    let bytes = shardline_contract::sagemaker::write_manifest(
        &manifest.prefix,
        mine.iter().map(|&p| manifest.keys[p].as_str()),
    );
    std::fs::write(dir.join("share-memory.manifest"), bytes)?;
    Ok(())
}

const PEER: &str = r#"
import json, sys
d, n, r = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
index = json.load(open(f"{d}/train.manifest"))
keys = []
for part in index["parts"]:
    keys += json.load(open(f"{d}/{part['manifest']}"))[1:]
keys.sort()
json.dump([{"prefix": index["prefix"]}] + keys[r::n], open(f"{d}/share-peer.manifest", "w"))
"#;

/// Runs one phase in this process (the benchmark's child).
pub async fn phase(args: &StreamArgs, name: &str) -> Result<()> {
    let n = *args.keys.first().context("bench: --keys")?;
    match name {
        "write" => write_phase(&args.dir, n, args.part_keys),
        "shard" => shard_phase(&args.dir, args.instances, args.rank).await,
        "memory" => memory_phase(&args.dir, args.instances, args.rank).await,
        other => bail!("bench: unknown phase {other}"),
    }
}

fn file_digest(path: &Path) -> Result<String> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = shardline_lineage::Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finish().as_str().to_string())
}

/// Runs the benchmark and prints its table.
pub async fn run(args: StreamArgs, ui: &Ui) -> Result<()> {
    if let Some(name) = &args.phase {
        return phase(&args, name).await;
    }
    ensure!(
        args.rank < args.instances,
        "bench: --rank must be below --instances"
    );
    let me = std::env::current_exe()?;
    std::fs::create_dir_all(&args.dir)?;
    let log = args.dir.join("phase.log");
    ui.say(format!(
        "manifest streams: write in parts of {} keys, then instance {} of {} reads, shards and writes its share",
        args.part_keys, args.rank, args.instances
    ));
    ui.say("");
    ui.say("| keys | manifest GB | phase | tool | wall s | keys/s | peak RSS MiB |");
    ui.say("|---:|---:|---|---|---:|---:|---:|");
    for &n in &args.keys {
        let dir = args.dir.join(format!("k{n}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        let child = |phase: &str| {
            let mut c = std::process::Command::new(&me);
            c.args([
                "manifest-stream",
                "--phase",
                phase,
                "--keys",
                &n.to_string(),
            ])
            .arg("--part-keys")
            .arg(args.part_keys.to_string())
            .arg("--instances")
            .arg(args.instances.to_string())
            .arg("--rank")
            .arg(args.rank.to_string())
            .arg("--dir")
            .arg(&dir);
            c
        };
        let write = crate::stages::measure_command(&mut child("write"), &log)?;
        let bytes: u64 = std::fs::read_dir(&dir)?
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        let gb = bytes as f64 / 1e9;
        let row = |phase: &str, tool: &str, s: crate::stages::Sample| {
            ui.say(format!(
                "| {n} | {gb:.2} | {phase} | {tool} | {:.2} | {:.0} | {:.0} |",
                s.seconds,
                n as f64 / s.seconds,
                s.peak_mib
            ));
        };
        row("write in parts", "shardline stream", write);
        let shard = crate::stages::measure_command(&mut child("shard"), &log)?;
        row("read + shard + write", "shardline stream", shard);
        // The stage itself: one instance of `shardline process` on the same manifest.
        make_share_objects(&dir, n, args.process_instances, args.process_rank)?;
        let mut process = std::process::Command::new(me.with_file_name("shardline"));
        process
            .arg("process")
            .arg("--input")
            .arg(format!(
                "train=file://{}",
                std::path::absolute(dir.join("train.manifest"))?.display()
            ))
            .arg("--out")
            .arg(dir.join("processed"))
            .args(["--size", "8", "--instances"])
            .arg(args.process_instances.to_string())
            .env("JOB_COMPLETION_INDEX", args.process_rank.to_string())
            .env("SHARDLINE_WORLD_SIZE", args.process_instances.to_string());
        let processed = crate::stages::measure_command(&mut process, &log)?;
        let host = shardline_contract::instance::host(args.process_rank as usize);
        let result: serde_json::Value = serde_json::from_slice(&std::fs::read(
            dir.join(format!("processed/.shardline/instances/{host}.json")),
        )?)?;
        let expected =
            n / args.process_instances + u64::from(n % args.process_instances > args.process_rank);
        ensure!(
            result["channels"]["train"]["written"].as_u64() == Some(expected),
            "bench: {host} processed {} objects, its share is {expected}",
            result["channels"]["train"]["written"]
        );
        row(
            &format!(
                "validate + stream share + process {expected} objects ({host} of {})",
                args.process_instances
            ),
            "shardline process",
            processed,
        );
        if n <= args.in_memory_up_to {
            let memory = crate::stages::measure_command(&mut child("memory"), &log)?;
            row(
                "read + shard + write",
                "in memory (read_manifest + share)",
                memory,
            );
            // Compared by digest, a buffer at a time: this process stays small, since the
            // phases it starts begin with its memory.
            ensure!(
                file_digest(&dir.join("share.manifest"))?
                    == file_digest(&dir.join("share-memory.manifest"))?,
                "the streamed share differs from the in-memory one"
            );
            let mut peer = std::process::Command::new(&args.python);
            peer.args(["-c", PEER])
                .arg(&dir)
                .arg(args.instances.to_string())
                .arg(args.rank.to_string());
            let p = crate::stages::measure_command(&mut peer, &log)?;
            row("read + shard + write", "python json.load", p);
        }
        std::fs::remove_dir_all(&dir)?;
    }
    ui.say("");
    ui.say("the streamed share is byte for byte the in-memory one (checked where both ran)");
    Ok(())
}
