//! Shardline's image preprocessing (the built-in processor of the process step, and the endpoint's
//! input path): bounded decode, colour mode, deterministic augmentation and
//! resize to a uint8 tensor. The [`Recipe`] that describes it is written beside the shards and
//! travels into the model, so training and serving preprocess exactly alike.

use std::io::Cursor;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{ImageReader, Limits};
pub use shardline_contract::recipe::{Augment, Filter, Mode, Recipe};

mod jpeg;

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

/// Buffers reused from one object to the next: the resizer's and the decoded pixels.
#[derive(Default)]
pub struct Scratch {
    resizer: Resizer,
    pixels: Vec<u8>,
}

impl Scratch {
    /// Empty buffers; they grow to the largest image seen.
    pub fn new() -> Scratch {
        Scratch::default()
    }
}

/// Turns encoded bytes into a `[height, width, channels]` uint8 tensor, reusing `scratch`.
pub fn process(
    bytes: &[u8],
    key: &str,
    seed: u64,
    recipe: &Recipe,
    scratch: &mut Scratch,
) -> Result<Vec<u8>, Reject> {
    let pixel_type = match recipe.mode {
        Mode::Gray => PixelType::U8,
        Mode::Rgb => PixelType::U8x3,
    };
    let (width, height, (decoded_width, decoded_height)) =
        decode(bytes, recipe, &mut scratch.pixels)?;
    let source = ImageRef::new(decoded_width, decoded_height, &scratch.pixels, pixel_type)
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
                // Drawn on the stored size, applied to the decoded one: the same key crops the
                // same part of the picture whether or not the decoder scaled it.
                let (w, h) = (f64::from(width), f64::from(height));
                let (cw, ch) = (w * (0.8 + 0.2 * rng.unit()), h * (0.8 + 0.2 * rng.unit()));
                let (left, top) = ((w - cw) * rng.unit(), (h - ch) * rng.unit());
                let sx = f64::from(decoded_width) / w;
                let sy = f64::from(decoded_height) / h;
                options = options.crop(left * sx, top * sy, cw * sx, ch * sy);
            }
            Augment::Flip => flip = rng.unit() < 0.5,
        }
    }
    let mut target = Image::new(recipe.width, recipe.height, pixel_type);
    scratch
        .resizer
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

/// Decodes without resizing, into `scratch`, and returns the decoded size: the decoding part of
/// [`process`] alone (the benchmark's floor).
pub fn decode_only(
    bytes: &[u8],
    recipe: &Recipe,
    scratch: &mut Scratch,
) -> Result<(u32, u32), Reject> {
    decode(bytes, recipe, &mut scratch.pixels).map(|(_, _, decoded)| decoded)
}

/// Decodes into `pixels` in the recipe's colour mode. Returns the stored size and the size of
/// the decoded pixels (smaller when a JPEG was scaled in the DCT domain).
fn decode(
    bytes: &[u8],
    recipe: &Recipe,
    pixels: &mut Vec<u8>,
) -> Result<(u32, u32, (u32, u32)), Reject> {
    let format = match image::guess_format(bytes) {
        Ok(format @ (image::ImageFormat::Jpeg | image::ImageFormat::Png)) => format,
        _ => return Err(Reject::UnknownFormat),
    };
    if format == image::ImageFormat::Jpeg {
        // A crop keeps at least 80% of each side, so it needs 1/0.8 more before scaling.
        let crop = recipe.augment.contains(&Augment::Crop);
        let need = |side: u32| if crop { side.div_ceil(4) * 5 } else { side };
        let request = crate::jpeg::Request {
            gray: recipe.mode == Mode::Gray,
            max_pixels: recipe.max_pixels,
            at_least: recipe
                .jpeg_scaling
                .then(|| (need(recipe.width), need(recipe.height))),
        };
        if let Some(decoded) = crate::jpeg::decode(bytes, &request, pixels)? {
            return Ok((
                decoded.width,
                decoded.height,
                (decoded.out_width, decoded.out_height),
            ));
        }
        // CMYK and YCCK JPEGs: the image crate converts them.
    }
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
    *pixels = match recipe.mode {
        Mode::Gray => decoded.into_luma8().into_raw(),
        Mode::Rgb => decoded.into_rgb8().into_raw(),
    };
    Ok((width, height, (width, height)))
}

