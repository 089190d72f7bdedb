//! `shardline-bench`: each stage measured against the way it is usually written in Python, in
//! the same run, on the same data. Wall time and peak memory of each side come from the kernel's
//! accounting of the child process (wait4), so both are measured the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::stream::{StreamExt, TryStreamExt};
use shardline_preprocess::{Mode, Recipe, Scratch, decode_only};
use shardline_store::Store;
use shardline_testkit::garage::LocalGarage;

use crate::Ui;

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The manifest step over a local tree and over a local S3 server, beside the Python peer
    /// (os.walk / boto3 paginator, pandas, LabelEncoder, train_test_split, json, to_parquet).
    Manifest(ManifestArgs),
    /// The process step (decode + resize to 224x224 + shard 500x375 JPEGs) for 1 and 2
    /// instances, beside a Pillow + numpy peer, with peak memory per instance.
    Process(ProcessArgs),
    /// Training and inference of the default settings, the reference CNN and ResNet-18 beside
    /// TensorFlow/Keras (oneDNN on and off): samples/s, test accuracy, time to the Keras
    /// accuracy, the share of the CPU bound; then the defaults on real datasets (`real`).
    Train(crate::train::TrainArgs),
    /// The endpoint under wrk: single 32x32 PNG requests at 1, 16 and 64 connections, with and
    /// without dynamic batching; requests/s, p50, p99 and errors.
    Serve(crate::serve::ServeArgs),
    /// The pipeline executor: a fully cached quickstart rerun, the overhead per step, and
    /// validation plus planning of a 500-step definition, each beside its target.
    Pipeline(crate::pipeline::PipelineArgs),
    /// The allreduce benchmark across network-namespace hosts (TCP) beside one host (shared
    /// memory); needs root and the comm crate's example built with MPI.
    AllreduceHosts(crate::hosts::HostsArgs),
    /// The processing stage's sharding and retry logic at 1,000 instances with stragglers and
    /// failures injected (the real supervisor, simulated instances), checked and tabulated.
    Simulate(crate::simulate::SimulateArgs),
    /// `shardline train` with its defaults on real datasets (scikit-learn's digits, MNIST,
    /// Fashion-MNIST) beside the Keras reference CNN: test accuracy and training seconds.
    Real(crate::real::RealArgs),
    /// Manifests of 1, 10 and 100 million keys written in parts, read, sharded and written as
    /// streams (flat memory), beside the in-memory path and Python's json.load.
    ManifestStream(crate::manifest_stream::StreamArgs),
}

/// Flags of `shardline-bench manifest`.
#[derive(Debug, clap::Args)]
pub struct ManifestArgs {
    /// Objects in the local tree.
    #[arg(long, default_value_t = 1_000_000)]
    pub objects: usize,
    /// Classes (first-level prefixes) of both datasets.
    #[arg(long, default_value_t = 500)]
    pub classes: usize,
    /// Objects on the S3 server (0 skips the S3 runs).
    #[arg(long, default_value_t = 100_000)]
    pub s3_objects: usize,
    /// Extra per-request latency for the remote-store S3 runs, in milliseconds (0 skips them).
    #[arg(long, default_value_t = 20)]
    pub latency_ms: u64,
    /// Skip the local-tree runs.
    #[arg(long)]
    pub skip_local: bool,
    /// Runs of each tool per case; the fastest is reported.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Where the generated data and outputs live (reused across runs).
    #[arg(long, default_value = "bench/data")]
    pub dir: PathBuf,
    /// The Python peer script.
    #[arg(long, default_value = "bench/peer_manifest.py")]
    pub peer: PathBuf,
    /// The Python interpreter (with pandas, pyarrow, scikit-learn and boto3; see bench/requirements.txt).
    #[arg(long, default_value = "python3")]
    pub python: String,
}

/// One measured run.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Wall time.
    pub seconds: f64,
    /// Peak resident memory.
    pub peak_mib: f64,
}

/// [`measure`] for the other benchmark modules.
pub fn measure_command(command: &mut std::process::Command, log: &Path) -> Result<Sample> {
    measure(command, log)
}

