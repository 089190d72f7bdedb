//! `shardline-bench manifest-stream`: manifests of 1, 10 and 100 million keys written, read,
//! sharded and written again as streams, with each phase's wall time and peak memory (a process
//! of its own each, measured with `wait4`), beside the same work done in memory (the contract's
//! `read_manifest` and `share`, as the stages do it today) and beside the usual Python
//! (`json.load` of every part, a slice, `json.dump`).
//!
//! Writing: sorted keys (`class-NNN/NNNNNNNNNN.jpg`) as parts of `--part-keys` behind an index
//! (`PartsWriter`). Sharding: instance `--rank` of `--instances` takes every key at a position
//! `i ≡ rank (mod instances)` of the sorted stream (ShardedByKey on a sorted manifest), checking
//! the order as it reads, and writes its share as one manifest (`ManifestWriter`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use shardline_contract::manifest_stream::{ManifestWriter, PartsWriter, index_of, read_stream};

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
    let mut w = PartsWriter::new(dir, "train.manifest", "s3://lake/raw/", part_keys);
    for i in 0..n {
        w.key(&key(i, n))?;
    }
    let index = w.finish()?;
    ensure!(index.keys == n, "wrote {} keys of {n}", index.keys);
    Ok(())
}

/// Streams the index's parts, keeping rank's keys in sorted order, into `share.manifest`.
fn shard_phase(dir: &Path, instances: u64, rank: u64) -> Result<()> {
    let index_path = dir.join("train.manifest");
    let bytes = std::fs::read(&index_path)?;
    let index = index_of(&index_path.display().to_string(), &bytes)?
        .context("bench: the manifest is not an index")?;
    let out = std::fs::File::create(dir.join("share.manifest"))?;
    let mut share = ManifestWriter::new(
        std::io::BufWriter::with_capacity(1 << 20, out),
        &index.prefix,
    )?;
    let mut position = 0u64;
    let mut last = String::new();
    let mut error: Option<std::io::Error> = None;
    for part in &index.parts {
        let path = dir.join(&part.manifest);
        let file = std::fs::File::open(&path)?;
        read_stream(&path.display().to_string(), file, &mut |k| {
            if k < last.as_str() {
                return Err(format!(
                    "{k:?} comes after {last:?}: the manifest is not sorted"
                ));
            }
            last.clear();
            last.push_str(k);
            if position % instances == rank
                && let Err(e) = share.key(k)
            {
                error.get_or_insert(e);
            }
            position += 1;
            Ok(())
        })?;
    }
    if let Some(e) = error {
        return Err(e.into());
    }
    let (_, keys, _, _) = share.finish()?;
    ensure!(
        keys == index.keys / instances + u64::from(index.keys % instances > rank),
        "the share has {keys} keys"
    );
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
        "shard" => shard_phase(&args.dir, args.instances, args.rank),
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
