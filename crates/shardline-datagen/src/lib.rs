//! Deterministic synthetic image-classification datasets.
//!
//! `shapes` draws one filled shape per image (the class), with a random colour, size, position,
//! rotation and background noise, so that a model has something to learn and nothing trivial to
//! latch onto. The same seed gives the same bytes on every machine: the only randomness is a
//! SplitMix64 stream seeded from XXH3 of (seed, class, index).
//!
//! Objects are laid out as `<out>/<class_label>/<index>.<ext>`, the layout the manifest step reads.

use std::io::Cursor;

use bytes::Bytes;
use futures::stream::{StreamExt, TryStreamExt};
use image::{ImageFormat, RgbImage};
use shardline_store::Store;

/// The shapes, in class order. A dataset of K classes uses the first K.
pub const SHAPES: [&str; 10] = [
    "circle", "square", "triangle", "diamond", "cross", "plus", "ring", "star", "hexagon", "bar",
];

/// The encoded image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Baseline JPEG, quality 90.
    Jpeg,
    /// Lossless PNG.
    Png,
}

impl Format {
    /// The file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Jpeg => "jpg",
            Format::Png => "png",
        }
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct ShapesConfig {
    /// Number of classes, 1 to 10.
    pub classes: usize,
    /// Images per class.
    pub per_class: usize,
    /// Width in pixels, 8 to 4096.
    pub size: u32,
    /// Height in pixels, 8 to 4096; `None` for square images.
    pub height: Option<u32>,
    /// Encoding.
    pub format: Format,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for ShapesConfig {
    /// Four classes of 100 square 64-pixel JPEGs, seed 0.
    fn default() -> ShapesConfig {
        ShapesConfig {
            classes: 4,
            per_class: 100,
            size: 64,
            height: None,
            format: Format::Jpeg,
            seed: 0,
        }
    }
}

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The settings are out of range.
    #[error("datagen: {0}")]
    BadConfig(String),
    /// Encoding failed.
    #[error("datagen: encoding {key} failed: {source}")]
    Encode {
        /// The object being written.
        key: String,
        /// The encoder's error.
        source: image::ImageError,
    },
    /// An encoder task died.
    #[error("datagen: an encoder task failed: {0}")]
    Task(String),
    /// The output holds data this dataset would overwrite or mix with.
    #[error("datagen: --out {out} {reason}; give an empty --out (or `--force` to write over it)")]
    OutputTaken {
        /// The output's URL.
        out: String,
        /// What it holds.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] shardline_store::Error),
}

impl ShapesConfig {
    /// Checks the settings, before any work.
    pub fn validate(&self) -> Result<(), Error> {
        if !(1..=SHAPES.len()).contains(&self.classes) {
            return Err(Error::BadConfig(format!(
                "`classes` {} is out of range; the shapes dataset has 1 to {} classes ({})",
                self.classes,
                SHAPES.len(),
                SHAPES.join(", ")
            )));
        }
        if self.per_class == 0 {
            return Err(Error::BadConfig("`per_class` must be at least 1".into()));
        }
        if !(8..=4096).contains(&self.size) || !(8..=4096).contains(&self.height()) {
            return Err(Error::BadConfig(format!(
                "`size` {} / `height` {} is out of range; use 8 to 4096 pixels",
                self.size,
                self.height()
            )));
        }
        Ok(())
    }

    /// The image height.
    pub fn height(&self) -> u32 {
        self.height.unwrap_or(self.size)
    }

    /// The key of one image.
    pub fn key(&self, class: usize, index: usize) -> String {
        format!("{}/{:06}.{}", SHAPES[class], index, self.format.extension())
    }
}

/// SplitMix64: tiny, fast and fully specified, so the stream is the same everywhere.
struct Rng(shardline_lineage::SplitMix64);

impl Rng {
    fn new(seed: u64, class: usize, index: usize) -> Rng {
        let mut bytes = [0u8; 24];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        bytes[8..16].copy_from_slice(&(class as u64).to_le_bytes());
        bytes[16..].copy_from_slice(&(index as u64).to_le_bytes());
        Rng(shardline_lineage::SplitMix64(xxhash_rust::xxh3::xxh3_64(
            &bytes,
        )))
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }
}

/// Whether the point (x, y), in the shape's own frame where the shape spans about [-1, 1], is
/// inside the shape of class `class`.
fn inside(class: usize, x: f32, y: f32) -> bool {
    let r = (x * x + y * y).sqrt();
    match SHAPES[class] {
        "circle" => r < 0.95,
        "square" => x.abs().max(y.abs()) < 0.75,
        "triangle" => y > -0.6 && x.abs() < 0.9 * (0.95 - y) / 1.55,
        "diamond" => x.abs() + y.abs() < 1.0,
        "cross" => {
            let (u, v) = (
                (x + y) * std::f32::consts::FRAC_1_SQRT_2,
                (x - y) * std::f32::consts::FRAC_1_SQRT_2,
            );
            (u.abs() < 0.22 && v.abs() < 0.95) || (v.abs() < 0.22 && u.abs() < 0.95)
        }
        "plus" => (x.abs() < 0.22 && y.abs() < 0.95) || (y.abs() < 0.22 && x.abs() < 0.95),
        "ring" => r < 0.95 && r > 0.6,
        "star" => {
            let theta = y.atan2(x);
            r < 0.45 + 0.5 * (0.5 + 0.5 * (5.0 * theta).cos()).powf(2.0)
        }
        "hexagon" => {
            let (ax, ay) = (x.abs(), y.abs());
            ay < 0.82 && 0.866 * ax + 0.5 * ay < 0.82
        }
        _ => x.abs() < 0.95 && y.abs() < 0.3, // "bar"
    }
}

/// Draws image `index` of class `class`.
pub fn draw(config: &ShapesConfig, class: usize, index: usize) -> RgbImage {
    let (width, height) = (config.size, config.height());
    let size = width.min(height);
    let mut rng = Rng::new(config.seed, class, index);
    let background = [
        rng.range(0.0, 110.0),
        rng.range(0.0, 110.0),
        rng.range(0.0, 110.0),
    ];
    let foreground = [
        rng.range(140.0, 255.0),
        rng.range(140.0, 255.0),
        rng.range(140.0, 255.0),
    ];
    let scale = rng.range(0.25, 0.42) * size as f32;
    let cx = rng.range(scale, width as f32 - scale);
    let cy = rng.range(scale, height as f32 - scale);
    // Small rotations only: a square turned 45 degrees is a diamond, a plus is a cross.
    let angle = rng.range(-0.35, 0.35);
    let (sin, cos) = angle.sin_cos();
    let noise = rng.range(4.0, 24.0);
    let mut image = RgbImage::new(width, height);
    for (px, py, pixel) in image.enumerate_pixels_mut() {
        let dx = (px as f32 + 0.5 - cx) / scale;
        let dy = (py as f32 + 0.5 - cy) / scale;
        let (x, y) = (cos * dx + sin * dy, -sin * dx + cos * dy);
        let base = if inside(class, x, y) {
            foreground
        } else {
            background
        };
        for (channel, value) in pixel.0.iter_mut().zip(base) {
            let jitter = rng.range(-noise, noise);
            *channel = (value + jitter).clamp(0.0, 255.0) as u8;
        }
    }
    image
}

/// Draws and encodes image `index` of class `class`.
pub fn encode(config: &ShapesConfig, class: usize, index: usize) -> Result<Vec<u8>, Error> {
    let image = draw(config, class, index);
    let mut out = Cursor::new(Vec::new());
    let result = match config.format {
        Format::Png => image.write_to(&mut out, ImageFormat::Png),
        Format::Jpeg => {
            let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90);
            image.write_with_encoder(encoder)
        }
    };
    result.map_err(|source| Error::Encode {
        key: config.key(class, index),
        source,
    })?;
    Ok(out.into_inner())
}

