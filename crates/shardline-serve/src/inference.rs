//! The custom-inference seam: [`Inference`], a trait with the hooks of SageMaker's PyTorch
//! serving (`model_fn`, `input_fn`, `predict_fn`, `output_fn`), which the server calls for every
//! request. [`crate::ImageClassifier`] is the built-in implementation; write your own to change
//! how requests are decoded, how a batch is predicted, or how answers are formatted (see
//! `examples/custom_inference.rs`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::InferenceError;

/// One request as the input hook sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The body, at most the server's body limit.
    pub body: &'a [u8],
    /// The media type of `Content-Type`, lower case, without parameters (`""` when absent).
    pub content_type: &'a str,
}

/// How the client wants its answer: the `Accept` header and the query parameters
/// (`/invocations?k=3` gives `k`).
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// The `Accept` header as sent (`""` when absent).
    pub accept: String,
    /// The query parameters.
    pub params: HashMap<String, String>,
}

/// A formatted answer: its media type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The `Content-Type` of the body.
    pub content_type: String,
    /// The body.
    pub body: Vec<u8>,
}

/// One tensor of the Open Inference Protocol (KServe v2), flattened row-major.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    /// The tensor's name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<i64>,
    /// `FP32`, `INT64`, ...; the built-in classifier reads and writes `FP32`.
    pub datatype: String,
    /// The values, row-major.
    pub data: Vec<f32>,
}

/// The description of one tensor in the v2 model metadata; `-1` marks a variable dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// The tensor's name.
    pub name: String,
    /// `FP32`, ...
    pub datatype: String,
    /// Its shape, `-1` for a variable dimension.
    pub shape: Vec<i64>,
}

/// The hooks the server calls for each request; one value serves every request (it is shared
/// between threads), while the model it builds lives on the model threads only.
///
/// The order for a request: [`Inference::input`] (or [`Inference::input_tensors`] for KServe v2)
/// on the request's task, then the request waits in the batching queue, then
/// [`Inference::predict`] runs on a model thread over a whole batch of inputs, then
/// [`Inference::output`] (or [`Inference::output_tensors`]) formats each request's own output.
pub trait Inference: Send + Sync + 'static {
    /// What the model threads own: built by [`Inference::load`] on each model thread, never
    /// shared, so it need not be `Send` or `Sync` (Burn's modules are not `Sync`).
    type Model: 'static;
    /// One request's decoded input.
    type Input: Send + 'static;
    /// One request's prediction.
    type Output: Send + 'static;

    /// `model_fn`: builds the model, once per model thread.
    fn load(&self) -> Result<Self::Model, String>;

    /// `input_fn`: decodes a `/invocations` body. Runs on the request's task (large bodies on a
    /// blocking thread), so decoding is spread over the cores while the model computes.
    fn input(&self, request: Request<'_>) -> Result<Self::Input, InferenceError>;

    /// `predict_fn`: the model over a batch of inputs gathered from concurrent requests; returns
    /// one output per input, in order.
    fn predict(
        &self,
        model: &mut Self::Model,
        inputs: Vec<Self::Input>,
    ) -> Result<Vec<Self::Output>, InferenceError>;

    /// `output_fn`: formats one request's output as the client asked (`Accept`, parameters).
    fn output(&self, output: Self::Output, answer: &Answer) -> Result<Reply, InferenceError>;

    /// The KServe v2 form of `input_fn`: the request's input tensors. By default, refused.
    fn input_tensors(&self, tensors: Vec<Tensor>) -> Result<Self::Input, InferenceError> {
        let _ = tensors;
        Err(InferenceError::bad_request(
            "this model does not take KServe v2 tensors; use POST /invocations",
        ))
    }

    /// The KServe v2 form of `output_fn`: the output tensors. By default, refused.
    fn output_tensors(&self, output: Self::Output) -> Result<Vec<Tensor>, InferenceError> {
        let _ = output;
        Err(InferenceError::bad_request(
            "this model gives no KServe v2 tensors; use POST /invocations",
        ))
    }

    /// The v2 metadata: the input and output tensors. By default, none declared.
    fn signature(&self) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        (Vec::new(), Vec::new())
    }
}
