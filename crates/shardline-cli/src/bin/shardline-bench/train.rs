//! `shardline-bench train`: training and inference of three models beside TensorFlow/Keras on the
//! same processed data and cores, in one run: Shardline's default settings (no model or schedule
//! flag), the reference CNN and the CIFAR ResNet-18, each trained by Shardline with one worker
//! (the kernels' threads on every core) and with two in-process workers, and by Keras with oneDNN
//! on and off (`bench/peer_train.py`, the same model, batch 64, Adam).
//!
//! For every run: training samples/s (epochs after the first), inference samples/s at batch 64,
//! test accuracy, the training seconds to reach the validation accuracy Keras (oneDNN on)
//! ended with, data wait and allreduce time, and the share of the CPU bound the rates reach: the
//! model's GEMM work (`ModelConfig::forward_macs`, x3 when training) against this machine's
//! measured sgemm rate on every core. Then `shardline-bench real`: the defaults on three real
//! datasets beside Keras (unless `--no-real`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::Ui;
use crate::stages::{measure_command, metrics_columns};

/// Flags of `shardline-bench train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Images per class of the shapes dataset (4 classes) of the default settings and the
    /// reference CNN.
    #[arg(long, default_value_t = 500)]
    pub per_class: usize,
    /// Images per class of ResNet-18's smaller dataset (it trains ~70x slower per image).
    #[arg(long, default_value_t = 60)]
    pub resnet_per_class: usize,
    /// Image size after processing (square, RGB).
    #[arg(long, default_value_t = 32)]
    pub size: u32,
    /// Epochs of every run of the default settings and the reference CNN (Keras's too).
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Epochs of the ResNet-18 runs.
    #[arg(long, default_value_t = 3)]
    pub resnet_epochs: usize,
    /// The models, by name: defaults, reference, resnet18.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "defaults,reference,resnet18"
    )]
    pub models: Vec<String>,
    /// Where the generated data and outputs live (reused across runs).
    #[arg(long, default_value = "bench/data")]
    pub dir: PathBuf,
    /// Leave out the TensorFlow/Keras peer (bench/peer_train.py, which needs tensorflow-cpu:
    /// installed from bench/requirements-train.txt on first use).
    #[arg(long)]
    pub no_peer: bool,
    /// Leave out the real datasets (`shardline-bench real`).
    #[arg(long)]
    pub no_real: bool,
}

/// The constant schedule the reference CNN and ResNet-18 train with, as the Keras peer does
/// (Adam 1e-3, no warm-up, decay, early stopping or augmentation).
const PINNED: [&str; 10] = [
    "--lr",
    "0.001",
    "--warmup-epochs",
    "0",
    "--decay",
    "constant",
    "--patience",
    "off",
    "--shift",
    "off",
];

/// One training run of either framework.
struct Run {
    name: String,
    /// Training samples/s, the mean of the epochs after the first.
    train_rate: f64,
    /// Inference samples/s at batch 64.
    infer_rate: f64,
    test_accuracy: f64,
    /// Per epoch: (cumulative training seconds, validation accuracy).
    curve: Vec<(f64, f64)>,
    data_wait: Option<f64>,
    allreduce_ms: Option<f64>,
}

impl Run {
    /// Training seconds until validation accuracy first reaches `target`.
    fn seconds_to(&self, target: f64) -> Option<f64> {
        self.curve
            .iter()
            .find(|(_, accuracy)| *accuracy >= target - 1e-9)
            .map(|(seconds, _)| *seconds)
    }
}

