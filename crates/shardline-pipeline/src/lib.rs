//! Shardline's pipelines: one definition runs the whole flow.
//!
//! A TOML definition ([`def`]) names typed parameters and steps of known kinds ([`spec`]);
//! settings are the stage's config fields and may reference parameters, other steps' outputs
//! and values of their JSON reports ([`value`]). It is validated completely before anything
//! runs. The executor ([`exec`]) runs the steps through the stages' library calls ([`run`]),
//! at once where their inputs are ready, with retries, a cache keyed by content digests
//! ([`digest`]) that checks its outputs before it trusts them, and records everything in an
//! embedded SQLite store ([`db`]): executions, steps, attempts, per-instance logs, cache keys
//! with their components, metrics and lineage edges ([`trace`]), with OpenLineage run events
//! ([`openlineage`]). The steps run in this process or, with the [`slurm`] engine, as Slurm
//! jobs that run the same code.

pub mod db;
pub mod def;
pub mod digest;
pub mod exec;
pub mod export;
pub mod openlineage;
pub mod report;
pub mod run;
pub mod slurm;
pub mod spec;
pub mod trace;
pub mod value;

pub use def::{Definition, Invalid, parse};
pub use exec::{Event, Options, PlanLine, Runner, Summary};
