//! `shardline transform`: flags → `shardline_serve::transform::TransformConfig` → the batch
//! transform (see that module) → its summary line. A registered NAME:VERSION model is resolved
//! here.

use anyhow::Result;
use shardline_serve::ClassifierOptions;
use shardline_serve::transform::{self, TransformConfig};

use crate::progress::Ui;

/// Flags of `shardline transform`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The model: a directory written by `shardline train`, a model.tar.gz, or a registered
    /// NAME:VERSION / NAME:latest.
    #[arg(long, value_name = "URL")]
    pub model: String,
    /// The registry for NAME:VERSION models.
    #[arg(long, value_name = "URL")]
    pub registry: Option<String>,
    /// A SageMaker manifest (as `shardline manifest` writes them).
    #[arg(long, value_name = "URL")]
    pub manifest: String,
    /// Where predictions/algo-<i>.jsonl and summary.json go.
    #[arg(long, value_name = "URL")]
    pub out: String,
    /// Instances; each takes its share of the objects (sharded by key) with its own model
    /// [default: 1, or the launcher's world size].
    #[arg(long)]
    pub instances: Option<usize>,
    /// Labels per object.
    #[arg(short, long, default_value_t = TransformConfig::default().k)]
    pub k: usize,
    /// Objects per model call.
    #[arg(long, default_value_t = TransformConfig::default().batch)]
    pub batch: usize,
    /// Redo instances whose output already exists, and replace another finished job in --out.
    #[arg(long)]
    pub force: bool,
    /// The device of the model threads: cpu, or cuda / wgpu in a build with that feature.
    #[arg(long, default_value_t = ClassifierOptions::default().device)]
    pub device: String,
    /// The fraction of objects that may fail (missing, unreadable, not an image) before the job
    /// fails; it fails anyway when nothing is predicted.
    #[arg(long, default_value_t = TransformConfig::default().error_budget)]
    pub error_budget: f64,
    /// Instance 0 of a launcher's job: how long to wait for the other instances' records.
    #[arg(long, default_value_t = TransformConfig::default().wait_s, value_name = "SECONDS")]
    pub wait_timeout: u64,
}

/// Resolves the model and runs the transform.
pub async fn run(args: Args, ui: &Ui) -> Result<()> {
    let (model, _, _) = super::serve::locate(&args.model, args.registry.as_deref()).await?;
    shardline_train::device::by_name(&args.device).map_err(|e| {
        anyhow::anyhow!("transform: {}", e.to_string().trim_start_matches("train: "))
    })?;
    // One instance of an external launcher's job (a pod of an Indexed Job, an srun task)?
    let identity =
        shardline_process::identity::detect(&|name| std::env::var(name).ok(), None, args.instances)
            .map_err(|e| anyhow::anyhow!("transform: instance identity: {e}"))?;
    if let Some(id) = &identity {
        ui.say(format!(
            "transform: instance {} of {} ({}): this instance's share only",
            id.host(),
            id.size,
            id.source
        ));
    }
    let config = TransformConfig {
        model,
        manifest: args.manifest,
        out: args.out,
        instances: identity.as_ref().map_or(
            args.instances
                .unwrap_or(TransformConfig::default().instances),
            |id| id.size,
        ),
        rank: identity.as_ref().map(|id| id.rank),
        k: args.k,
        batch: args.batch,
        force: args.force,
        error_budget: args.error_budget,
        classifier: ClassifierOptions {
            device: args.device,
            ..ClassifierOptions::default()
        },
        wait_s: args.wait_timeout,
    };
    let report = transform::run(&config, &Lines { ui }).await?;
    ui.say(format!(
        "transform: {} of {} objects predicted ({} unreadable) into {}",
        report.predicted, report.objects, report.failed, report.predictions
    ));
    Ok(())
}

struct Lines<'a> {
    ui: &'a Ui,
}

impl transform::Progress for Lines<'_> {
    fn message(&self, line: &str) {
        self.ui.say(format!("transform: {line}"));
    }
}
