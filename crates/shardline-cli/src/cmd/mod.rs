//! One module per subcommand: flags, their validation, and the call into the library.

pub mod datagen;
pub mod evaluate;
pub mod launch;
pub mod manifest;
pub mod model;
pub mod pipeline;
pub mod process;
pub mod quickstart;
pub mod serve;
pub mod train;
pub mod train_script;
pub mod transform;
pub mod ui;

/// Parses a subcommand's flags as the command line would (for tests of flags → config).
#[cfg(test)]
pub fn parse<A: clap::Args + clap::FromArgMatches>(argv: &[&str]) -> A {
    let command = A::augment_args(clap::Command::new("test"));
    let matches = command.try_get_matches_from(argv).expect("the flags parse");
    A::from_arg_matches(&matches).expect("the flags make the arguments")
}