/// Runs a command to completion and measures its wall time and peak resident memory.
fn measure(command: &mut std::process::Command, log: &Path) -> Result<Sample> {
    let file = std::fs::File::create(log)?;
    let started = Instant::now();
    let child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("bench: cannot start {command:?}"))?;
    let (status, peak_kib) = wait4(child.id())?;
    let seconds = started.elapsed().as_secs_f64();
    if status != 0 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        bail!(
            "bench: {command:?} failed with status {status}; the end of {}:\n{}",
            log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(Sample {
        seconds,
        peak_mib: peak_kib as f64 / 1024.0,
    })
}

/// Waits for a child and returns its exit status and peak RSS in KiB, which only wait4 reports
/// per child.
#[allow(unsafe_code)]
fn wait4(pid: u32) -> Result<(i32, i64)> {
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet waited for (std's Child is never waited on here),
    // and both pointers are to live locals.
    let waited = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    if waited < 0 {
        return Err(std::io::Error::last_os_error()).context("bench: wait4");
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Ok((code, usage.ru_maxrss))
}

fn best(repeat: usize, mut run: impl FnMut() -> Result<Sample>) -> Result<Sample> {
    let mut best: Option<Sample> = None;
    for _ in 0..repeat.max(1) {
        let sample = run()?;
        if best.is_none_or(|b| sample.seconds < b.seconds) {
            best = Some(sample);
        }
    }
    best.context("bench: no run")
}

/// One row pair of the result table.
struct Case {
    name: String,
    objects: usize,
    ours: Sample,
    peer: Sample,
}

pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn local_tree(root: &Path, objects: usize, classes: usize, ui: &Ui) -> Result<PathBuf> {
    let tree = root.join(format!("local-{objects}x{classes}"));
    let source = tree.join("source");
    let marker = tree.join("COMPLETE");
    if marker.exists() {
        return Ok(source);
    }
    if tree.exists() {
        std::fs::remove_dir_all(&tree)?;
    }
    let bar = ui.bar("creating", Some(objects as u64), "files");
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (source, bar) = (&source, &bar);
                scope.spawn(move || -> Result<()> {
                    for class in (t..classes).step_by(threads) {
                        let dir = source.join(format!("class-{class:04}"));
                        std::fs::create_dir_all(&dir)?;
                        for i in (class..objects).step_by(classes) {
                            std::fs::write(dir.join(format!("{i:08}.jpg")), i.to_le_bytes())?;
                            bar.inc(1);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("bench: a writer thread panicked"))??;
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    std::fs::write(&marker, b"")?;
    Ok(source)
}

async fn fill_bucket(store: &Store, objects: usize, classes: usize, ui: &Ui) -> Result<()> {
    let bar = ui.bar("uploading", Some(objects as u64), "objects");
    futures::stream::iter(0..objects)
        .map(|i| {
            let bar = &bar;
            async move {
                let key = format!("class-{:04}/{i:08}.jpg", i % classes);
                store
                    .put(&key, Bytes::copy_from_slice(&i.to_le_bytes()))
                    .await?;
                bar.inc(1);
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(64)
        .try_collect::<()>()
        .await?;
    bar.finish_and_clear();
    Ok(())
}

struct Runner<'a> {
    args: &'a ManifestArgs,
    exe: PathBuf,
    dir: PathBuf,
    env: Vec<(&'static str, String)>,
}

impl Runner<'_> {
    fn pair(
        &self,
        name: &str,
        objects: usize,
        source: &str,
        latency_ms: u64,
        ui: &Ui,
    ) -> Result<Case> {
        let tag = name.replace([' ', '/', ','], "_");
        let out_ours = self.dir.join(format!("out-{tag}-shardline"));
        let out_peer = self.dir.join(format!("out-{tag}-peer"));
        ui.say(format!("  {name}: shardline ..."));
        let ours = best(self.args.repeat, || {
            let _ = std::fs::remove_dir_all(&out_ours);
            let mut command = std::process::Command::new(&self.exe);
            command
                .args(["--quiet", "manifest", "--source", source, "--out"])
                .arg(&out_ours)
                .arg(format!("--simulate-latency-ms={latency_ms}"))
                .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())));
            measure(&mut command, &self.dir.join(format!("{tag}-shardline.log")))
        })?;
        ui.say(format!("  {name}: python peer ..."));
        let peer = best(self.args.repeat, || {
            let _ = std::fs::remove_dir_all(&out_peer);
            let mut command = std::process::Command::new(&self.args.python);
            command
                .arg(&self.args.peer)
                .args(["--source", source, "--out"])
                .arg(&out_peer)
                .arg(format!("--latency-ms={latency_ms}"))
                .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())));
            measure(&mut command, &self.dir.join(format!("{tag}-peer.log")))
        })?;
        Ok(Case {
            name: name.to_string(),
            objects,
            ours,
            peer,
        })
    }
}

fn table(cases: &[Case]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "manifest step, {} cores, {}\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    ));
    out.push_str(
        "| case | tool | objects | wall s | objects/s | peak RSS MiB | speed-up | memory |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|\n");
    for case in cases {
        for (tool, sample) in [("shardline", case.ours), ("python peer", case.peer)] {
            let (speed, memory) = if tool == "shardline" {
                (
                    format!("{:.1}x", case.peer.seconds / sample.seconds),
                    format!("{:.2}x", sample.peak_mib / case.peer.peak_mib),
                )
            } else {
                ("1.0x".to_string(), "1.00x".to_string())
            };
            out.push_str(&format!(
                "| {} | {tool} | {} | {:.2} | {:.0} | {:.0} | {speed} | {memory} |\n",
                case.name,
                case.objects,
                sample.seconds,
                case.objects as f64 / sample.seconds,
                sample.peak_mib
            ));
        }
    }
    out
}

async fn manifest(args: ManifestArgs, ui: &Ui) -> Result<()> {
    if !args.peer.is_file() {
        bail!(
            "bench: the peer script {} is missing; run from the repository root or pass --peer",
            args.peer.display()
        );
    }
    std::fs::create_dir_all(&args.dir)?;
    let dir = args.dir.canonicalize()?;
    let mut runner = Runner {
        args: &args,
        exe: crate::shardline_exe()?,
        dir: dir.clone(),
        env: Vec::new(),
    };
    let mut cases = Vec::new();
    if !args.skip_local {
        let source = local_tree(&dir, args.objects, args.classes, ui)?;
        let source = source
            .to_str()
            .context("bench: --dir must be UTF-8")?
            .to_string();
        let name = format!("local {} / {} classes", args.objects, args.classes);
        cases.push(runner.pair(&name, args.objects, &source, 0, ui)?);
    }
    if args.s3_objects > 0 {
        ui.say("  starting a local Garage S3 server ...");
        let garage = LocalGarage::start(&dir.join("garage"), "bench")?;
        runner.env = garage.env();
        let url = garage.url("pets");
        let store = Store::open_with(&url, &runner.env)?;
        fill_bucket(&store, args.s3_objects, args.classes, ui).await?;
        let name = format!("s3 loopback {} / {} classes", args.s3_objects, args.classes);
        cases.push(runner.pair(&name, args.s3_objects, &url, 0, ui)?);
        if args.latency_ms > 0 {
            let name = format!("s3 +{}ms/request", args.latency_ms);
            cases.push(runner.pair(&name, args.s3_objects, &url, args.latency_ms, ui)?);
        }
    }
    let text = table(&cases);
    crate::out(&text);
    std::fs::write(dir.join("manifest-bench.md"), &text)?;
    Ok(())
}

/// Flags of `shardline-bench process`.
#[derive(Debug, clap::Args)]
pub struct ProcessArgs {
    /// JPEG images to generate and process (500x375, 4 classes).
    #[arg(long, default_value_t = 2000)]
    pub images: usize,
    /// Your own images instead of the generated ones: a directory with one sub-directory per
    /// class, as `shardline manifest --source` reads it (`--images` is then ignored).
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,
    /// Output size (square).
    #[arg(long, default_value_t = 224)]
    pub size: u32,
    /// Runs of each case; the fastest is reported.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Where the generated data and outputs live (reused across runs).
    #[arg(long, default_value = "bench/data")]
    pub dir: PathBuf,
    /// The Python peer script.
    #[arg(long, default_value = "bench/peer_process.py")]
    pub peer: PathBuf,
    /// The Python interpreter (with Pillow and numpy).
    #[arg(long, default_value = "python3")]
    pub python: String,
}

/// Peak RSS of each instance, from the job's report.
fn instance_peaks(out: &Path) -> Result<Vec<f64>> {
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json"))?)?;
    Ok(report["instances"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|i| i["peak_rss_mib"].as_f64())
                .collect()
        })
        .unwrap_or_default())
}

