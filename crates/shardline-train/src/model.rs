//! The models, described by a JSON config: a small CNN (the default) and an MLP.
//!
//! The CNN downsamples with strided 3x3 convolutions instead of max-pooling (Burn's flex max-pool
//! is slow on CPU) and ends with a global average pool and a linear head.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Which architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Strided 3x3 convolutions, global average pool, linear head.
    Cnn,
    /// Fully connected layers on the flattened image.
    Mlp,
}

/// A model's description, saved beside its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The architecture.
    pub kind: Kind,
    /// Input `[channels, height, width]`.
    pub input: [usize; 3],
    /// Number of classes.
    pub classes: usize,
    /// CNN: output channels of each stride-2 convolution; MLP: width of each hidden layer.
    pub widths: Vec<usize>,
}

impl ModelConfig {
    /// The default CNN for an input and a number of classes.
    pub fn cnn(input: [usize; 3], classes: usize) -> ModelConfig {
        ModelConfig {
            kind: Kind::Cnn,
            input,
            classes,
            widths: vec![16, 32, 64],
        }
    }

    /// An MLP with one hidden layer of 128.
    pub fn mlp(input: [usize; 3], classes: usize) -> ModelConfig {
        ModelConfig {
            kind: Kind::Mlp,
            input,
            classes,
            widths: vec![128],
        }
    }

    /// Checks that the config describes a model that fits its input.
    pub fn validate(&self) -> Result<(), String> {
        if self.classes < 2 {
            return Err(format!(
                "a classifier needs at least 2 classes, not {}",
                self.classes
            ));
        }
        if self.widths.is_empty() || self.widths.contains(&0) {
            return Err("widths must be a non-empty list of positive numbers".into());
        }
        let [c, h, w] = self.input;
        if c == 0 || h == 0 || w == 0 {
            return Err(format!("input {:?} has an empty dimension", self.input));
        }
        if self.kind == Kind::Cnn {
            let halvings = self.widths.len() as u32;
            if h.min(w) < 1 << halvings {
                return Err(format!(
                    "a CNN with {halvings} stride-2 convolutions needs inputs of at least {0}x{0}, not {h}x{w}; use fewer widths or a larger --size",
                    1 << halvings
                ));
            }
        }
        Ok(())
    }

    /// Builds the model with freshly initialised weights.
    pub fn init(&self, device: &Device) -> Model {
        let mut convs = Vec::new();
        let mut hidden = Vec::new();
        let features = match self.kind {
            Kind::Cnn => {
                let mut channels = self.input[0];
                for &width in &self.widths {
                    convs.push(
                        Conv2dConfig::new([channels, width], [3, 3])
                            .with_stride([2, 2])
                            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                            .init(device),
                    );
                    channels = width;
                }
                channels
            }
            Kind::Mlp => {
                let mut features = self.input.iter().product();
                for &width in &self.widths {
                    hidden.push(LinearConfig::new(features, width).init(device));
                    features = width;
                }
                features
            }
        };
        Model {
            convs,
            hidden,
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            head: LinearConfig::new(features, self.classes).init(device),
        }
    }
}

/// An image classifier: `[batch, channels, height, width]` in, class logits out.
#[derive(Module, Debug)]
pub struct Model {
    convs: Vec<Conv2d>,
    hidden: Vec<Linear>,
    pool: AdaptiveAvgPool2d,
    head: Linear,
}

impl Model {
    /// Class logits, `[batch, classes]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let features: Tensor<2> = if self.convs.is_empty() {
            let mut x: Tensor<2> = images.flatten(1, 3);
            for layer in &self.hidden {
                x = relu(layer.forward(x));
            }
            x
        } else {
            let mut x = images;
            for conv in &self.convs {
                x = relu(conv.forward(x));
            }
            self.pool.forward(x).flatten(1, 3)
        };
        self.head.forward(features)
    }
}