/// The shapes dataset with `per_class` images per class, processed at `size` (RGB, 2
/// instances) once and reused.
fn processed(exe: &Path, dir: &Path, per_class: usize, size: u32, ui: &Ui) -> Result<PathBuf> {
    let dir = dir.join(format!("train-{per_class}x{size}"));
    let processed = dir.join("processed");
    if processed.join("lineage.json").is_file() {
        return Ok(processed);
    }
    std::fs::create_dir_all(&dir)?;
    ui.say(format!(
        "  generating and processing {} shapes at {size}x{size} ...",
        4 * per_class
    ));
    let data = dir.join("data");
    let manifests = dir.join("m");
    let quiet = |args: Vec<String>, log: &str| -> Result<()> {
        let mut command = Command::new(exe);
        command.arg("--quiet").args(args);
        measure_command(&mut command, &dir.join(log)).map(|_| ())
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let (data_s, manifests_s) = (
        data.to_string_lossy().to_string(),
        manifests.to_string_lossy().to_string(),
    );
    quiet(
        s(&[
            "datagen",
            "shapes",
            "--out",
            &data_s,
            "--classes",
            "4",
            "--per-class",
            &per_class.to_string(),
            "--size",
            "64",
            "--force",
        ]),
        "datagen.log",
    )?;
    quiet(
        s(&[
            "manifest",
            "--source",
            &data_s,
            "--out",
            &manifests_s,
            "--force",
        ]),
        "manifest.log",
    )?;
    let mut process = s(&[
        "process",
        "--out",
        &processed.to_string_lossy(),
        "--instances",
        "2",
        "--size",
        &size.to_string(),
        "--force",
    ]);
    for c in ["train", "validation", "test"] {
        process.extend(s(&["--input", &format!("{c}={manifests_s}/{c}.manifest")]));
    }
    quiet(process, "process.log")?;
    Ok(processed)
}

/// Mean of a column over the epochs after the first (all of them when there is one).
fn steady(epochs: &[BTreeMap<String, f64>], column: &str) -> f64 {
    let values: Vec<f64> = epochs
        .iter()
        .skip(usize::from(epochs.len() > 1))
        .filter_map(|e| e.get(column).copied())
        .filter(|v| v.is_finite())
        .collect();
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// Samples/s of the model in `dir` at batch 64 on the CPU, over at least two seconds.
async fn inference_rate(dir: &Path) -> Result<f64> {
    let files = shardline_serve::ModelFiles::load(&dir.to_string_lossy()).await?;
    let device = shardline_train::device::by_name("cpu")?;
    let model = files.build(&device)?;
    Ok(shardline_train::evaluate::inference_rate(
        &model,
        files.config.input,
        64,
        2.0,
        &device,
    ))
}

/// A Shardline training run: `train` with `flags`, then its rates, accuracy and curve.
async fn shardline_run(
    exe: &Path,
    data: &Path,
    out: &Path,
    name: &str,
    flags: &[String],
) -> Result<Run> {
    let _ = std::fs::remove_dir_all(out);
    let mut command = Command::new(exe);
    command
        .args(["--quiet", "train", "--data"])
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(flags);
    let log = out.with_extension("log");
    measure_command(&mut command, &log)?;
    let epochs = metrics_columns(out)?;
    let lineage: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("lineage.json"))?)?;
    let mut clock = 0.0;
    let curve = epochs
        .iter()
        .map(|e| {
            clock += e.get("train_seconds").copied().unwrap_or(f64::NAN);
            (
                clock,
                e.get("validation_accuracy").copied().unwrap_or(f64::NAN),
            )
        })
        .collect();
    Ok(Run {
        name: name.to_string(),
        train_rate: steady(&epochs, "samples_per_second"),
        infer_rate: inference_rate(out).await?,
        test_accuracy: lineage["test_accuracy"].as_f64().unwrap_or(f64::NAN),
        curve,
        data_wait: Some(steady(&epochs, "data_wait_percent")),
        allreduce_ms: Some(steady(&epochs, "allreduce_ms")),
    })
}

/// A Keras run of `model` with oneDNN `onednn`.
fn peer_run(data: &Path, dir: &Path, model: &str, epochs: usize, onednn: &str) -> Result<Run> {
    let json = dir.join(format!("peer-{model}-onednn-{onednn}.json"));
    let mut command = Command::new("python3");
    command
        .arg("bench/peer_train.py")
        .arg("--data")
        .arg(data)
        .args(["--model", model, "--epochs", &epochs.to_string()])
        .args(["--batch", "64", "--lr", "1e-3", "--threads"])
        .arg(
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .to_string(),
        )
        .args(["--onednn", onednn, "--json"])
        .arg(&json)
        .env("TF_CPP_MIN_LOG_LEVEL", "2");
    measure_command(&mut command, &json.with_extension("log"))?;
    let result: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)
        .with_context(|| format!("bench: {}", json.display()))?;
    let epochs = result["epochs"]
        .as_array()
        .context("bench: the peer's JSON has no epochs")?;
    let rates: Vec<f64> = epochs
        .iter()
        .skip(usize::from(epochs.len() > 1))
        .filter_map(|e| e["samples_per_s"].as_f64())
        .collect();
    Ok(Run {
        name: format!(
            "{}, oneDNN {onednn}",
            result["framework"].as_str().unwrap_or("tensorflow")
        ),
        train_rate: rates.iter().sum::<f64>() / rates.len().max(1) as f64,
        infer_rate: result["inference_samples_per_s"]
            .as_f64()
            .unwrap_or(f64::NAN),
        test_accuracy: result["final_test_accuracy"].as_f64().unwrap_or(f64::NAN),
        curve: epochs
            .iter()
            .map(|e| {
                (
                    e["train_seconds"].as_f64().unwrap_or(f64::NAN),
                    e["validation_accuracy"].as_f64().unwrap_or(f64::NAN),
                )
            })
            .collect(),
        data_wait: None,
        allreduce_ms: None,
    })
}

/// The model name of a bench model, for `peer_train.py --model` and `ModelConfig`.
fn kind(model: &str) -> Result<&'static str> {
    Ok(match model {
        "defaults" => "bncnn",
        "reference" => "reference",
        "resnet18" => "resnet18",
        other => bail!("bench: unknown model {other:?}; use defaults, reference or resnet18"),
    })
}

