//! JPEG decoding with libjpeg-turbo (through the `mozjpeg` crate, whose decoder is
//! libjpeg-turbo's, SIMD included): the decoder Pillow and TensorFlow use, and the step that
//! dominates processing.
//!
//! Two things differ from a plain decode:
//! - **Strict errors.** libjpeg reports a truncated file or corrupt entropy data as a *warning*
//!   and pads the image with grey; here every warning fails the object, so it is quarantined with
//!   libjpeg's message instead of becoming a silently damaged sample.
//! - **DCT-domain downscaling** (when the recipe asks for it): an image at least twice the size
//!   the resize needs is decoded at 1/2, 1/4 or 1/8 scale straight from its DCT coefficients
//!   (what Pillow's `draft()` does), so a 4000x3000 photo does not pay for 12 million pixels it
//!   throws away. Only power-of-two scales are used: they have fast reduced IDCTs, and the
//!   decoded image is never smaller than the resize needs.
//!
//! libjpeg reports errors through callbacks; like the `mozjpeg` crate, the callbacks unwind (the
//! C code is built with unwinding support) and the unwind is caught here. This is the only module
//! of the crate with `unsafe` code: filling in libjpeg's error manager.
#![allow(unsafe_code)]

use std::os::raw::c_int;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use mozjpeg_sys::{J_COLOR_SPACE, jpeg_common_struct, jpeg_error_mgr};

use crate::Reject;

/// A decoded image: its pixels went into the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decoded {
    /// Width of the image as stored.
    pub width: u32,
    /// Height of the image as stored.
    pub height: u32,
    /// Width of the decoded pixels (smaller than `width` when DCT scaling was used).
    pub out_width: u32,
    /// Height of the decoded pixels.
    pub out_height: u32,
}

/// What the decoder needs to know.
pub(crate) struct Request {
    /// One channel (luma) rather than RGB.
    pub gray: bool,
    /// Largest accepted image, in pixels, checked from the header before decoding.
    pub max_pixels: u64,
    /// With DCT scaling: the smallest width and height the decoded image may have.
    pub at_least: Option<(u32, u32)>,
}

/// Decodes a JPEG into `pixels` (resized to fit). `Ok(None)`: a colour space libjpeg cannot turn
/// into RGB (CMYK, YCCK), for another decoder.
pub(crate) fn decode(
    bytes: &[u8],
    request: &Request,
    pixels: &mut Vec<u8>,
) -> Result<Option<Decoded>, Reject> {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        decode_unwinding(bytes, request, pixels)
    }));
    match outcome {
        Ok(result) => result,
        Err(payload) => {
            let reason = match payload.downcast::<String>() {
                Ok(message) => *message,
                Err(payload) => match payload.downcast::<&str>() {
                    Ok(message) => (*message).to_string(),
                    Err(_) => "the JPEG decoder failed".to_string(),
                },
            };
            Err(Reject::Decode(reason))
        }
    }
}

fn decode_unwinding(
    bytes: &[u8],
    request: &Request,
    pixels: &mut Vec<u8>,
) -> Result<Option<Decoded>, Reject> {
    let io = |e: std::io::Error| Reject::Decode(e.to_string());
    let mut decompress = mozjpeg::Decompress::builder()
        .with_err(error_manager())
        .from_mem(bytes)
        .map_err(io)?;
    let (width, height) = (decompress.width() as u32, decompress.height() as u32);
    if u64::from(width) * u64::from(height) > request.max_pixels || width == 0 || height == 0 {
        return Err(Reject::TooLarge {
            width,
            height,
            max_pixels: request.max_pixels,
        });
    }
    if matches!(
        decompress.color_space(),
        J_COLOR_SPACE::JCS_CMYK | J_COLOR_SPACE::JCS_YCCK
    ) {
        return Ok(None);
    }
    if let Some((need_width, need_height)) = request.at_least {
        decompress.scale(scale_numerator((width, height), (need_width, need_height)));
    }
    let mut started = if request.gray {
        decompress.grayscale()
    } else {
        decompress.rgb()
    }
    .map_err(io)?;
    let (out_width, out_height) = (started.width(), started.height());
    let channels = if request.gray { 1 } else { 3 };
    let len = out_width * out_height * channels;
    // Every byte is overwritten below; growing (not clearing) keeps a reused buffer cheap.
    pixels.resize(len, 0);
    let written = started
        .read_scanlines_into(&mut pixels[..])
        .map_err(io)?
        .len();
    if written != len {
        return Err(Reject::Decode(format!(
            "the decoder stopped after {} of {out_height} rows",
            written / (out_width * channels).max(1)
        )));
    }
    started.finish().map_err(io)?;
    Ok(Some(Decoded {
        width,
        height,
        out_width: out_width as u32,
        out_height: out_height as u32,
    }))
}

