//! Terminal output: progress bars when stderr is a terminal, plain lines otherwise, nothing with
//! `--quiet`.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How the command talks to the person at the terminal.
pub struct Ui {
    quiet: bool,
    bars: MultiProgress,
    /// (`` `setting` ``, its flag) for the command that runs.
    flags: Vec<(String, String)>,
}

impl Ui {
    /// Draws bars only when stderr is a terminal and `--quiet` is off; `flags` maps the
    /// libraries' setting names to this command's flags in every line printed.
    pub fn new(quiet: bool, flags: Vec<(String, String)>) -> Ui {
        let target = if !quiet && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Ui {
            quiet,
            bars: MultiProgress::with_draw_target(target),
            flags,
        }
    }

    /// A bar counting `unit`s up to `len` (a spinner when `len` is unknown).
    pub fn bar(&self, message: &str, len: Option<u64>, unit: &str) -> ProgressBar {
        let bar = match len {
            Some(len) => {
                // Hidden until added to the MultiProgress, so that it never draws on its own.
                let bar = ProgressBar::hidden();
                bar.set_length(len);
                bar.set_style(
                    ProgressStyle::with_template(&format!(
                        "{{msg:>10}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})"
                    ))
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar
            }
            None => {
                let bar = ProgressBar::hidden();
                bar.set_style(
                    ProgressStyle::with_template(&format!(
                        "{{spinner}} {{msg}} {{pos}} {unit} ({{per_sec}})"
                    ))
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar
            }
        };
        bar.set_message(message.to_string());
        let bar = self.bars.add(bar);
        if len.is_none() {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        bar
    }

    /// Prints a line of the command's result to stdout, unless quiet.
    pub fn say(&self, line: impl AsRef<str>) {
        if !self.quiet {
            let line = self.name_flags(line.as_ref());
            self.bars.suspend(|| out(&line));
        }
    }

    /// A library's line with each setting of this command named as its flag.
    pub fn name_flags(&self, line: &str) -> String {
        let mut line = line.to_string();
        for (setting, flag) in &self.flags {
            if line.contains(setting.as_str()) {
                line = line.replace(setting.as_str(), flag);
            }
        }
        line
    }

    /// Whether `--quiet` was given.
    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// Removes any bars before an error is printed.
    pub fn clear(&self) {
        let _ = self.bars.clear();
    }
}

/// Writes a line to stdout. A reader that went away (`shardline ... | head`) does not stop the
/// command, and a write error is not a panic as with `println!`: the line is dropped.
pub fn out(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}
