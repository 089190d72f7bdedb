//! `shardline train --script "CMD"`: the flags of script mode, translated into
//! `shardline_container::training::TrainingConfig` (the SageMaker training toolkit's contract,
//! implemented there).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Result, bail};
use shardline_container::program::Output;
use shardline_container::training::{self, TrainingConfig};

use crate::progress::Ui;

/// Flags of `shardline train` for a user's own training program.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ScriptArgs {
    /// Run this training program (a shell command, e.g. "python3 train.py") under the SageMaker
    /// training toolkit's environment instead of Shardline's own trainer.
    #[arg(long, value_name = "CMD")]
    pub script: Option<String>,
    /// Processes of --script on this host; more than 1 launches them through mpirun (Horovod).
    #[arg(long, default_value_t = 1, requires = "script")]
    pub processes_per_host: usize,
    /// A hyperparameter for --script (repeatable): SM_HPS, SM_HP_<KEY> and `--key value`.
    #[arg(long = "hyperparameter", value_name = "KEY=VALUE", requires = "script")]
    pub hyperparameters: Vec<String>,
    /// A channel for --script (repeatable): NAME=URL, any store prefix. Default: the train,
    /// validation and test channels of --data.
    #[arg(long = "channel", value_name = "NAME=URL", requires = "script")]
    pub channels: Vec<String>,
    /// The local root of the SageMaker layout (input/, model/, output/); default a temporary
    /// directory. /opt/ml gives SageMaker's own paths. Its input/, model/ and output/ are
    /// replaced.
    #[arg(long, value_name = "DIR", requires = "script")]
    pub root: Option<PathBuf>,
}

fn parse_pairs(flag: &str, pairs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("train: {flag} {pair:?} must look like NAME=VALUE");
        };
        if key.is_empty() {
            bail!("train: {flag} {pair:?} has no name before '='");
        }
        if out.insert(key.to_string(), value.to_string()).is_some() {
            bail!("train: {flag} {key} is given twice; give each once");
        }
    }
    Ok(out)
}

/// Prints the program's output as it comes (unless quiet) and the stage's lines.
struct Relay<'a> {
    ui: &'a Ui,
}

impl training::Progress for Relay<'_> {
    fn message(&self, line: &str) {
        self.ui.say(format!("train: {line}"));
    }
    fn output(&self, line: Output<'_>) {
        if self.ui.is_quiet() {
            return;
        }
        match line {
            Output::Stdout(line) => crate::progress::out(line),
            Output::Stderr(line) => eprintln!("{line}"),
        }
    }
}

/// Runs the user's training program (see `shardline_container::training`).
pub async fn run(
    data: Option<&str>,
    out: &str,
    force: bool,
    args: &ScriptArgs,
    ui: &Ui,
) -> Result<()> {
    let config = TrainingConfig {
        script: args.script.clone().unwrap_or_default(),
        processes_per_host: args.processes_per_host,
        hyperparameters: parse_pairs("--hyperparameter", &args.hyperparameters)?,
        channels: parse_pairs("--channel", &args.channels)?,
        data: data.map(str::to_string),
        out: out.to_string(),
        root: args.root.clone(),
        force,
    };
    let report = training::run(&config, &Relay { ui }).await?;
    ui.say(format!("train: --script done; model in {}", report.model));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pairs_are_named() {
        let err = parse_pairs("--hyperparameter", &["lr".into()]).unwrap_err();
        assert!(err.to_string().contains("\"lr\" must look like NAME=VALUE"));
        let err = parse_pairs("--hyperparameter", &["a=1".into(), "a=2".into()]).unwrap_err();
        assert!(err.to_string().contains("given twice"));
    }
}