/// The largest reduction `n/8`, `n` in 8, 4, 2, 1, whose output (libjpeg rounds up) is still at
/// least `need` on both sides.
pub(crate) fn scale_numerator(size: (u32, u32), need: (u32, u32)) -> u8 {
    let scaled = |side: u32, n: u32| (u64::from(side) * u64::from(n)).div_ceil(8);
    [1u8, 2, 4]
        .into_iter()
        .find(|&n| {
            scaled(size.0, u32::from(n)) >= u64::from(need.0)
                && scaled(size.1, u32::from(n)) >= u64::from(need.1)
        })
        .unwrap_or(8)
}

/// libjpeg's standard error manager with both exits unwinding: errors, and warnings too.
fn error_manager() -> jpeg_error_mgr {
    // SAFETY: `jpeg_error_mgr` is a plain C struct of integers, pointers and optional function
    // pointers, for which all-zero is a valid value; `jpeg_std_error` then fills in every field,
    // as libjpeg's documentation requires before use.
    let mut manager: jpeg_error_mgr = unsafe { std::mem::zeroed() };
    unsafe { mozjpeg_sys::jpeg_std_error(&mut manager) };
    manager.error_exit = Some(fail);
    manager.emit_message = Some(warn);
    manager
}

/// Formats libjpeg's current message, e.g. "Premature end of JPEG file".
fn message(cinfo: &mut jpeg_common_struct) -> String {
    let mut buffer = [0u8; 80];
    // SAFETY: `cinfo.err` points at the error manager installed above, alive for the whole
    // decompression, and `format_message` is the one `jpeg_std_error` installed. libjpeg writes at
    // most 80 bytes (JMSG_LENGTH_MAX), the NUL included, into the buffer; the bindings declare the
    // buffer as shared although C writes through it, so the pointer's type is corrected to take
    // it mutably (the same ABI: a pointer), as the `mozjpeg` crate does.
    unsafe {
        if let Some(format) = cinfo.err.as_ref().and_then(|err| err.format_message) {
            let format = std::mem::transmute::<
                unsafe extern "C-unwind" fn(&mut jpeg_common_struct, &[u8; 80]),
                unsafe extern "C-unwind" fn(&mut jpeg_common_struct, &mut [u8; 80]),
            >(format);
            format(cinfo, &mut buffer);
        }
    }
    let text = buffer.split(|&b| b == 0).next().unwrap_or_default();
    if text.is_empty() {
        "the JPEG decoder failed".to_string()
    } else {
        String::from_utf8_lossy(text).into_owned()
    }
}

extern "C-unwind" fn fail(cinfo: &mut jpeg_common_struct) {
    // `resume_unwind` does not run the panic hook: nothing is printed; `decode` catches it.
    resume_unwind(Box::new(message(cinfo)));
}

extern "C-unwind" fn warn(cinfo: &mut jpeg_common_struct, level: c_int) {
    // Level -1 is a warning (corrupt or truncated data); 0 and up are trace messages.
    if level < 0 {
        fail(cinfo);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_keeps_at_least_what_the_resize_needs() {
        // 500x375 to 224x224: 1/2 would give 250x188, short of 224 rows, so no scaling.
        assert_eq!(scale_numerator((500, 375), (224, 224)), 8);
        // A 4000x3000 photo: 1/8 gives 500x375, still enough.
        assert_eq!(scale_numerator((4000, 3000), (224, 224)), 1);
        // 1000x800 to 224x224: 1/4 gives 250x200 (too few rows), 1/2 gives 500x400.
        assert_eq!(scale_numerator((1000, 800), (224, 224)), 4);
        // libjpeg rounds up: 447 rows at 1/2 give 224; 446 give 223, too few.
        assert_eq!(scale_numerator((447, 447), (224, 224)), 4);
        assert_eq!(scale_numerator((446, 446), (224, 224)), 8);
        // Smaller than needed already: full size.
        assert_eq!(scale_numerator((100, 100), (224, 224)), 8);
    }
}
