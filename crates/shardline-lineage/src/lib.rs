//! Shardline's lineage vocabulary: content digests and the record of one output file.
//!
//! Every stage writes a `lineage.json` beside its outputs naming its inputs, its settings and a
//! digest of each output, so that any artefact can be traced back to the raw objects. This crate
//! holds the pieces those records share; it does no I/O and knows nothing about any stage.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The version of Shardline that wrote a record.
pub const PRODUCER: &str = concat!("shardline/", env!("CARGO_PKG_VERSION"));

/// A SHA-256 digest, written as `sha256:<64 hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Digest(String);

impl Digest {
    /// The digest of a byte string.
    pub fn of(bytes: &[u8]) -> Digest {
        let mut hasher = Hasher::new();
        hasher.update(bytes);
        hasher.finish()
    }

    /// The digest as written: `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An incremental digest, for content that is produced piece by piece (a listing, say).
#[derive(Debug, Clone, Default)]
pub struct Hasher(Sha256);

impl Hasher {
    /// A new, empty digest.
    pub fn new() -> Hasher {
        Hasher(Sha256::new())
    }

    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of everything added.
    pub fn finish(self) -> Digest {
        let bytes = self.0.finalize();
        let mut text = String::with_capacity(7 + 64);
        text.push_str("sha256:");
        for byte in bytes {
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 15)]));
        }
        Digest(text)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// SplitMix64, a small and fully specified random stream. Everything Shardline draws "at random"
/// (synthetic images, augmentations, shuffles, initial weights) comes from it, seeded, so that a
/// seed gives the same result on every machine and every run — part of what makes outputs
/// reproducible from their lineage.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// One file an output consists of: its name relative to the output, its size and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the content.
    pub digest: Digest,
}

impl FileRecord {
    /// The record of a file's content.
    pub fn of(content: &[u8]) -> FileRecord {
        FileRecord {
            bytes: content.len() as u64,
            digest: Digest::of(content),
        }
    }

    /// Whether `content` is the file this record describes.
    pub fn matches(&self, content: &[u8]) -> bool {
        self.bytes == content.len() as u64 && self.digest == Digest::of(content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_the_sha256_test_vector() {
        assert_eq!(
            Digest::of(b"abc").as_str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn splitmix64_matches_its_reference_stream() {
        // The first outputs for seed 0 of the published reference implementation.
        let mut rng = SplitMix64(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn incremental_equals_whole() {
        let mut hasher = Hasher::new();
        hasher.update(b"ab");
        hasher.update(b"c");
        assert_eq!(hasher.finish(), Digest::of(b"abc"));
    }

    #[test]
    fn file_record_detects_changes() {
        let record = FileRecord::of(b"[1,2]");
        assert!(record.matches(b"[1,2]"));
        assert!(!record.matches(b"[1,3]"));
    }
}
