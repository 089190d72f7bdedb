//! The training side of the processed shards: which shards each rank reads in an epoch (every
//! rank the same number of steps, so none waits forever at an epoch's end), and a reader that
//! streams samples out of WebDataset tar shards on a background thread and hands out normalised
//! batches, measuring how long the trainer waited for data.
//!
//! This crate knows nothing about models or collectives: a batch is `f32` values in
//! `[batch, channels, height, width]` order and `u32` labels.

mod error;
pub mod npy;
pub mod plan;
pub mod reader;

pub use error::Error;
pub use plan::{EpochPlan, plan_epoch};
pub use reader::{Batch, Normalise, Prefetcher};
