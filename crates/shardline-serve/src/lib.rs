//! Shardline's inference endpoint: a model written by `shardline train` behind HTTP, speaking the
//! two protocols the ecosystem's clients already use — SageMaker hosting (`GET /ping`,
//! `POST /invocations`) and the Open Inference Protocol v2 (KServe) — with dynamic batching,
//! Prometheus metrics, request limits and graceful shutdown; and batch transform over a manifest.
//!
//! # Custom inference
//!
//! The server calls the hooks of one trait, [`Inference`], modelled on SageMaker's PyTorch
//! serving functions: [`Inference::load`] (`model_fn`, once per model thread),
//! [`Inference::input`] (`input_fn`: body and content type → one input),
//! [`Inference::predict`] (`predict_fn`, over a whole batch gathered from concurrent requests)
//! and [`Inference::output`] (`output_fn`: one output, `Accept` and query parameters → a body);
//! [`Inference::input_tensors`] and [`Inference::output_tensors`] are the KServe v2 forms.
//! [`ImageClassifier`] is the built-in implementation; `examples/custom_inference.rs` wraps it to
//! answer in another format.
//!
//! Why a Rust trait rather than a script or a plugin: the hooks run in the server's own process
//! with no serialisation between them, `predict` receives whole batches (so a custom model keeps
//! the batcher's gains), the compiler checks a user's types against the server's, and the trait
//! mirrors the four functions SageMaker users already write. The model is built on its own
//! threads and never shared, so it need not be `Sync` (Burn's modules are not).
//!
//! This crate knows nothing about training loops, launchers or how shards were made: a model is
//! its directory's files, and preprocessing is the model's recipe.

mod batcher;
mod classifier;
mod conn;
pub mod endpoint;
mod error;
mod http;
mod inference;
mod metrics;
mod model;
pub mod transform;

pub use batcher::{Arrival, BatchConfig, Batcher, Pending};
pub use classifier::{
    ClassifierOptions, ImageClassifier, Images, Loaded, Probabilities, negotiate,
};
pub use conn::{ConnectionLimits, Stopped, serve};
pub use error::{Error, InferenceError};
pub use http::{Server, ServerConfig, app};
pub use inference::{Answer, Inference, Reply, Request, Tensor, TensorSpec};
pub use metrics::Metrics;
pub use model::ModelFiles;
