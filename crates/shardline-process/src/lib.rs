//! Shardline's sharded processing: each channel's objects are distributed to N instances, each
//! instance turns its share into tensors and writes its own WebDataset shards, and the job ends
//! with channel indexes, the preprocessing recipe, a report and a lineage record.
//!
//! Pure planning lives in `shardline_contract::distribute` (who gets which object), [`identity`]
//! (who am I) and `shardline_preprocess` (bytes to tensor); [`instance`], [`finalize`] and [`launch`] do the I/O.
//! This crate knows nothing about HTTP or training.

pub mod conformance;
mod error;
pub mod finalize;
pub mod identity;
pub mod instance;
pub mod job;
pub mod launch;
pub mod script;
pub mod shards;
pub mod stage;

pub use stage::{
    NoProgress, Outcome, ProcessConfig, ProcessReport, Progress, Role, run, run_instance,
};

pub use error::Error;