/// Per colour channel, the sum and the sum of squares of an interleaved (HWC) uint8 tensor with
/// 1 to 4 channels: what the recipe's mean and std are computed from.
pub fn channel_sums(tensor: &[u8], channels: usize) -> ([u64; 4], [u64; 4]) {
    assert!((1..=4).contains(&channels), "1 to 4 channels");
    // 48 lanes hold whole pixels of 1, 2, 3 or 4 channels; lane-wise sums in u32 vectorise, and
    // one block of at most 4096 rows of lanes (255^2 * 4096 < 2^32) cannot overflow them.
    const LANES: usize = 48;
    let (mut sum, mut sum_sq) = ([0u64; 4], [0u64; 4]);
    let body = tensor.len() / LANES * LANES;
    for block in tensor[..body].chunks(LANES * 4096) {
        let (mut lane_sum, mut lane_sq) = ([0u32; LANES], [0u32; LANES]);
        for row in block.chunks_exact(LANES) {
            for i in 0..LANES {
                let v = u32::from(row[i]);
                lane_sum[i] += v;
                lane_sq[i] += v * v;
            }
        }
        for i in 0..LANES {
            sum[i % channels] += u64::from(lane_sum[i]);
            sum_sq[i % channels] += u64::from(lane_sq[i]);
        }
    }
    for (i, &value) in tensor[body..].iter().enumerate() {
        let v = u64::from(value);
        sum[(body + i) % channels] += v;
        sum_sq[(body + i) % channels] += v * v;
    }
    (sum, sum_sq)
}

