//! `shardline evaluate`: a trained model on one channel of processed data — accuracy, per-class
//! precision and recall, the confusion matrix — as JSON and as a table.

use anyhow::{Context, Result, bail};
use shardline_dataset::Normalise;
use shardline_process::shards::Index;
use shardline_process::transform::Recipe;
use shardline_store::Store;
use shardline_train::{Channel, ModelConfig, weights};

use crate::progress::Ui;

/// Flags of `shardline evaluate`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The model directory written by `shardline train`.
    #[arg(long, value_name = "URL")]
    pub model: String,
    /// The output of `shardline process`.
    #[arg(long, value_name = "URL")]
    pub data: String,
    /// The channel to evaluate on.
    #[arg(long, default_value = "test")]
    pub channel: String,
    /// Also write the report as JSON to this local file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
}

/// Evaluates and prints the report.
pub async fn run(args: Args, ui: &Ui) -> Result<()> {
    let model_dir =
        Store::open(&args.model).with_context(|| format!("evaluate: --model {}", args.model))?;
    let data =
        Store::open(&args.data).with_context(|| format!("evaluate: --data {}", args.data))?;
    let config: ModelConfig = super::read_json(
        &model_dir,
        "model.json",
        "evaluate: --model must be a directory written by `shardline train`",
    )
    .await?;
    let labels: serde_json::Value =
        super::read_json(&model_dir, "labels.json", "evaluate: the model's labels").await?;
    let classes: Vec<String> = serde_json::from_value(labels["classes"].clone())
        .context("evaluate: the model's labels.json has no classes")?;
    let model_recipe: Recipe =
        super::read_json(&model_dir, "recipe.json", "evaluate: the model's recipe").await?;
    let data_recipe: Recipe = super::read_json(
        &data,
        "recipe.json",
        "evaluate: --data must be the output of `shardline process`",
    )
    .await?;
    if model_recipe.shape() != data_recipe.shape() || model_recipe.mode != data_recipe.mode {
        bail!(
            "evaluate: the data was processed to {:?} {:?}, the model was trained on {:?} {:?}; process the data with the model's recipe",
            data_recipe.shape(),
            data_recipe.mode,
            model_recipe.shape(),
            model_recipe.mode
        );
    }
    let index: Index = super::read_json(
        &data,
        &format!("{}/index.json", args.channel),
        &format!("evaluate: the {} channel", args.channel),
    )
    .await?;
    let channel = Channel {
        store: data.child(&args.channel),
        shards: index.shardlist,
    };
    let weights_bytes = model_dir
        .get("weights.bin")
        .await
        .context("evaluate: the model's weights.bin")?;
    let device = burn::tensor::Device::default();
    let model = weights::decode(config.init(&device), &weights_bytes)?;
    // The model's own normalisation, so that evaluation preprocesses exactly as training did.
    let normalise = Normalise::from_recipe(&model_recipe);
    let matrix =
        shardline_train::train::confusion(&model, &channel, &normalise, classes.len(), &device)?;

    let total: u64 = matrix.iter().flatten().sum();
    let correct: u64 = (0..classes.len()).map(|i| matrix[i][i]).sum();
    let mut per_class = Vec::new();
    for (i, name) in classes.iter().enumerate() {
        let tp = matrix[i][i] as f64;
        let predicted: u64 = matrix.iter().map(|row| row[i]).sum();
        let actual: u64 = matrix[i].iter().sum();
        per_class.push(serde_json::json!({
            "class": name,
            "precision": if predicted > 0 { tp / predicted as f64 } else { 0.0 },
            "recall": if actual > 0 { tp / actual as f64 } else { 0.0 },
            "support": actual,
        }));
    }
    let report = serde_json::json!({
        "model": model_dir.uri(),
        "data": data.uri_of(&args.channel),
        "samples": total,
        "accuracy": if total > 0 { correct as f64 / total as f64 } else { 0.0 },
        "classes": per_class,
        "confusion_matrix": matrix,
    });
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("evaluate: --json {}", path.display()))?;
    }
    ui.say(format!(
        "evaluate: {} samples of {}: accuracy {:.2}%",
        total,
        data.uri_of(&args.channel),
        100.0 * report["accuracy"].as_f64().unwrap_or(0.0)
    ));
    let width = classes.iter().map(String::len).max().unwrap_or(5).max(5);
    ui.say(format!("  {:<width$}  precision  recall  support", "class"));
    for line in &per_class {
        ui.say(format!(
            "  {:<width$}  {:>9.3}  {:>6.3}  {:>7}",
            line["class"].as_str().unwrap_or(""),
            line["precision"].as_f64().unwrap_or(0.0),
            line["recall"].as_f64().unwrap_or(0.0),
            line["support"].as_u64().unwrap_or(0)
        ));
    }
    ui.say("  confusion matrix (rows: true class, columns: predicted, in the order above):");
    for row in &matrix {
        let cells: Vec<String> = row.iter().map(|n| format!("{n:>6}")).collect();
        ui.say(format!("  {}", cells.join("")));
    }
    Ok(())
}
