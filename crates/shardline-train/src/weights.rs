//! The weights file: every parameter in module order, as shapes in a JSON header and
//! little-endian `f32` values. Loading checks every shape against the model config.

use crate::Error;
use crate::model::Model;
use crate::sync::{Parameters, load_parameters, parameters};

const MAGIC: &[u8; 8] = b"SHLWGT01";

/// Encodes a model's parameters.
pub fn encode(model: &Model) -> Vec<u8> {
    encode_parameters(&parameters(model))
}

/// Encodes parameters in module order.
pub fn encode_parameters(params: &Parameters) -> Vec<u8> {
    let shapes: Vec<&Vec<usize>> = params.iter().map(|(s, _)| s).collect();
    let header = serde_json::to_vec(&shapes).unwrap_or_default();
    let values: usize = params.iter().map(|(_, v)| v.len()).sum();
    let mut out = Vec::with_capacity(16 + header.len() + values * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for (_, v) in params {
        for x in v {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out
}

/// Loads encoded parameters into a freshly initialised model of the same config.
pub fn decode(model: Model, bytes: &[u8]) -> Result<Model, Error> {
    load_parameters(model, decode_parameters(bytes)?)
}

/// The encoded parameters, in module order.
pub fn decode_parameters(bytes: &[u8]) -> Result<Parameters, Error> {
    let bad = |why: &str| Error::Weights(why.to_string());
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(bad("not a Shardline weights file"));
    }
    let header_len =
        u64::from_le_bytes(bytes[8..16].try_into().map_err(|_| bad("short header"))?) as usize;
    let header = bytes
        .get(16..16 + header_len)
        .ok_or_else(|| bad("truncated header"))?;
    let shapes: Vec<Vec<usize>> =
        serde_json::from_slice(header).map_err(|e| Error::Weights(e.to_string()))?;
    let mut at = 16 + header_len;
    let mut values = Vec::with_capacity(shapes.len());
    for shape in shapes {
        let n: usize = shape.iter().product();
        let chunk = bytes
            .get(at..at + n * 4)
            .ok_or_else(|| bad("truncated values"))?;
        values.push((
            shape,
            chunk
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ));
        at += n * 4;
    }
    if at != bytes.len() {
        return Err(bad("trailing bytes after the values"));
    }
    Ok(values)
}
