//! What crosses a stage boundary, defined once: the preprocessing [`recipe`], the [`shards`]
//! index and sample layout, [`sagemaker`] manifest files, the [`distribute`] rule, [`instance`]
//! names (`algo-N` ↔ rank), the [`model`] directory and its `model.tar.gz`, the typed
//! [`lineage`] records stages hand each other, and the [`owner`] record every output location
//! carries. Stages read and write these through the same types.
//!
//! Pure, except [`owner`], which reads and writes its record through a `Store`.

pub mod distribute;
mod error;
pub mod fault;
pub mod instance;
pub mod lineage;
pub mod manifest_stream;
pub mod model;
pub mod owner;
pub mod recipe;
pub mod sagemaker;
pub mod shards;

pub use error::Error;
