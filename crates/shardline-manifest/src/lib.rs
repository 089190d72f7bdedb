//! Shardline's manifest step: from a store whose first-level prefixes are class labels to
//! channel manifests with lineage.
//!
//! The pure parts ([`split`], [`assign`], [`sagemaker`], [`table`], [`record`]) are plain
//! functions over values; [`step`] is the thin I/O shell that lists a store and commits the
//! outputs. This crate knows nothing about images: an object is a key, a size and an etag.

pub mod assign;
mod error;
pub mod record;
pub use shardline_contract::sagemaker;
pub mod split;
pub mod step;
pub mod table;

pub use error::Error;
pub use split::{Channel, Split};
pub use step::{Config, NoProgress, Outcome, Progress, Report, run};
