//! One module per subcommand: flags, their validation, and the call into the library.

pub mod datagen;
pub mod evaluate;
pub mod manifest;
pub mod model;
pub mod process;
pub mod quickstart;
pub mod serve;
pub mod train;
pub mod train_script;
pub mod transform;
