//! The preprocessing recipe: how an object becomes a tensor, and the normalisation training and
//! serving apply to it. Written beside the shards by the process step and copied into the model.

use serde::{Deserialize, Serialize};

/// Colour mode of the tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One channel, luma.
    Gray,
    /// Three channels, red green blue.
    Rgb,
}

impl Mode {
    /// Channels per pixel.
    pub fn channels(self) -> usize {
        match self {
            Mode::Gray => 1,
            Mode::Rgb => 3,
        }
    }
}

/// The resize filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    /// Nearest neighbour.
    Nearest,
    /// Bilinear (the default).
    Bilinear,
    /// Lanczos, 3 lobes.
    Lanczos3,
}

/// A deterministic augmentation, seeded by the object's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Augment {
    /// Mirror left-right with probability 1/2.
    Flip,
    /// Crop a random window of 80–100% of each side before resizing.
    Crop,
}

/// Everything that decides how an object becomes a tensor, plus the normalisation that training
/// and serving apply to it: `x = (value - mean[c]) / std[c]` per channel, on values in 0..=255.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// Output width in pixels.
    pub width: u32,
    /// Output height in pixels.
    pub height: u32,
    /// Colour mode.
    pub mode: Mode,
    /// Resize filter.
    pub filter: Filter,
    /// Augmentations, applied in order.
    pub augment: Vec<Augment>,
    /// Tensor layout: height, width, channels.
    pub layout: String,
    /// Element type.
    pub dtype: String,
    /// Per-channel mean of the training tensors (filled in when processing ends).
    pub mean: Vec<f64>,
    /// Per-channel standard deviation of the training tensors.
    pub std: Vec<f64>,
    /// Largest accepted image, in pixels, checked from the header before decoding.
    pub max_pixels: u64,
    /// JPEGs at least twice the size the resize needs are decoded at 1/2, 1/4 or 1/8 scale in the
    /// DCT domain before resizing (as Pillow's `draft()` does). Recipes written before this field
    /// existed read as `false`: their models keep decoding at full size.
    #[serde(default)]
    pub jpeg_scaling: bool,
}

impl Recipe {
    /// A recipe with the given geometry and defaults for the rest.
    pub fn new(width: u32, height: u32, mode: Mode) -> Recipe {
        Recipe {
            width,
            height,
            mode,
            filter: Filter::Bilinear,
            augment: Vec::new(),
            layout: "HWC".into(),
            dtype: "uint8".into(),
            mean: vec![127.5; mode.channels()],
            std: vec![127.5; mode.channels()],
            max_pixels: 64 * 1024 * 1024,
            jpeg_scaling: true,
        }
    }

    /// The tensor shape, `[height, width, channels]`.
    pub fn shape(&self) -> [usize; 3] {
        [
            self.height as usize,
            self.width as usize,
            self.mode.channels(),
        ]
    }
}
