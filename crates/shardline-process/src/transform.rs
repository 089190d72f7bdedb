//! The built-in image processor: bounded decode, colour mode, deterministic augmentation and
//! resize to a uint8 tensor. The [`Recipe`] that describes it is written beside the shards and
//! travels into the model, so training and serving preprocess exactly alike.

use std::io::Cursor;

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{ImageReader, Limits};
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

/// Why one object could not be turned into a tensor. It is quarantined, not fatal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// Not an image format we read.
    #[error("not a JPEG or PNG image")]
    UnknownFormat,
    /// The header declares an image over the limit.
    #[error("image of {width}x{height} exceeds the limit of {max_pixels} pixels")]
    TooLarge {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The limit.
        max_pixels: u64,
    },
    /// The decoder failed (corrupt or truncated data).
    #[error("cannot decode: {0}")]
    Decode(String),
}

/// Per-key randomness for augmentation: the same key and seed always augment alike.
struct KeyRng(shardline_lineage::SplitMix64);

impl KeyRng {
    fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Turns encoded bytes into a `[height, width, channels]` uint8 tensor, reusing `resizer`.
pub fn process(
    bytes: &[u8],
    key: &str,
    seed: u64,
    recipe: &Recipe,
    resizer: &mut Resizer,
) -> Result<Vec<u8>, Reject> {
    let format = match image::guess_format(bytes) {
        Ok(format @ (image::ImageFormat::Jpeg | image::ImageFormat::Png)) => format,
        _ => return Err(Reject::UnknownFormat),
    };
    let reader = ImageReader::with_format(Cursor::new(bytes), format);
    // The header alone says how large the image is: refuse decompression bombs before decoding.
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| Reject::Decode(e.to_string()))?;
    if u64::from(width) * u64::from(height) > recipe.max_pixels || width == 0 || height == 0 {
        return Err(Reject::TooLarge {
            width,
            height,
            max_pixels: recipe.max_pixels,
        });
    }
    let mut reader = reader;
    let mut limits = Limits::default();
    limits.max_alloc = Some(recipe.max_pixels * 8);
    reader.limits(limits);
    let decoded = reader.decode().map_err(|e| Reject::Decode(e.to_string()))?;
    let (pixels, pixel_type) = match recipe.mode {
        Mode::Gray => (decoded.into_luma8().into_raw(), PixelType::U8),
        Mode::Rgb => (decoded.into_rgb8().into_raw(), PixelType::U8x3),
    };
    let source = Image::from_vec_u8(width, height, pixels, pixel_type)
        .map_err(|e| Reject::Decode(e.to_string()))?;

    let mut rng = KeyRng(shardline_lineage::SplitMix64(
        xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), seed),
    ));
    let algorithm = match recipe.filter {
        Filter::Nearest => ResizeAlg::Nearest,
        Filter::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
        Filter::Lanczos3 => ResizeAlg::Convolution(FilterType::Lanczos3),
    };
    let mut options = ResizeOptions::new().resize_alg(algorithm);
    let mut flip = false;
    for augment in &recipe.augment {
        match augment {
            Augment::Crop => {
                let (w, h) = (f64::from(width), f64::from(height));
                let (cw, ch) = (w * (0.8 + 0.2 * rng.unit()), h * (0.8 + 0.2 * rng.unit()));
                options = options.crop((w - cw) * rng.unit(), (h - ch) * rng.unit(), cw, ch);
            }
            Augment::Flip => flip = rng.unit() < 0.5,
        }
    }
    let mut target = Image::new(recipe.width, recipe.height, pixel_type);
    resizer
        .resize(&source, &mut target, &options)
        .map_err(|e| Reject::Decode(e.to_string()))?;
    let mut tensor = target.into_vec();
    if flip {
        let row = recipe.width as usize * recipe.mode.channels();
        let c = recipe.mode.channels();
        for line in tensor.chunks_exact_mut(row) {
            let pixels = line.len() / c;
            for x in 0..pixels / 2 {
                for k in 0..c {
                    line.swap(x * c + k, (pixels - 1 - x) * c + k);
                }
            }
        }
    }
    Ok(tensor)
}

