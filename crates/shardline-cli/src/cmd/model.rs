//! `shardline model register|list|show`: the model registry (named models, version numbers,
//! their metrics and lineage).

use anyhow::{Context, Result};
use shardline_registry::{Reference, Registry};

use crate::progress::Ui;

/// Where the registry lives.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArg {
    /// The registry's root: any store URL. Default: $SHARDLINE_REGISTRY, else
    /// ~/.shardline/registry.
    #[arg(long, value_name = "URL")]
    pub registry: Option<String>,
}

impl RegistryArg {
    fn open(&self) -> Result<Registry> {
        let url = self.registry.clone().unwrap_or_else(default_registry);
        Registry::open(&url).with_context(|| format!("model: --registry {url}"))
    }
}

/// The registry used when none is named: `$SHARDLINE_REGISTRY`, else `~/.shardline/registry`
/// (read here: the registry crate takes its location as a value).
pub fn default_registry() -> String {
    if let Ok(url) = std::env::var("SHARDLINE_REGISTRY")
        && !url.is_empty()
    {
        return url;
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    format!("{home}/.shardline/registry")
}

/// The registry's subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Register a trained model (a directory written by `shardline train`, or a model.tar.gz)
    /// as the next version of a name; the registry keeps its own copy.
    Register {
        /// The model's name (letters, digits, '.', '_', '-').
        #[arg(long)]
        name: String,
        /// The model directory or model.tar.gz.
        #[arg(long, value_name = "URL")]
        model: String,
        /// An evaluation report to keep with it (`shardline evaluate --json FILE`).
        #[arg(long, value_name = "FILE")]
        metrics: Option<std::path::PathBuf>,
        /// A free-text description.
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        registry: RegistryArg,
    },
    /// List registered models and versions.
    List {
        /// Only this model's versions.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        registry: RegistryArg,
    },
    /// Show one version's record (name:3, name:latest): metrics, lineage, where its copy is.
    Show {
        /// name:version or name:latest.
        reference: String,
        /// Print the whole record as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        registry: RegistryArg,
    },
}

/// Runs a registry command.
pub async fn run(command: Command, ui: &Ui) -> Result<()> {
    match command {
        Command::Register {
            name,
            model,
            metrics,
            description,
            registry,
        } => {
            let registry = registry.open()?;
            let evaluation = match &metrics {
                Some(path) => {
                    let text = std::fs::read(path)
                        .with_context(|| format!("model register: --metrics {}", path.display()))?;
                    Some(serde_json::from_slice(&text).with_context(|| {
                        format!(
                            "model register: --metrics {} is not JSON (write it with `shardline evaluate --json`)",
                            path.display()
                        )
                    })?)
                }
                None => None,
            };
            // What is registered is served: it must load as the endpoint loads it.
            shardline_serve::ModelFiles::check(&model)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "model register: {}",
                        e.to_string().trim_start_matches("serve: ")
                    )
                })?;
            let record = registry
                .register(&name, &model, evaluation, description)
                .await?;
            ui.say(format!(
                "model: registered {}:{} from {} (test accuracy {}) in {}",
                record.name,
                record.version,
                record.source,
                record.accuracy(),
                registry.uri()
            ));
        }
        Command::List { name, registry } => {
            let registry = registry.open()?;
            let records = registry.list(name.as_deref()).await?;
            if records.is_empty() {
                ui.say(format!("model: no models registered in {}", registry.uri()));
                return Ok(());
            }
            for line in shardline_registry::table(&records) {
                ui.say(line);
            }
        }
        Command::Show {
            reference,
            json,
            registry,
        } => {
            let registry = registry.open()?;
            let reference = Reference::parse(&reference)?;
            let record = registry.get(&reference).await?;
            if json {
                crate::progress::out(&serde_json::to_string_pretty(&record)?);
                return Ok(());
            }
            for line in record.describe(&registry.artifact_uri(&record)) {
                ui.say(line);
            }
        }
    }
    Ok(())
}
