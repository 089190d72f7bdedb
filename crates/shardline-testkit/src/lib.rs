//! Test-only harnesses: what Shardline's tests and benchmarks start for real and tear down even
//! when they fail. Never a dependency of a shipped crate.

pub mod garage;
pub mod hosts;
pub mod slurm;
