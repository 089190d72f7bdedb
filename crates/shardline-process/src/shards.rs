//! WebDataset shards: plain POSIX tar files whose samples are `<basename>.npy`, `.cls` and
//! `.json`, bounded in size, named `algo-<i>-<nnnnnn>.tar`, plus the `wids` index that lists them.

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

/// A shard ready to be written: its name and bytes.
pub struct FinishedShard {
    /// The record for the index.
    pub record: ShardRecord,
    /// The tar file.
    pub bytes: Vec<u8>,
}

/// Writes the samples of one channel of one instance into size-bounded tar shards.
pub struct ShardWriter {
    host: String,
    max_bytes: usize,
    next_index: usize,
    builder: Option<tar::Builder<Vec<u8>>>,
    samples: u64,
}

fn header(size: usize) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_size(size as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header
}

impl ShardWriter {
    /// A writer for instance `host` whose shards close once they pass `max_bytes`.
    pub fn new(host: &str, max_bytes: usize) -> ShardWriter {
        ShardWriter {
            host: host.to_string(),
            max_bytes: max_bytes.max(1),
            next_index: 0,
            builder: None,
            samples: 0,
        }
    }

    /// Adds one sample; returns the shard it closed, if this sample filled one.
    pub fn add(
        &mut self,
        basename: &str,
        files: &[(&str, &[u8])],
    ) -> std::io::Result<Option<FinishedShard>> {
        let builder = self
            .builder
            .get_or_insert_with(|| tar::Builder::new(Vec::with_capacity(1 << 20)));
        for (extension, data) in files {
            let mut header = header(data.len());
            builder.append_data(&mut header, format!("{basename}.{extension}"), *data)?;
        }
        self.samples += 1;
        if builder.get_ref().len() >= self.max_bytes {
            return self.close();
        }
        Ok(None)
    }

    /// Closes the open shard, if any.
    pub fn close(&mut self) -> std::io::Result<Option<FinishedShard>> {
        let Some(builder) = self.builder.take() else {
            return Ok(None);
        };
        let bytes = builder.into_inner()?;
        let record = ShardRecord {
            url: format!("{}-{:06}.tar", self.host, self.next_index),
            nsamples: self.samples,
            filesize: bytes.len() as u64,
            sha256: Digest::of(&bytes),
        };
        self.next_index += 1;
        self.samples = 0;
        Ok(Some(FinishedShard { record, bytes }))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_close_at_the_size_bound_and_read_back() {
        let mut writer = ShardWriter::new("algo-2", 3000);
        let mut finished = Vec::new();
        for i in 0..5 {
            let payload = vec![i as u8; 1000];
            if let Some(shard) = writer
                .add(&format!("{i:06}"), &[("npy", &payload), ("cls", b"1")])
                .expect("add")
            {
                finished.push(shard);
            }
        }
        finished.extend(writer.close().expect("close"));
        assert_eq!(finished[0].record.url, "algo-2-000000.tar");
        assert_eq!(finished.iter().map(|s| s.record.nsamples).sum::<u64>(), 5);
        assert!(finished.len() >= 2);
        let mut archive = tar::Archive::new(&finished[0].bytes[..]);
        let names: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(&names[..2], ["000000.npy", "000000.cls"]);
    }
}