async fn process(args: ProcessArgs, ui: &Ui) -> Result<()> {
    if !args.peer.is_file() {
        bail!(
            "bench: the peer script {} is missing; run from the repository root or pass --peer",
            args.peer.display()
        );
    }
    std::fs::create_dir_all(&args.dir)?;
    let source = match &args.source {
        Some(path) => Some(path.canonicalize().with_context(|| {
            format!(
                "bench: --source {} cannot be read; pass a directory with one sub-directory per class",
                path.display()
            )
        })?),
        None => None,
    };
    let dir = args.dir.canonicalize()?.join(match &source {
        // One working directory per source, named by its path.
        Some(path) => format!(
            "process-source-{}",
            &shardline_lineage::Digest::of(path.to_string_lossy().as_bytes()).as_str()[7..19]
        ),
        None => format!("process-{}", args.images),
    });
    let images = source.clone().unwrap_or_else(|| dir.join("images"));
    // A user's directory may change between runs: its manifests are made afresh every time.
    let marker = dir.join("COMPLETE");
    if source.is_some() {
        let _ = std::fs::remove_file(&marker);
    }
    let exe = crate::shardline_exe()?;
    let quiet_run = |args: &[&str], log: &str| -> Result<Sample> {
        let mut command = std::process::Command::new(&exe);
        command.arg("--quiet").args(args);
        measure(&mut command, &dir.join(log))
    };
    // "Per core" is exact only if a run cannot spill onto other cores (write-back and I/O
    // threads would): each run is pinned to as many CPUs as the cores it is credited with.
    let pin = std::process::Command::new("taskset")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let pinned = |cores: usize, program: &Path| -> std::process::Command {
        if pin {
            let mut command = std::process::Command::new("taskset");
            command
                .arg("--cpu-list")
                .arg(format!("0-{}", cores.max(1) - 1))
                .arg(program);
            command
        } else {
            std::process::Command::new(program)
        }
    };
    let images_arg = images.to_string_lossy().to_string();
    if !marker.exists() && source.is_none() {
        std::fs::create_dir_all(&dir)?;
        ui.say(format!("  generating {} 500x375 JPEGs ...", args.images));
        let per_class = args.images.div_ceil(4).to_string();
        quiet_run(
            &[
                "datagen",
                "shapes",
                "--out",
                &images_arg,
                "--classes",
                "4",
                "--per-class",
                &per_class,
                "--size",
                "500",
                "--height",
                "375",
            ],
            "datagen.log",
        )?;
    }
    if !marker.exists() {
        std::fs::create_dir_all(&dir)?;
        let _ = std::fs::remove_dir_all(dir.join("m"));
        quiet_run(
            &[
                "manifest",
                "--source",
                &images_arg,
                "--out",
                &dir.join("m").to_string_lossy(),
                "--split",
                "train=1",
            ],
            "manifest.log",
        )?;
        // A manifest of half the images, to show that an instance's memory does not grow with them.
        let text = std::fs::read_to_string(dir.join("m/train.manifest"))?;
        let value: serde_json::Value = serde_json::from_str(&text)?;
        let items = value.as_array().context("bench: manifest")?;
        let half: Vec<&serde_json::Value> = items.iter().take(1 + (items.len() - 1) / 2).collect();
        std::fs::write(dir.join("half.manifest"), serde_json::to_vec(&half)?)?;
        std::fs::write(&marker, b"")?;
    }
    let keys = manifest_files(&dir.join("m/train.manifest"))?;
    let total = keys.len();
    let data = match &source {
        Some(path) => format!(
            "{total} images from {} ({:.0} KB on average)",
            path.display(),
            keys.iter()
                .map(|k| std::fs::metadata(k).map_or(0, |m| m.len()))
                .sum::<u64>() as f64
                / total.max(1) as f64
                / 1000.0
        ),
        None => format!("{total} JPEGs 500x375"),
    };
    let size = format!("{0}x{0}", args.size);
    let manifest = format!("train={}", dir.join("m/train.manifest").display());
    let half = format!("train={}", dir.join("half.manifest").display());
    let ours = |instances: usize, input: &str, tag: &str| -> Result<(Sample, Vec<f64>)> {
        let out = dir.join(format!("out-{tag}"));
        let sample = best(args.repeat, || {
            let _ = std::fs::remove_dir_all(&out);
            let mut command = pinned(instances, &exe);
            command.args([
                "--quiet",
                "process",
                "--input",
                input,
                "--out",
                &out.to_string_lossy(),
                "--instances",
                &instances.to_string(),
                "--size",
                &size,
            ]);
            measure(&mut command, &dir.join(format!("{tag}.log")))
        })?;
        Ok((sample, instance_peaks(&out)?))
    };
    ui.say("  shardline, 1 instance ...");
    let (one, one_peaks) = ours(1, &manifest, "1")?;
    ui.say("  shardline, 2 instances ...");
    let (two, two_peaks) = ours(2, &manifest, "2")?;
    ui.say("  shardline, 1 instance on half the images ...");
    let (_, half_peaks) = ours(1, &half, "half")?;
    ui.say("  python peer (Pillow + numpy), 1 process ...");
    let peer_out = dir.join("out-peer");
    let python = PathBuf::from(&args.python);
    let peer = best(args.repeat, || {
        let _ = std::fs::remove_dir_all(&peer_out);
        let mut command = pinned(1, &python);
        command
            .arg(&args.peer)
            .arg("--manifest")
            .arg(dir.join("m/train.manifest"))
            .arg("--out")
            .arg(&peer_out)
            .arg(format!("--size={}", args.size));
        measure(&mut command, &dir.join("peer.log"))
    })?;
    // The floor: decoding alone, one image after another on one core, by each side's decoder.
    ui.say("  decoding alone (the floor) ...");
    let peer_decode = {
        let mut command = pinned(1, &python);
        command
            .arg(&args.peer)
            .arg("--decode-only")
            .arg("--manifest")
            .arg(dir.join("m/train.manifest"))
            .arg("--out")
            .arg(&peer_out)
            .arg(format!("--size={}", args.size));
        let log = dir.join("peer-decode.log");
        measure(&mut command, &log)?;
        let text = std::fs::read_to_string(&log)?;
        let line = text
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or("{}");
        let value: serde_json::Value = serde_json::from_str(line)?;
        value["seconds"]
            .as_f64()
            .with_context(|| format!("bench: no timing in {}", log.display()))?
    };
    let our_decode = decode_floor(&keys, args.size)?;
    let rate = |s: &Sample| total as f64 / s.seconds;
    let peak = |p: &[f64]| p.iter().cloned().fold(0.0, f64::max);
    let mut text = format!(
        "process step: {data} -> {size} RGB, decode + resize + .npy + tar shards; {} cores, {}\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    text.push_str("| run | cores | wall s | images/s | images/s per core | peak RSS per instance MiB | vs peer per core |\n");
    text.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    let peer_rate = rate(&peer);
    for (name, cores, sample, peaks) in [
        (
            "python peer (Pillow + numpy)",
            1usize,
            peer,
            vec![peer.peak_mib],
        ),
        ("shardline, 1 instance", 1, one, one_peaks.clone()),
        ("shardline, 2 instances", 2, two, two_peaks),
    ] {
        text.push_str(&format!(
            "| {name} | {cores} | {:.2} | {:.0} | {:.0} | {:.0} | {:.2}x |\n",
            sample.seconds,
            rate(&sample),
            rate(&sample) / cores as f64,
            peak(&peaks),
            rate(&sample) / cores as f64 / peer_rate
        ));
    }
    text.push_str(&format!(
        "\nscaling 1 -> 2 instances: {:.2}x; peak RSS of one instance on {} vs {} images: {:.0} vs {:.0} MiB\n",
        one.seconds / two.seconds,
        total / 2,
        total,
        peak(&half_peaks),
        peak(&one_peaks)
    ));
    let per_image = |seconds: f64| seconds * 1000.0 / total as f64;
    text.push_str(&format!(
        "decoding alone (no resize, no write), one core: shardline (libjpeg-turbo) {:.2} ms/image, \
         Pillow {:.2} ms/image; the peer's whole step takes {:.2} ms/image, so a step that decodes \
         every pixel is at most {:.2}x the peer per core\n",
        per_image(our_decode),
        per_image(peer_decode),
        per_image(peer.seconds),
        peer.seconds / our_decode
    ));
    if !pin {
        text.push_str("(taskset was not found: the runs were not pinned to their cores)\n");
    }
    crate::out(&text);
    std::fs::write(args.dir.join("process-bench.md"), &text)?;
    Ok(())
}

/// The local files a manifest of a directory lists.
fn manifest_files(manifest: &Path) -> Result<Vec<PathBuf>> {
    let parsed = shardline_contract::sagemaker::parse_manifest(
        &manifest.display().to_string(),
        &std::fs::read(manifest)?,
    )?;
    let root = shardline_store::Location::parse(&parsed.prefix)?
        .local_path()
        .context("bench: the manifest's prefix is not a local folder")?;
    Ok(parsed.keys.iter().map(|key| root.join(key)).collect())
}

/// Seconds to decode every image once, on this thread, as the process step does (same decoder,
/// same recipe), without resizing or writing. Files are read into memory first.
fn decode_floor(paths: &[PathBuf], size: u32) -> Result<f64> {
    let files = paths
        .iter()
        .map(std::fs::read)
        .collect::<std::io::Result<Vec<_>>>()?;
    let recipe = Recipe::new(size, size, Mode::Rgb);
    let mut scratch = Scratch::new();
    let started = Instant::now();
    for bytes in &files {
        decode_only(bytes, &recipe, &mut scratch)
            .map_err(|reject| anyhow::anyhow!("bench: an image failed to decode: {reject}"))?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The columns of a model's metrics.csv and timings.csv, by header name, one map per epoch.
pub(crate) fn metrics_columns(out: &Path) -> Result<Vec<BTreeMap<String, f64>>> {
    let mut epochs: Vec<BTreeMap<String, f64>> = Vec::new();
    for name in ["metrics.csv", "timings.csv"] {
        let path = out.join(name);
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("bench: {}", path.display()))?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
        for (i, line) in lines.enumerate() {
            if epochs.len() <= i {
                epochs.push(BTreeMap::new());
            }
            for (k, v) in header.iter().zip(line.split(',')) {
                epochs[i].insert(k.to_string(), v.parse().unwrap_or(f64::NAN));
            }
        }
    }
    Ok(epochs)
}

/// Makes sure TensorFlow can be imported, installing bench/requirements-train.txt if not.
pub(crate) fn tensorflow_ready(ui: &Ui) -> Result<()> {
    let import = || {
        std::process::Command::new("python3")
            .args(["-c", "import tensorflow"])
            .env("TF_CPP_MIN_LOG_LEVEL", "3")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if import() {
        return Ok(());
    }
    ui.say("  installing the TensorFlow peer (python3 -m pip install -r bench/requirements-train.txt) ...");
    let status = std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            "bench/requirements-train.txt",
        ])
        .status()
        .context("bench: cannot run python3 -m pip")?;
    if !status.success() || !import() {
        bail!(
            "bench: TensorFlow could not be installed for the peer; install bench/requirements-train.txt yourself, or pass --no-peer"
        );
    }
    Ok(())
}

/// Runs a benchmark.
pub async fn run(command: Command, ui: &Ui) -> Result<()> {
    match command {
        Command::Manifest(args) => manifest(args, ui).await,
        Command::Process(args) => process(args, ui).await,
        Command::Train(args) => crate::train::run(args, ui).await,
        Command::Serve(args) => crate::serve::run(args, ui).await,
        Command::Pipeline(args) => crate::pipeline::run(args, ui).await,
        Command::AllreduceHosts(args) => crate::hosts::run(args, ui),
        Command::Simulate(args) => crate::simulate::run(args, ui).await,
        Command::ManifestStream(args) => crate::manifest_stream::run(args, ui).await,
        Command::Real(args) => crate::real::bench(args, ui),
    }
}
