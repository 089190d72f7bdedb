//! `shardline evaluate`: flags → [`EvaluateConfig`] → [`shardline_train::evaluate::run`] → the
//! report as a table (and as JSON).

use anyhow::{Context, Result};
use shardline_train::evaluate::EvaluateConfig;

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
    /// The device: cpu, or cuda / wgpu in a build with that feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Evaluates and prints the report.
pub async fn run(args: Args, ui: &Ui) -> Result<()> {
    let config = EvaluateConfig {
        model: args.model.clone(),
        data: args.data.clone(),
        channel: args.channel.clone(),
        device: args.device.clone(),
    };
    let report = shardline_train::evaluate::run(&config).await.map_err(|e| {
        anyhow::anyhow!("evaluate: {}", e.to_string().trim_start_matches("train: "))
    })?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("evaluate: --json {}", path.display()))?;
    }
    ui.say(format!(
        "evaluate: {} samples of {}: accuracy {:.2}%",
        report.samples,
        report.data,
        100.0 * report.accuracy
    ));
    let width = report
        .classes
        .iter()
        .map(|c| c.class.len())
        .max()
        .unwrap_or(5)
        .max(5);
    ui.say(format!("  {:<width$}  precision  recall  support", "class"));
    for line in &report.classes {
        ui.say(format!(
            "  {:<width$}  {:>9.3}  {:>6.3}  {:>7}",
            line.class, line.precision, line.recall, line.support
        ));
    }
    ui.say("  confusion matrix (rows: true class, columns: predicted, in the order above):");
    for row in &report.confusion_matrix {
        let cells: Vec<String> = row.iter().map(|n| format!("{n:>6}")).collect();
        ui.say(format!("  {}", cells.join("")));
    }
    Ok(())
}
