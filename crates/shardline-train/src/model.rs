//! The models, described by a JSON config: a batch-normalised CNN (the default), a plain strided
//! CNN, an MLP, and the benchmark's reference CNN.
//!
//! The default, `bncnn`, is a stack of blocks, each a 3x3 convolution of stride 2 (Burn's flex
//! max-pool is slow on CPU), batch normalisation and ReLU, then a dense layer
//! on the flattened features and the linear head. Batch normalisation is per worker (Horovod's
//! default); the running statistics are averaged over the workers at each epoch's end. The
//! strided `cnn` (no normalisation, a global average pool and a linear head) was the default
//! before it; it is kept for its speed and for models trained with it. The reference
//! CNN is the layout Keras tutorials write (unpadded 3x3 convolutions, each followed by a 2x2
//! max-pool, then dense layers on the flattened features); `shardline bench train` measures it
//! beside TensorFlow.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Which architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Blocks of 3x3 convolution (stride 2), batch norm and ReLU; dense layers
    /// on the flattened features; linear head. The default.
    Bncnn,
    /// Strided 3x3 convolutions, global average pool, linear head.
    Cnn,
    /// Fully connected layers on the flattened image.
    Mlp,
    /// Unpadded 3x3 convolutions each followed by a 2x2 max-pool, then dense layers: the
    /// benchmark's reference layout.
    Reference,
    /// ResNet-18 in its CIFAR layout: a 3x3 stem, four stages of two residual blocks (the
    /// stages after the first halve the size), global average pool, linear head; batch norm
    /// after every convolution.
    Resnet18,
}

/// The most weights a model may have: 2^30 (4 GiB as f32, before gradients and optimiser state).
pub const MAX_WEIGHTS: u128 = 1 << 30;
/// The most values a model's first layer may produce per image: 2^28 (1 GiB as f32).
pub const MAX_ACTIVATIONS: u128 = 1 << 28;

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
    /// Reference and bncnn: widths of the dense layers between the flattened features and the
    /// head.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dense: Vec<usize>,
}

impl ModelConfig {
    /// How its weights start: the reference CNN as Keras's layers do (Glorot-uniform, which the
    /// benchmark's Keras peer uses), the others as ReLU networks do (He-uniform).
    pub fn init_scheme(&self) -> crate::sync::Init {
        match self.kind {
            Kind::Reference => crate::sync::Init::GlorotUniform,
            _ => crate::sync::Init::HeUniform,
        }
    }

    /// The default model for an input and a number of classes: the batch-normalised CNN.
    pub fn bncnn(input: [usize; 3], classes: usize) -> ModelConfig {
        ModelConfig {
            kind: Kind::Bncnn,
            input,
            classes,
            widths: vec![16, 32, 64],
            dense: vec![128],
        }
    }

    /// The strided CNN for an input and a number of classes.
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