/// Encodes a uint8 tensor as a NumPy `.npy` file (format version 1.0).
pub fn npy(tensor: &[u8], shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + tensor.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(tensor);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 3) as u8, (y * 5) as u8, 90])
        });
        let mut out = Cursor::new(Vec::new());
        image
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .expect("encode");
        out.into_inner()
    }

    #[test]
    fn resizes_to_the_recipe_shape() {
        let mut resizer = Resizer::new();
        let rgb = Recipe::new(32, 24, Mode::Rgb);
        let tensor = process(&jpeg(100, 60), "a/1.jpg", 0, &rgb, &mut resizer).expect("tensor");
        assert_eq!(tensor.len(), 32 * 24 * 3);
        let gray = Recipe::new(16, 16, Mode::Gray);
        assert_eq!(
            process(&jpeg(40, 40), "a/1.jpg", 0, &gray, &mut resizer)
                .expect("tensor")
                .len(),
            256
        );
    }

    #[test]
    fn augmentation_is_deterministic_per_key() {
        let mut resizer = Resizer::new();
        let mut recipe = Recipe::new(16, 16, Mode::Rgb);
        recipe.augment = vec![Augment::Crop, Augment::Flip];
        let bytes = jpeg(64, 48);
        let a = process(&bytes, "k/1.jpg", 3, &recipe, &mut resizer).expect("a");
        assert_eq!(
            a,
            process(&bytes, "k/1.jpg", 3, &recipe, &mut resizer).expect("again")
        );
        let differs = (0..20).any(|i| {
            process(&bytes, &format!("k/{i}.jpg"), 3, &recipe, &mut resizer).expect("other") != a
        });
        assert!(differs);
    }

    #[test]
    fn rejects_bad_objects_without_decoding_bombs() {
        let mut resizer = Resizer::new();
        let recipe = Recipe::new(8, 8, Mode::Rgb);
        assert_eq!(
            process(b"hello", "x", 0, &recipe, &mut resizer),
            Err(Reject::UnknownFormat)
        );
        let bytes = jpeg(64, 64);
        let truncated = &bytes[..bytes.len() / 3];
        assert!(matches!(
            process(truncated, "x", 0, &recipe, &mut resizer),
            Err(Reject::Decode(_))
        ));
        // A PNG header that declares 100000 x 100000 pixels.
        let mut bomb = Vec::new();
        let mut encoder = png_header(100_000, 100_000);
        bomb.append(&mut encoder);
        let err = process(&bomb, "x", 0, &recipe, &mut resizer).expect_err("bomb");
        assert!(
            matches!(err, Reject::TooLarge { width: 100_000, .. }),
            "{err:?}"
        );
    }

    fn png_header(width: u32, height: u32) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = b"IHDR".to_vec();
        chunk.extend_from_slice(&width.to_be_bytes());
        chunk.extend_from_slice(&height.to_be_bytes());
        chunk.extend_from_slice(&[8, 2, 0, 0, 0]);
        out.extend_from_slice(&13u32.to_be_bytes());
        out.extend_from_slice(&chunk);
        out.extend_from_slice(&crc32(&chunk).to_be_bytes());
        // The PNG reader reads up to the first data chunk before it reports the dimensions.
        let idat = b"IDAT\x78\x9c\x03\x00\x00\x00\x00\x01";
        out.extend_from_slice(&((idat.len() - 4) as u32).to_be_bytes());
        out.extend_from_slice(idat);
        out.extend_from_slice(&crc32(idat).to_be_bytes());
        out
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn npy_header_is_aligned_and_describes_the_tensor() {
        let bytes = npy(&[1, 2, 3, 4, 5, 6], &[1, 2, 3]);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).expect("ascii");
        assert!(
            header.contains("'shape': (1, 2, 3)") && header.ends_with('\n'),
            "{header}"
        );
        assert_eq!(&bytes[10 + header_len..], &[1, 2, 3, 4, 5, 6]);
    }
}
