//! `shardline quickstart`: the stages that exist, end to end, on a generated dataset.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::cmd::{datagen, manifest, process, train};
use crate::progress::Ui;

/// Flags of `shardline quickstart`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The local folder for the data and every output.
    #[arg(long, default_value = "quickstart-out")]
    pub dir: PathBuf,
    /// Images per class of the generated dataset.
    #[arg(long, default_value_t = 200)]
    pub per_class: usize,
}

/// Generates the shapes dataset and runs the manifest step on it.
pub async fn run(args: Args, ui: &Ui) -> Result<()> {
    if args.per_class < 20 {
        anyhow::bail!(
            "quickstart: --per-class {} is too small; use at least 20 so that every channel gets 2 images of each class",
            args.per_class
        );
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("quickstart: cannot create {}", args.dir.display()))?;
    let dir = args.dir.canonicalize()?;
    let data = dir.join("data");
    let manifests = dir.join("manifests");
    let utf8 = |p: &PathBuf| {
        p.to_str()
            .map(str::to_string)
            .context("quickstart: --dir must be UTF-8")
    };

    ui.say(format!(
        "[1/4] datagen: the shapes dataset into {}",
        data.display()
    ));
    let open = |path: &PathBuf| -> Result<shardline_store::Store> {
        let url = utf8(path)?;
        shardline_store::Store::open(&url).with_context(|| format!("quickstart: {url}"))
    };
    let shapes = shardline_datagen::ShapesConfig {
        classes: 4,
        per_class: args.per_class,
        size: 64,
        height: None,
        format: shardline_datagen::Format::Jpeg,
        seed: 0,
    };
    datagen::generate(&open(&data)?, &shapes, ui).await?;

    ui.say(format!(
        "[2/4] manifest: channels, table and lineage into {}",
        manifests.display()
    ));
    let manifest = shardline_manifest::Config {
        min_per_class: 2,
        augmented: true,
        ..shardline_manifest::Config::default()
    };
    manifest::run_config(&open(&data)?, &open(&manifests)?, &manifest, ui).await?;

    let processed = dir.join("processed");
    ui.say(format!(
        "[3/4] process: 2 instances (sharded by key) write WebDataset shards into {}",
        processed.display()
    ));
    let m = utf8(&manifests)?;
    let defaults = shardline_process::ProcessConfig::default();
    let process = shardline_process::ProcessConfig {
        inputs: ["train", "validation", "test"]
            .iter()
            .map(|c| (c.to_string(), format!("{m}/{c}.manifest")))
            .collect(),
        out: utf8(&processed)?,
        settings: shardline_process::job::Settings {
            instances: 2,
            recipe: shardline_preprocess::Recipe::new(32, 32, shardline_preprocess::Mode::Rgb),
            ..defaults.settings.clone()
        },
        ..defaults
    };
    process::run_config(&process, None, ui).await?;

    let model = dir.join("model");
    ui.say(format!(
        "[4/4] train: 2 data-parallel workers train the default CNN into {}",
        model.display()
    ));
    let train = shardline_train::TrainConfig {
        data: utf8(&processed)?,
        out: utf8(&model)?,
        schedule: shardline_train::Schedule {
            epochs: 30,
            batch: 16,
            lr: 2e-3,
            ..shardline_train::TrainConfig::default().schedule
        },
        ..shardline_train::TrainConfig::default()
    };
    let accuracy = train::run_config(&train, ui).await?;

    ui.say("");
    ui.say("quickstart done. Outputs:");
    ui.say(format!("  images     {}/<class>/<id>.jpg", data.display()));
    ui.say(format!(
        "  manifests  {}/{{train,validation,test}}.manifest",
        manifests.display()
    ));
    ui.say(format!(
        "  table      {}/dataset.parquet (and dataset.csv)",
        manifests.display()
    ));
    ui.say(format!("  lineage    {}/lineage.json", manifests.display()));
    ui.say(format!(
        "  shards     {}/<channel>/algo-<i>-<n>.tar, index.json per channel",
        processed.display()
    ));
    ui.say(format!(
        "  recipe     {}/recipe.json (resize, mode, mean/std for training and serving)",
        processed.display()
    ));
    ui.say(format!(
        "  logs       {}/logs/algo-1.log, algo-2.log; report.json, lineage.json",
        processed.display()
    ));
    ui.say(format!(
        "  model      {}/model.json, weights.bin, metrics.csv, lineage.json",
        model.display()
    ));
    if let Some(a) = accuracy {
        ui.say(format!(
            "  test accuracy of the trained model: {:.2}%",
            100.0 * a
        ));
    }
    ui.say("");
    ui.say("Next:");
    ui.say(format!(
        "  serve it        shardline serve --model {}   (SageMaker /invocations, KServe v2 /v2/models/model/infer)",
        model.display()
    ));
    ui.say(format!(
        "  batch transform shardline transform --model {} --manifest {}/test.manifest --out transform-out",
        model.display(),
        manifests.display()
    ));
    ui.say(format!(
        "  register it     shardline model register --name shapes --model {}",
        model.display()
    ));
    ui.say("Still to come in Shardline: pipelines (see README.md).");
    Ok(())
}