    /// ResNet-18 for CIFAR-sized inputs: stem and stage widths 64, 128, 256, 512.
    pub fn resnet18(input: [usize; 3], classes: usize) -> ModelConfig {
        ModelConfig {
            kind: Kind::Resnet18,
            input,
            classes,
            widths: vec![64, 128, 256, 512],
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
        if matches!(self.kind, Kind::Cnn | Kind::Bncnn | Kind::Resnet18) {
            let halvings = match self.kind {
                Kind::Resnet18 => self.widths.len() as u32 - 1,
                _ => self.widths.len() as u32,
            };
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
        if !matches!(self.kind, Kind::Reference | Kind::Bncnn) && !self.dense.is_empty() {
            return Err(
                "dense is for the reference CNN and bncnn only; widths sets the layers of the others".into(),
            );
        }
        // Absurd sizes are refused here, with the figures, rather than aborting in an allocation.
        match self.size() {
            Some((weights, _)) if weights > MAX_WEIGHTS => Err(format!(
                "this model would have about {weights} weights ({} GiB as f32), more than the {MAX_WEIGHTS} allowed; use smaller widths or a smaller input",
                (weights * 4) >> 30
            )),
            Some((_, activations)) if activations > MAX_ACTIVATIONS => Err(format!(
                "this model's first layer would produce {activations} values per image, more than the {MAX_ACTIVATIONS} allowed; use smaller widths or a smaller input"
            )),
            Some(_) => Ok(()),
            None => Err(format!(
                "this model's size overflows 128 bits (widths {:?}, dense {:?}, input {:?}); use smaller numbers",
                self.widths, self.dense, self.input
            )),
        }
    }

    /// About how many weights the model has, and how many values its largest early layer
    /// produces per image; `None` when counting overflows.
    pub fn size(&self) -> Option<(u128, u128)> {
        let n = |v: usize| v as u128;
        let conv =
            |cin: u128, cout: u128| cin.checked_mul(cout)?.checked_mul(9)?.checked_add(cout * 5);
        let dense = |mut features: u128, widths: &[usize]| -> Option<(u128, u128)> {
            let mut weights = 0u128;
            for &w in widths {
                weights = weights.checked_add(features.checked_mul(n(w))?.checked_add(n(w))?)?;
                features = n(w);
            }
            Some((weights, features))
        };
        let [c, h, w] = self.input.map(n);
        let pixels = h.checked_mul(w)?;
        let mut channels = c;
        let mut weights = 0u128;
        let first = n(self.widths.first().copied().unwrap_or(0));
        let (features, activations) = match self.kind {
            Kind::Mlp => {
                let (wts, features) = dense(c.checked_mul(pixels)?, &self.widths)?;
                weights = wts;
                (features, first)
            }
            Kind::Resnet18 => {
                weights = conv(c, first)?;
                channels = first;
                for &width in &self.widths {
                    let width = n(width);
                    let block = conv(channels, width)?.checked_add(conv(width, width)?)?;
                    weights = weights
                        .checked_add(block.checked_add(conv(width, width)?.checked_mul(2)?)?)?;
                    channels = width;
                }
                (channels, first.checked_mul(pixels)?)
            }
            Kind::Bncnn | Kind::Cnn | Kind::Reference => {
                for &width in &self.widths {
                    weights = weights.checked_add(conv(channels, n(width))?)?;
                    channels = n(width);
                }
                let flat = match self.kind {
                    Kind::Cnn => channels,
                    Kind::Bncnn => {
                        let (h, w) = self.strided_features();
                        channels.checked_mul(n(h))?.checked_mul(n(w))?
                    }
                    _ => {
                        let (h, w) = self.reference_features().unwrap_or((1, 1));
                        channels.checked_mul(n(h))?.checked_mul(n(w))?
                    }
                };
                let (wts, features) = dense(flat, &self.dense)?;
                weights = weights.checked_add(wts)?;
                (features, first.checked_mul(pixels)?)
            }
        };
        let head = features
            .checked_mul(n(self.classes))?
            .checked_add(n(self.classes))?;
        Some((weights.checked_add(head)?, activations))
    }

    /// Multiply-adds of one image's forward pass through the convolutions and dense layers (the
    /// GEMM work; pooling, batch norm and activations are left out). Training costs about three
    /// times this: the forward pass, the input gradient and the weight gradient.
    pub fn forward_macs(&self) -> u128 {
        let n = |v: usize| v as u128;
        let [c, mut h, mut w] = self.input;
        let dense = |mut features: usize, widths: &[usize], classes: usize| {
            let mut macs = 0u128;
            for &width in widths.iter().chain(std::iter::once(&classes)) {
                macs += n(features) * n(width);
                features = width;
            }
            macs
        };
        // A 3x3 convolution (stride, padding 1 unless unpadded) from `cin` to `cout` channels at
        // the current size; updates the size.
        let conv = |h: &mut usize,
                    w: &mut usize,
                    cin: usize,
                    cout: usize,
                    k: usize,
                    stride: usize,
                    padded: bool| {
            let pad = if padded { k / 2 } else { 0 };
            *h = (*h + 2 * pad - k) / stride + 1;
            *w = (*w + 2 * pad - k) / stride + 1;
            n(*h) * n(*w) * n(cin) * n(cout) * n(k * k)
        };
        match self.kind {
            Kind::Mlp => dense(c * h * w, &self.widths, self.classes),
            Kind::Reference | Kind::Bncnn | Kind::Cnn => {
                let mut macs = 0u128;
                let mut channels = c;
                for &width in &self.widths {
                    macs += match self.kind {
                        Kind::Reference => {
                            let m = conv(&mut h, &mut w, channels, width, 3, 1, false);
                            (h, w) = (h / 2, w / 2);
                            m
                        }
                        _ => conv(&mut h, &mut w, channels, width, 3, 2, true),
                    };
                    channels = width;
                }
                macs + match self.kind {
                    Kind::Cnn => dense(channels, &[], self.classes),
                    _ => dense(channels * h * w, &self.dense, self.classes),
                }
            }
            Kind::Resnet18 => {
                let mut channels = self.widths[0];
                let mut macs = conv(&mut h, &mut w, c, channels, 3, 1, true);
                for (stage, &width) in self.widths.iter().enumerate() {
                    for block in 0..2 {
                        let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                        let (mut h1, mut w1) = (h, w);
                        if stride != 1 || channels != width {
                            let (mut hd, mut wd) = (h, w);
                            macs += conv(&mut hd, &mut wd, channels, width, 1, stride, false);
                        }
                        macs += conv(&mut h1, &mut w1, channels, width, 3, stride, true);
                        macs += conv(&mut h1, &mut w1, width, width, 3, 1, true);
                        (h, w, channels) = (h1, w1, width);
                    }
                }
                macs + dense(channels, &[], self.classes)
            }
        }
    }

    /// Height and width of bncnn's last block: each block halves them (rounding up, as a padded
    /// stride-2 convolution does).
    fn strided_features(&self) -> (usize, usize) {
        let [_, mut h, mut w] = self.input;
        for _ in &self.widths {
            (h, w) = (h.div_ceil(2), w.div_ceil(2));
        }
        (h, w)
    }

    /// Builds the model with freshly initialised weights.
    pub fn init(&self, device: &Device) -> Model {
        let mut convs = Vec::new();
        let mut norms = Vec::new();
        let mut hidden = Vec::new();
        let mut maxpool = None;
        let mut blocks = Vec::new();
        let features = match self.kind {
            Kind::Bncnn => {
                let mut channels = self.input[0];
                for &width in &self.widths {
                    convs.push(conv3x3(channels, width, 2, device));
                    norms.push(BatchNormConfig::new(width).init(device));
                    channels = width;
                }
                let (h, w) = self.strided_features();
                dense_layers(channels * h * w, &self.dense, &mut hidden, device)
            }
            Kind::Reference => {
                let mut channels = self.input[0];
                for &width in &self.widths {
                    convs.push(Conv2dConfig::new([channels, width], [3, 3]).init(device));
                    channels = width;
                }
                maxpool = Some(MaxPool2dConfig::new([2, 2]).init());
                let (h, w) = self.reference_features().unwrap_or((1, 1));
                dense_layers(channels * h * w, &self.dense, &mut hidden, device)
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
            Kind::Resnet18 => {
                convs.push(conv3x3(self.input[0], self.widths[0], 1, device));
                norms.push(BatchNormConfig::new(self.widths[0]).init(device));
                let mut channels = self.widths[0];
                for (stage, &width) in self.widths.iter().enumerate() {
                    for block in 0..2 {
                        let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                        blocks.push(Residual::new(channels, width, stride, device));
                        channels = width;
                    }
                }
                channels
            }
        };
        Model {
            convs,
            norms,
            blocks,
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
    /// bncnn's batch norm after each convolution; ResNet's after its stem.
    norms: Vec<BatchNorm>,
    /// ResNet's residual blocks.
    blocks: Vec<Residual>,
    /// The reference CNN's 2x2 max-pool after each convolution.
    maxpool: Option<MaxPool2d>,
    hidden: Vec<Linear>,
    pool: AdaptiveAvgPool2d,
    head: Linear,
}

impl Model {
    /// Class logits, `[batch, classes]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let features: Tensor<2> = if !self.blocks.is_empty() {
            let mut x = relu(self.norms[0].forward(conv(&self.convs[0], images, false)));
            for block in &self.blocks {
                x = block.forward(x);
            }
            self.pool.forward(x).flatten(1, 3)
        } else if self.convs.is_empty() {
            let mut x: Tensor<2> = images.flatten(1, 3);
            for layer in &self.hidden {
                x = relu(crate::kernels::linear(layer, x));
            }
            x
        } else if !self.norms.is_empty() {
            let mut x = images;
            for (layer, norm) in self.convs.iter().zip(&self.norms) {
                x = relu(norm.forward(conv(layer, x, false)));
            }
            let mut x: Tensor<2> = x.flatten(1, 3);
            for layer in &self.hidden {
                x = relu(crate::kernels::linear(layer, x));
            }
            x
        } else if let Some(maxpool) = &self.maxpool {
            let mut x = images;
            for layer in &self.convs {
                x = crate::kernels::max_pool2d(maxpool, conv(layer, x, true));
            }
            let mut x: Tensor<2> = x.flatten(1, 3);
            for layer in &self.hidden {
                x = relu(crate::kernels::linear(layer, x));
            }
            x
        } else {
            let mut x = images;
            for layer in &self.convs {
                x = conv(layer, x, true);
            }
            self.pool.forward(x).flatten(1, 3)
        };
        crate::kernels::linear(&self.head, features)
    }
}

/// `layer`'s options as `Conv2d::forward` works them out; `None` for "same" padding (not in the
/// zoo), which Burn's own layer works out.
fn conv_options(layer: &Conv2d) -> Option<ConvOptions<2>> {
    let padding = match layer.padding {
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
        PaddingConfig2d::Same => return None,
    };
    Some(ConvOptions::new_with_padding(
        layer.stride,
        padding,
        layer.dilation,
        layer.groups,
    ))
}

/// `layer` on `x`, then ReLU when `then_relu`: our kernels where they apply
/// ([`crate::kernels::conv2d`]; ReLU fused into it at inference,
/// [`crate::kernels::conv2d_relu`]), Burn's otherwise.
fn conv(layer: &Conv2d, x: Tensor<4>, then_relu: bool) -> Tensor<4> {
    let Some(options) = conv_options(layer) else {
        let y = layer.forward(x);
        return if then_relu { relu(y) } else { y };
    };
    let (weight, bias) = (layer.weight.val(), layer.bias.as_ref().map(|b| b.val()));
    if then_relu {
        crate::kernels::conv2d_relu(x, weight, bias, options)
    } else {
        crate::kernels::conv2d(x, weight, bias, options)
    }
}

/// Dense layers of `widths` after `features` inputs, pushed onto `hidden`; the features they end
/// with.
fn dense_layers(
    mut features: usize,
    widths: &[usize],
    hidden: &mut Vec<Linear>,
    device: &Device,
) -> usize {
    for &width in widths {
        hidden.push(LinearConfig::new(features, width).init(device));
        features = width;
    }
    features
}

/// A padded 3x3 convolution without bias (a batch norm follows it).
fn conv3x3(from: usize, to: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([from, to], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(device)
}

/// ResNet's basic block: two 3x3 convolutions with batch norm, added to the input (through a
/// strided 1x1 convolution and batch norm where the size or width changes), then ReLU.
#[derive(Module, Debug)]
pub struct Residual {
    conv1: Conv2d,
    norm1: BatchNorm,
    conv2: Conv2d,
    norm2: BatchNorm,
    down: Option<Conv2d>,
    down_norm: Option<BatchNorm>,
}

impl Residual {
    fn new(from: usize, to: usize, stride: usize, device: &Device) -> Residual {
        let project = stride != 1 || from != to;
        Residual {
            conv1: conv3x3(from, to, stride, device),
            norm1: BatchNormConfig::new(to).init(device),
            conv2: conv3x3(to, to, 1, device),
            norm2: BatchNormConfig::new(to).init(device),
            down: project.then(|| {
                Conv2dConfig::new([from, to], [1, 1])
                    .with_stride([stride, stride])
                    .with_bias(false)
                    .init(device)
            }),
            down_norm: project.then(|| BatchNormConfig::new(to).init(device)),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = relu(self.norm1.forward(conv(&self.conv1, x.clone(), false)));
        let y = self.norm2.forward(conv(&self.conv2, y, false));
        let shortcut = match (&self.down, &self.down_norm) {
            (Some(down), Some(norm)) => norm.forward(conv(down, x, false)),
            _ => x,
        };
        relu(y + shortcut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_sizes_are_refused_with_the_figures() {
        let (weights, _) = ModelConfig::resnet18([3, 32, 32], 10).size().expect("size");
        assert!((10_000_000..12_500_000).contains(&weights), "{weights}");
        let mut huge = ModelConfig::mlp([3, 64, 64], 10);
        huge.widths = vec![1 << 20, 1 << 20];
        let e = huge.validate().expect_err("2^40 weights");
        assert!(e.contains("weights") && e.contains("smaller widths"), "{e}");
        let mut wide = ModelConfig::cnn([3, 8192, 8192], 10);
        wide.widths = vec![64];
        assert!(
            wide.validate()
                .expect_err("activations")
                .contains("per image")
        );
        let mut overflow = ModelConfig::mlp([3, 8, 8], 10);
        overflow.widths = vec![usize::MAX, usize::MAX, usize::MAX];
        assert!(
            overflow
                .validate()
                .expect_err("overflow")
                .contains("overflows")
        );
        for config in [
            ModelConfig::bncnn([1, 28, 28], 10),
            ModelConfig::cnn([3, 32, 32], 10),
            ModelConfig::reference([1, 28, 28], 10),
            ModelConfig::resnet18([3, 32, 32], 10),
        ] {
            config.validate().expect("a default model is allowed");
        }
    }

    #[test]
    fn every_kind_builds_and_gives_logits_of_its_classes() {
        let device = crate::device::by_name("cpu").expect("cpu");
        let narrow = ModelConfig {
            widths: vec![4, 8, 8, 8],
            ..ModelConfig::resnet18([3, 32, 32], 10)
        };
        for config in [
            ModelConfig::bncnn([3, 32, 32], 10),
            ModelConfig::bncnn([1, 8, 8], 10),
            ModelConfig::cnn([3, 32, 32], 10),
            ModelConfig::mlp([3, 32, 32], 10),
            ModelConfig::reference([3, 32, 32], 10),
            narrow,
        ] {
            config.validate().expect("valid");
            let model = config.init(&device);
            let images = Tensor::<4>::zeros(
                [2, config.input[0], config.input[1], config.input[2]],
                &device,
            );
            assert_eq!(model.forward(images).dims(), [2, 10], "{config:?}");
        }
        // ResNet-18's layout: a stem, 8 blocks, 3 of them with a projection shortcut.
        let resnet = ModelConfig::resnet18([3, 32, 32], 10).init(&device);
        assert_eq!(resnet.blocks.len(), 8);
        assert_eq!(resnet.blocks.iter().filter(|b| b.down.is_some()).count(), 3);
        // 11.2 million parameters, as in the CIFAR ResNet-18 (stem 3x3, no max-pool).
        let count: usize = crate::sync::parameters(&resnet)
            .iter()
            .map(|(_, v)| v.len())
            .sum();
        assert!(
            (11_150_000..11_200_000).contains(&count),
            "{count} parameters"
        );
    }

    #[test]
    fn forward_work_is_counted_layer_by_layer() {
        // conv 3->32 at 30x30, conv 32->64 at 13x13, dense 2304->128->10.
        let reference = ModelConfig::reference([3, 32, 32], 10);
        let expected = 30 * 30 * 3 * 32 * 9 + 13 * 13 * 32 * 64 * 9 + 6 * 6 * 64 * 128 + 128 * 10;
        assert_eq!(reference.forward_macs(), expected);
        // The CIFAR ResNet-18 costs about 0.56 G multiply-adds per 32x32 image.
        let resnet = ModelConfig::resnet18([3, 32, 32], 10).forward_macs();
        assert!((540_000_000..580_000_000).contains(&resnet), "{resnet}");
    }

    #[test]
    fn inputs_too_small_for_the_layout_are_refused_by_name() {
        let err = ModelConfig::bncnn([1, 4, 4], 10).validate().unwrap_err();
        assert!(err.contains("at least 8x8"), "{err}");
        let err = ModelConfig {
            dense: vec![10],
            ..ModelConfig::resnet18([3, 32, 32], 10)
        }
        .validate()
        .unwrap_err();
        assert!(err.contains("dense"), "{err}");
    }
}
