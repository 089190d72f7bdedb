//! Shardline's data-parallel training on Burn (CPU backend: flex), Horovod's model over a
//! [`shardline_comm::Communicator`]: parameters broadcast from rank 0, gradients averaged by
//! fused allreduce every step, the learning rate scaled by the number of workers (configurable),
//! every rank the same number of steps per epoch.
//!
//! [`run`] is the stage: from processed data to a model directory. [`evaluate::run`] measures a
//! model on a channel. This crate knows nothing about HTTP, launchers or how the shards were made
//! beyond the recipe.

pub mod device;
mod error;
pub mod evaluate;
pub mod kernels;
pub mod model;
pub mod report;
pub mod stage;
pub mod sync;
pub mod train;
pub mod weights;

pub use error::Error;
pub use model::{Kind, Model, ModelConfig};
pub use stage::{ModelChoice, NoProgress, Outcome, Progress, Ranks, TrainConfig, TrainReport, run};
pub use train::{
    Channel, Data, Decay, EpochEnd, EpochMetrics, Hooks, Kept, LrScaling, Resume, Schedule,
    StepEnd, Trained, train,
};