/// Runs the benchmark.
pub async fn run(args: TrainArgs, ui: &Ui) -> Result<()> {
    let exe = crate::shardline_exe()?;
    std::fs::create_dir_all(&args.dir)?;
    let dir = args.dir.canonicalize()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for model in &args.models {
        kind(model)?;
    }
    if !args.no_peer {
        crate::stages::tensorflow_ready(ui)?;
    }
    ui.say("  measuring the sgemm rate of every core ...");
    let peak = shardline_train::kernels::sgemm_gflops(cores, 2.0);
    let mut text = format!(
        "training and inference on {0}x{0} RGB shapes (4 classes), batch 64 per worker; {cores} cores, {1}; sgemm {peak:.0} GFLOP/s on {cores} threads\n",
        args.size,
        crate::stages::cpu_model()
    );
    text.push_str("\nsamples/s: training epochs after the first, inference at batch 64; time to target: training seconds until the validation accuracy first reaches what Keras with oneDNN reached at its last epoch; CPU bound: the model's GEMM work at that rate over the sgemm rate\n\n");
    text.push_str("| model | run | train samples/s | vs TF oneDNN | vs TF no oneDNN | train CPU bound | infer samples/s | vs TF oneDNN | infer CPU bound | test acc | s to target | data wait % | allreduce ms/step |\n");
    text.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for model in &args.models {
        let kind = kind(model)?;
        let (per_class, epochs) = if model == "resnet18" {
            (args.resnet_per_class, args.resnet_epochs)
        } else {
            (args.per_class, args.epochs)
        };
        let data = processed(&exe, &dir, per_class, args.size, ui)?;
        let work = dir.join(format!("train-{per_class}x{}", args.size));
        let mut flags: Vec<String> = vec!["--epochs".into(), epochs.to_string()];
        if model != "defaults" {
            flags.extend(["--model".into(), kind.into()]);
            flags.extend(PINNED.iter().map(|s| s.to_string()));
        }
        let mut runs = Vec::new();
        for workers in [1, 2] {
            ui.say(format!(
                "  {model}: Shardline, {workers} worker(s), {epochs} epochs ..."
            ));
            let mut f = flags.clone();
            f.extend(["--workers".into(), workers.to_string()]);
            runs.push(
                shardline_run(
                    &exe,
                    &data,
                    &work.join(format!("{model}-{workers}w")),
                    &format!(
                        "shardline, {workers} worker{}",
                        if workers > 1 { "s" } else { "" }
                    ),
                    &f,
                )
                .await?,
            );
        }
        let mut peers = Vec::new();
        if !args.no_peer {
            for onednn in ["on", "off"] {
                ui.say(format!(
                    "  {model}: Keras, oneDNN {onednn}, {epochs} epochs ..."
                ));
                peers.push(peer_run(&data, &work, kind, epochs, onednn)?);
            }
        }
        let config: shardline_train::ModelConfig = serde_json::from_slice(&std::fs::read(
            work.join(format!("{model}-1w")).join("model.json"),
        )?)?;
        let flops = 2.0 * config.forward_macs() as f64;
        let target = peers
            .first()
            .and_then(|p| p.curve.last())
            .map(|(_, accuracy)| *accuracy);
        let ratio = |ours: f64, theirs: Option<f64>| {
            theirs.map_or("-".to_string(), |t| format!("{:.2}x", ours / t))
        };
        let (on, off) = (peers.first(), peers.get(1));
        for r in runs.iter().chain(&peers) {
            let to_target = target
                .and_then(|t| r.seconds_to(t))
                .map_or("not reached".to_string(), |s| format!("{s:.1}"));
            let shown = |v: Option<f64>, digits: usize| {
                v.map_or("-".to_string(), |v| format!("{v:.digits$}"))
            };
            text.push_str(&format!(
                "| {model} ({}) | {} | {:.0} | {} | {} | {:.0}% | {:.0} | {} | {:.0}% | {:.2}% | {to_target} | {} | {} |\n",
                format!("{:?}", config.kind).to_lowercase(),
                r.name,
                r.train_rate,
                ratio(r.train_rate, on.map(|p| p.train_rate)),
                ratio(r.train_rate, off.map(|p| p.train_rate)),
                100.0 * 3.0 * flops * r.train_rate / (peak * 1e9),
                r.infer_rate,
                ratio(r.infer_rate, on.map(|p| p.infer_rate)),
                100.0 * flops * r.infer_rate / (peak * 1e9),
                100.0 * r.test_accuracy,
                shown(r.data_wait, 1),
                shown(r.allreduce_ms, 2),
            ));
        }
        if let Some(t) = target {
            text.push_str(&format!(
                "| {model}: target | validation accuracy {:.2}% | | | | | | | | | | | |\n",
                100.0 * t
            ));
        }
    }
    crate::out(&text);
    std::fs::write(args.dir.join("train-bench.md"), &text)?;
    if !args.no_real {
        #[derive(Parser)]
        struct Real {
            #[command(flatten)]
            args: crate::real::RealArgs,
        }
        let mut argv = vec!["real".to_string()];
        if args.no_peer {
            argv.push("--no-peer".into());
        }
        crate::real::bench(Real::parse_from(argv).args, ui)?;
    }
    Ok(())
}
