//! `shardline ui`: the dashboard over the execution store, served on loopback or exported as
//! static pages; flags → [`shardline_ui`].

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::pipeline::State;
use crate::progress::Ui;

/// Flags of `shardline ui`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The address to listen on; the default keeps the dashboard on this machine. Requests must
    /// name it (or localhost) in their Host header.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The port (0: any free one, printed).
    #[arg(long, default_value_t = 8081)]
    pub port: u16,
    /// Write the pages as static HTML into DIR, and do not serve.
    #[arg(long, value_name = "DIR")]
    pub export: Option<PathBuf>,
    /// A registry to show beside those the pipelines' register steps name (default:
    /// $SHARDLINE_REGISTRY or ~/.shardline/registry).
    #[arg(long, value_name = "URL")]
    pub registry: Option<String>,
    #[command(flatten)]
    pub state: State,
}

/// Serves (or exports) the dashboard until Ctrl-C or SIGTERM.
pub async fn run(args: Args, ui: &Ui) -> Result<()> {
    let options = shardline_ui::Options {
        host: args.host,
        port: args.port,
        state: args.state.state,
        registries: vec![args.registry.unwrap_or_else(super::model::default_registry)],
    };
    if let Some(dir) = args.export {
        let files = shardline_ui::export(&options, &dir)
            .await
            .with_context(|| format!("ui: --export {}", dir.display()))?;
        ui.say(format!("ui: wrote {files} files to {}", dir.display()));
        return Ok(());
    }
    shardline_ui::serve(
        &options,
        |bound| {
            ui.say(format!(
                "ui: the dashboard is at http://{bound}/ (Ctrl-C stops it)"
            ))
        },
        super::serve::stop_signal(),
    )
    .await
    .context("ui")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_keep_the_dashboard_on_loopback() {
        let args: Args = crate::cmd::parse(&["ui"]);
        assert_eq!((args.host.as_str(), args.port), ("127.0.0.1", 8081));
        assert!(args.export.is_none());
        let args: Args = crate::cmd::parse(&["ui", "--port", "0", "--export", "out"]);
        assert_eq!(args.port, 0);
        assert_eq!(args.export, Some(PathBuf::from("out")));
    }
}