/// Generates the dataset into `out`, calling `written` after each object. Objects are encoded on
/// all cores and uploaded concurrently; an object that already holds the same bytes is left alone.
pub async fn generate(
    out: &Store,
    config: &ShapesConfig,
    written: &(dyn Fn() + Send + Sync),
) -> Result<usize, Error> {
    config.validate()?;
    let jobs = (0..config.classes).flat_map(|c| (0..config.per_class).map(move |i| (c, i)));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    futures::stream::iter(jobs)
        .map(|(class, index)| async move {
            let job_config = config.clone();
            let bytes = tokio::task::spawn_blocking(move || encode(&job_config, class, index))
                .await
                .map_err(|e| Error::Task(e.to_string()))??;
            // Rewrite only what differs, so that a rerun leaves files (and their mtimes) alone.
            let key = config.key(class, index);
            if out.get_opt(&key).await?.as_deref() != Some(bytes.as_slice()) {
                out.put(&key, Bytes::from(bytes)).await?;
            }
            written();
            Ok::<_, Error>(())
        })
        .buffer_unordered(threads * 4)
        .try_collect::<()>()
        .await?;
    Ok(config.classes * config.per_class)
}

/// Refuses an `out` that holds anything but this dataset (or the part of it an interrupted run
/// wrote): another lake's objects, or this dataset's keys made with other settings. A rerun of
/// the same command is allowed (and writes nothing).
pub async fn check_out(out: &Store, config: &ShapesConfig) -> Result<(), Error> {
    config.validate()?;
    let existing = out.list_all("").await?;
    if existing.is_empty() {
        return Ok(());
    }
    let ours: std::collections::HashMap<String, (usize, usize)> = (0..config.classes)
        .flat_map(|c| (0..config.per_class).map(move |i| (c, i)))
        .map(|(c, i)| (config.key(c, i), (c, i)))
        .collect();
    let taken = |reason: String| Error::OutputTaken {
        out: out.uri(),
        reason,
    };
    let other: Vec<&str> = existing
        .iter()
        .map(|o| o.key.as_str())
        .filter(|k| !ours.contains_key(*k))
        .collect();
    if !other.is_empty() {
        return Err(taken(format!(
            "holds {} object(s) this dataset does not write (e.g. {})",
            other.len(),
            other[..other.len().min(3)].join(", ")
        )));
    }
    for object in &existing {
        let (class, index) = ours[&object.key];
        if out.get(&object.key).await?.as_ref() != encode(config, class, index)?.as_slice() {
            return Err(taken(format!(
                "holds {} made with other settings (another seed, size or format)",
                object.key
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(format: Format) -> ShapesConfig {
        ShapesConfig {
            classes: 10,
            per_class: 2,
            size: 32,
            height: None,
            format,
            seed: 7,
        }
    }

    #[test]
    fn the_same_seed_draws_the_same_bytes() {
        let c = config(Format::Png);
        assert_eq!(
            encode(&c, 3, 1).expect("png"),
            encode(&c, 3, 1).expect("png")
        );
        assert_ne!(
            encode(&c, 3, 1).expect("png"),
            encode(&c, 3, 0).expect("png")
        );
        let other = ShapesConfig {
            seed: 8,
            ..c.clone()
        };
        assert_ne!(
            encode(&c, 3, 1).expect("png"),
            encode(&other, 3, 1).expect("png")
        );
    }

    #[test]
    fn every_shape_covers_part_of_the_image() {
        let c = ShapesConfig {
            size: 64,
            height: None,
            ..config(Format::Png)
        };
        for (class, shape) in SHAPES.iter().enumerate() {
            let image = draw(&c, class, 0);
            let bright = image
                .pixels()
                .filter(|p| p.0.iter().map(|&v| u32::from(v)).sum::<u32>() > 3 * 125)
                .count();
            let share = bright as f32 / (64.0 * 64.0);
            assert!((0.02..0.6).contains(&share), "{shape}: {share}");
        }
    }

    #[test]
    fn jpeg_output_decodes() {
        let c = config(Format::Jpeg);
        let bytes = encode(&c, 0, 0).expect("jpeg");
        let decoded = image::load_from_memory(&bytes).expect("decode");
        assert_eq!((decoded.width(), decoded.height()), (32, 32));
    }

    #[test]
    fn rejects_out_of_range_settings() {
        let bad = ShapesConfig {
            classes: 11,
            ..config(Format::Png)
        };
        assert!(
            bad.validate()
                .expect_err("11 classes")
                .to_string()
                .contains("1 to 10")
        );
        let bad = ShapesConfig {
            size: 4,
            height: None,
            ..config(Format::Png)
        };
        assert!(bad.validate().is_err());
    }
}
