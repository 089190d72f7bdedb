//! The model directory `shardline train` writes, and its `model.tar.gz` (SageMaker's artefact
//! form): the same files, packed deterministically (sorted names, mtime 0).

use std::collections::BTreeMap;
use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The architecture (the train crate's model config, as JSON).
pub const CONFIG: &str = "model.json";
/// The weights.
pub const WEIGHTS: &str = "weights.bin";
/// The class names, [`Labels`].
pub const LABELS: &str = "labels.json";
/// The preprocessing recipe the model was trained with.
pub const RECIPE: &str = "recipe.json";
/// Per-epoch metrics.
pub const METRICS: &str = "metrics.csv";
/// Per-epoch timings: beside the model, but neither in its lineage nor in its archive (they
/// differ between identical runs).
pub const TIMINGS: &str = "timings.csv";
/// The training curves.
pub const PLOT: &str = "training.svg";
/// The model's lineage record, [`crate::lineage::ModelLineage`]; committed last.
pub const LINEAGE: &str = "lineage.json";
/// Every file above, packed.
pub const ARCHIVE: &str = "model.tar.gz";

/// The files of a model directory, in the order they are committed (lineage last).
pub const FILES: [&str; 7] = [CONFIG, WEIGHTS, LABELS, RECIPE, METRICS, PLOT, LINEAGE];

/// A model archive's member is read only up to this size, so a hostile archive cannot exhaust
/// memory (the largest models here are a few MiB).
const MAX_FILE: u64 = 2 << 30;

/// `labels.json`: class names in label-id order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Labels {
    /// The names; the id of a class is its position.
    pub classes: Vec<String>,
}

/// Packs files as a gzipped tar: each at the root, mode 0644, mtime 0, in the order given.
pub fn pack<N: AsRef<str>>(files: &[(N, Vec<u8>)]) -> Result<Vec<u8>, Error> {
    let io = |e: std::io::Error| Error::Archive(format!("packing: {e}"));
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    for (name, bytes) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, name.as_ref(), &bytes[..])
            .map_err(io)?;
    }
    builder.into_inner().map_err(io)?.finish().map_err(io)
}

/// The regular files at the root of a gzipped tar whose names `keep` accepts, by name (a
/// leading `./` dropped).
pub fn unpack(
    bytes: &[u8],
    keep: &dyn Fn(&str) -> bool,
) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    let io = |e: std::io::Error| Error::Archive(format!("not a readable gzipped tar ({e})"));
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut files = BTreeMap::new();
    for entry in archive.entries().map_err(io)? {
        let entry = entry.map_err(io)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(io)?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if !keep(&path) {
            continue;
        }
        let mut data = Vec::new();
        entry.take(MAX_FILE).read_to_end(&mut data).map_err(io)?;
        files.insert(path, data);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_deterministically_and_unpacks() {
        let files = vec![("a.json", b"{}".to_vec()), ("b.bin", vec![1, 2, 3])];
        let packed = pack(&files).expect("pack");
        assert_eq!(packed, pack(&files).expect("again"));
        let back = unpack(&packed, &|n| n != "b.bin").expect("unpack");
        assert_eq!(back.len(), 1);
        assert_eq!(back["a.json"], b"{}");
        assert!(unpack(b"not a tarball", &|_| true).is_err());
    }
}
