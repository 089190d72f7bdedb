//! The models, described by a JSON config: a small CNN (the default), an MLP, and the
//! benchmark's reference CNN.
//!
//! The default CNN downsamples with strided 3x3 convolutions instead of max-pooling (Burn's flex
//! max-pool is slow on CPU) and ends with a global average pool and a linear head. The reference
//! CNN is the layout Keras tutorials write (unpadded 3x3 convolutions, each followed by a 2x2
//! max-pool, then dense layers on the flattened features); `shardline bench train` measures it
//! beside TensorFlow.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
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
    /// Unpadded 3x3 convolutions each followed by a 2x2 max-pool, then dense layers: the
    /// benchmark's reference layout.
    Reference,
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
    /// CNN: output channels of each stride-2 convolution; MLP: width of each hidden layer;
    /// reference: output channels of each convolution + max-pool stage.
    pub widths: Vec<usize>,
    /// Reference: widths of the dense layers between the flattened features and the head.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dense: Vec<usize>,
}

impl ModelConfig {
    /// The default CNN for an input and a number of classes.
    pub fn cnn(input: [usize; 3], classes: usize) -> ModelConfig {
        ModelConfig {
            kind: Kind::Cnn,
            input,
            classes,
            widths: vec![16, 32, 64],
            dense: Vec::new(),
        }
    }

    /// An MLP with one hidden layer of 128.
    pub fn mlp(input: [usize; 3], classes: usize) -> ModelConfig {
        ModelConfig {
            kind: Kind::Mlp,
            input,
            classes,
            widths: vec![128],
            dense: Vec::new(),
        }
    }

    /// The benchmark's reference CNN: conv3x3·32 → maxpool2 → conv3x3·64 → maxpool2 → dense 128.
    pub fn reference(input: [usize; 3], classes: usize) -> ModelConfig {
        ModelConfig {
            kind: Kind::Reference,
            input,
            classes,
            widths: vec![32, 64],
            dense: vec![128],
        }
    }

    /// Height and width after each unpadded 3x3 convolution and 2x2 max-pool of the reference
    /// CNN, or `None` when the input is too small for them.
    fn reference_features(&self) -> Option<(usize, usize)> {
        let [_, mut h, mut w] = self.input;
        for _ in &self.widths {
            if h < 4 || w < 4 {
                return None;
            }
            (h, w) = ((h - 2) / 2, (w - 2) / 2);
        }
        Some((h, w))
    }

    /// Checks that the config describes a model that fits its input.
    pub fn validate(&self) -> Result<(), String> {
        if self.classes < 2 {
            return Err(format!(
                "a classifier needs at least 2 classes, not {}",
                self.classes
            ));
        }
        if self.widths.is_empty() || self.widths.contains(&0) || self.dense.contains(&0) {
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
                    "a CNN with {halvings} stride-2 convolutions needs inputs of at least {0}x{0}, not {h}x{w}; use fewer widths, or process the images at a larger size",
                    1 << halvings
                ));
            }
        }
        if self.kind == Kind::Reference && self.reference_features().is_none() {
            return Err(format!(
                "the reference CNN's {} convolution + max-pool stages need a larger input than {h}x{w}; use fewer widths, or process the images at a larger size",
                self.widths.len()
            ));
        }
        if self.kind != Kind::Reference && !self.dense.is_empty() {
            return Err(
                "dense is for the reference CNN only; widths sets the layers of the others".into(),
            );
        }
        Ok(())
    }

    /// Builds the model with freshly initialised weights.
    pub fn init(&self, device: &Device) -> Model {
        let mut convs = Vec::new();
        let mut hidden = Vec::new();
        let mut maxpool = None;
        let features = match self.kind {
            Kind::Reference => {
                let mut channels = self.input[0];
                for &width in &self.widths {
                    convs.push(Conv2dConfig::new([channels, width], [3, 3]).init(device));
                    channels = width;
                }
                maxpool = Some(MaxPool2dConfig::new([2, 2]).init());
                let (h, w) = self.reference_features().unwrap_or((1, 1));
                let mut features = channels * h * w;
                for &width in &self.dense {
                    hidden.push(LinearConfig::new(features, width).init(device));
                    features = width;
                }
                features
            }
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
            maxpool,
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
    /// The reference CNN's 2x2 max-pool after each convolution.
    maxpool: Option<MaxPool2d>,
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
        } else if let Some(maxpool) = &self.maxpool {
            let mut x = images;
            for conv in &self.convs {
                x = maxpool.forward(relu(conv.forward(x)));
            }
            let mut x: Tensor<2> = x.flatten(1, 3);
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
