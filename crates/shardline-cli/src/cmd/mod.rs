//! One module per subcommand: flags, their validation, and the call into the library.

pub mod bench;
pub mod datagen;
pub mod evaluate;
pub mod manifest;
pub mod process;
pub mod quickstart;
pub mod train;