pub use shardline_contract::shards::npy;

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        encode(&image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 3) as u8, (y * 5) as u8, 90])
        }))
    }

    #[test]
    fn resizes_to_the_recipe_shape() {
        let mut scratch = Scratch::new();
        let rgb = Recipe::new(32, 24, Mode::Rgb);
        let tensor = process(&jpeg(100, 60), "a/1.jpg", 0, &rgb, &mut scratch).expect("tensor");
        assert_eq!(tensor.len(), 32 * 24 * 3);
        let gray = Recipe::new(16, 16, Mode::Gray);
        assert_eq!(
            process(&jpeg(40, 40), "a/1.jpg", 0, &gray, &mut scratch)
                .expect("tensor")
                .len(),
            256
        );
    }

    /// A smooth colour gradient, so that decoding at another scale changes little.
    fn gradient(width: u32, height: u32) -> image::RgbImage {
        image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([
                (x * 255 / width) as u8,
                (y * 255 / height) as u8,
                ((x + y) * 127 / (width + height)) as u8,
            ])
        })
    }

    fn encode(image: &image::RgbImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .expect("encode");
        out.into_inner()
    }

    #[test]
    fn dct_scaling_matches_a_full_decode_closely() {
        let bytes = encode(&gradient(1600, 1200));
        let mut scratch = Scratch::new();
        let mut scaled = Recipe::new(64, 48, Mode::Rgb);
        let mut full = scaled.clone();
        full.jpeg_scaling = false;
        let a = process(&bytes, "k", 0, &scaled, &mut scratch).expect("scaled");
        let b = process(&bytes, "k", 0, &full, &mut scratch).expect("full");
        assert_eq!(a.len(), b.len());
        let worst = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max();
        assert!(worst <= Some(6), "largest difference {worst:?}");
        // The crop augmentation picks the same part of the picture at either scale.
        scaled.augment = vec![Augment::Crop];
        full.augment = vec![Augment::Crop];
        let a = process(&bytes, "k/7", 0, &scaled, &mut scratch).expect("scaled crop");
        let b = process(&bytes, "k/7", 0, &full, &mut scratch).expect("full crop");
        let worst = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max();
        assert!(worst <= Some(6), "largest difference {worst:?}");
        // Recipes written before the field existed decode at full size.
        let old: Recipe = serde_json::from_str(
            &serde_json::to_string(&full)
                .expect("json")
                .replace(",\"jpeg_scaling\":false", ""),
        )
        .expect("old recipe");
        assert!(!old.jpeg_scaling);
    }

    #[test]
    fn truncated_and_corrupt_jpegs_are_rejected_with_the_decoders_reason() {
        let mut scratch = Scratch::new();
        let recipe = Recipe::new(16, 16, Mode::Rgb);
        let bytes = encode(&gradient(64, 64));
        // Cut inside the entropy-coded data: libjpeg would pad it with grey and warn.
        let cut = &bytes[..bytes.len() - 200];
        match process(cut, "x", 0, &recipe, &mut scratch) {
            Err(Reject::Decode(reason)) => assert!(reason.contains("Premature end"), "{reason}"),
            other => panic!("truncated: {other:?}"),
        }
        // A damaged header is an error too, and the next image still decodes.
        let mut damaged = bytes.clone();
        for b in &mut damaged[2..60] {
            *b = 0xff;
        }
        assert!(matches!(
            process(&damaged, "x", 0, &recipe, &mut scratch),
            Err(Reject::Decode(_))
        ));
        assert!(process(&bytes, "x", 0, &recipe, &mut scratch).is_ok());
    }

    #[test]
    fn gray_comes_from_luma() {
        let mut scratch = Scratch::new();
        let white = image::RgbImage::from_pixel(32, 32, image::Rgb([255, 255, 255]));
        let tensor = process(
            &encode(&white),
            "w",
            0,
            &Recipe::new(8, 8, Mode::Gray),
            &mut scratch,
        )
        .expect("gray");
        assert!(tensor.iter().all(|&v| v >= 250), "{tensor:?}");
    }

    #[test]
    fn augmentation_is_deterministic_per_key() {
        let mut scratch = Scratch::new();
        let mut recipe = Recipe::new(16, 16, Mode::Rgb);
        recipe.augment = vec![Augment::Crop, Augment::Flip];
        let bytes = jpeg(64, 48);
        let a = process(&bytes, "k/1.jpg", 3, &recipe, &mut scratch).expect("a");
        assert_eq!(
            a,
            process(&bytes, "k/1.jpg", 3, &recipe, &mut scratch).expect("again")
        );
        let differs = (0..20).any(|i| {
            process(&bytes, &format!("k/{i}.jpg"), 3, &recipe, &mut scratch).expect("other") != a
        });
        assert!(differs);
    }

    #[test]
    fn rejects_bad_objects_without_decoding_bombs() {
        let mut scratch = Scratch::new();
        let recipe = Recipe::new(8, 8, Mode::Rgb);
        assert_eq!(
            process(b"hello", "x", 0, &recipe, &mut scratch),
            Err(Reject::UnknownFormat)
        );
        let bytes = jpeg(64, 64);
        let truncated = &bytes[..bytes.len() / 3];
        assert!(matches!(
            process(truncated, "x", 0, &recipe, &mut scratch),
            Err(Reject::Decode(_))
        ));
        // A PNG header that declares 100000 x 100000 pixels.
        let mut bomb = Vec::new();
        let mut encoder = png_header(100_000, 100_000);
        bomb.append(&mut encoder);
        let err = process(&bomb, "x", 0, &recipe, &mut scratch).expect_err("bomb");
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
    fn channel_sums_match_a_plain_loop() {
        let mut rng = shardline_lineage::SplitMix64(5);
        for (len, channels) in [
            (224 * 224 * 3, 3),
            (1000, 1),
            (47, 1),
            (3 * 1000 + 3, 3),
            (0, 3),
        ] {
            let tensor: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let (mut sum, mut sum_sq) = ([0u64; 4], [0u64; 4]);
            for (i, &v) in tensor.iter().enumerate() {
                sum[i % channels] += u64::from(v);
                sum_sq[i % channels] += u64::from(v) * u64::from(v);
            }
            assert_eq!(
                channel_sums(&tensor, channels),
                (sum, sum_sq),
                "{len}x{channels}"
            );
        }
        // All 255s over more than one block of lanes: no overflow.
        let white = vec![255u8; 48 * 4096 * 2 + 5];
        let (sum, sum_sq) = channel_sums(&white, 1);
        assert_eq!(sum[0], 255 * white.len() as u64);
        assert_eq!(sum_sq[0], 255 * 255 * white.len() as u64);
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
