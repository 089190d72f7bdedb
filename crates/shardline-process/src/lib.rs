//! Shardline's sharded processing: each channel's objects are distributed to N instances, each
//! instance turns its share into tensors and writes its own WebDataset shards, and the job ends
//! with channel indexes, the preprocessing recipe, a report and a lineage record.
//!
//! Pure planning lives in [`distribute`] (who gets which object), [`identity`] (who am I) and
//! [`transform`] (bytes to tensor); [`instance`], [`finalize`] and [`launch`] do the I/O.
//! This crate knows nothing about HTTP or training.

pub mod distribute;
mod error;
pub mod fault;
pub mod finalize;
pub mod identity;
pub mod instance;
pub mod job;
mod jpeg;
pub mod launch;
pub mod script;
pub mod shards;
pub mod transform;

pub use error::Error;
