//! The processed data's layout: per channel, WebDataset shards `algo-<i>-<nnnnnn>.tar` whose
//! samples are `<key>.npy` (a uint8 tensor of the recipe's shape), `<key>.cls` (the label id as
//! text) and `<key>.json`, listed with their checksums in the channel's `wids` index,
//! `<channel>/index.json`.

use serde::{Deserialize, Serialize};
use shardline_lineage::Digest;

/// One finished shard, as listed in a channel's index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// The shard's file name, relative to its channel folder.
    pub url: String,
    /// Samples in the shard.
    pub nsamples: u64,
    /// Size in bytes.
    pub filesize: u64,
    /// SHA-256 of the shard.
    pub sha256: Digest,
}

/// The `wids` index of one channel: every shard with its sample count, size and checksum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Index {
    /// The format marker of wids indexes.
    #[serde(rename = "__kind__")]
    pub kind: String,
    /// The channel.
    pub name: String,
    /// Shards in rank order, then shard order.
    pub shardlist: Vec<ShardRecord>,
}

/// The key of a channel's index, relative to the processed data's root.
pub fn index_key(channel: &str) -> String {
    format!("{channel}/index.json")
}

/// The key of the `n`-th sample an instance writes in a channel: unique across the channel.
pub fn sample_key(host: &str, n: u64) -> String {
    format!("{host}-{n:08}")
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
