//! `shardline quickstart`: the example pipeline shipped in the repository
//! (`examples/quickstart.toml`), run on a generated dataset, locally; a second run comes
//! entirely from the cache.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::cmd::pipeline::{self, RunArgs, State};
use crate::progress::Ui;

/// The quickstart pipeline, as shipped.
pub const DEFINITION: &str = include_str!("../../../../examples/quickstart.toml");

/// Flags of `shardline quickstart`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The local folder for the data and every output.
    #[arg(long, default_value = "quickstart-out")]
    pub dir: PathBuf,
    /// Images per class of the generated dataset.
    #[arg(long, default_value_t = 200)]
    pub per_class: usize,
    /// Another parameter of the pipeline, KEY=VALUE (epochs, instances, min_accuracy, ...).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Run every step again; use no cached result.
    #[arg(long)]
    pub no_cache: bool,
    #[command(flatten)]
    pub engine: pipeline::EngineArgs,
    #[command(flatten)]
    pub state: State,
}

/// Runs the quickstart pipeline and says where to look.
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
    let dir_text = dir.to_str().context("quickstart: --dir must be UTF-8")?;
    let def = shardline_pipeline::parse("examples/quickstart.toml", DEFINITION)?;
    let run_args = RunArgs {
        file: PathBuf::from("examples/quickstart.toml"),
        params: [
            format!("dir={dir_text}"),
            format!("per_class={}", args.per_class),
        ]
        .into_iter()
        .chain(args.params.iter().cloned())
        .collect(),
        no_cache: args.no_cache,
        max_parallel: None,
        openlineage_url: None,
        engine: args.engine.clone(),
        state: args.state.clone(),
    };
    ui.say(format!(
        "quickstart: the pipeline examples/quickstart.toml ({} steps) into {}",
        def.steps.len(),
        dir.display()
    ));
    let summary = pipeline::run_definition(&def, &run_args, ui).await?;
    let id = &summary.execution.id;
    if summary.succeeded() {
        let state = args.state.state.display();
        ui.say("");
        ui.say("Outputs:");
        for (what, path) in [
            ("images", "data/<class>/<id>.jpg"),
            (
                "manifests",
                "manifests/{train,validation,test}.manifest, dataset.parquet, lineage.json",
            ),
            (
                "shards",
                "processed/<channel>/algo-<i>-<n>.tar, recipe.json, logs/algo-<i>.log",
            ),
            (
                "model",
                "model/model.json, weights.bin, metrics.csv, lineage.json",
            ),
            ("registry", "registry/ (the registered version)"),
            (
                "predictions",
                "predictions/predictions/algo-<i>.jsonl, summary.json",
            ),
        ] {
            ui.say(format!("  {what:<12} {}/{path}", dir.display()));
        }
        ui.say("");
        ui.say("Where to look:");
        ui.say(format!("  the execution   shardline pipeline show {id}"));
        ui.say(format!(
            "  a step's log    shardline logs {id} process --instance algo-2"
        ));
        ui.say(format!(
            "  lineage         shardline lineage {}/model",
            dir.display()
        ));
        ui.say(format!(
            "  serve it        shardline serve --model {}/model",
            dir.display()
        ));
        ui.say(format!(
            "  run it again    shardline quickstart --dir {}   (every step from the cache; state in {state})",
            dir.display()
        ));
    }
    match summary.execution.status.as_str() {
        "succeeded" => Ok(()),
        status => anyhow::bail!(
            "quickstart: execution {id} {status}: {}; `shardline pipeline resume {id}` continues it",
            summary
                .execution
                .message
                .as_deref()
                .unwrap_or("a step failed")
        ),
    }
}
