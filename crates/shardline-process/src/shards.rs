//! WebDataset shards: plain POSIX tar files whose samples are `<basename>.npy`, `.cls` and
//! `.json`, bounded in size, named `algo-<i>-<nnnnnn>.tar`, plus the `wids` index that lists them.

pub use shardline_contract::shards::{Index, ShardRecord};
use shardline_lineage::Hasher;

/// What [`ShardWriter::add`] produced: the bytes to append to the open shard.
#[derive(Debug)]
pub struct Added {
    /// The name of the shard this sample opened, if it is the first of a new shard: start
    /// writing a file of that name before appending `bytes`.
    pub opened: Option<String>,
    /// The sample's tar entries, to append to the open shard.
    pub bytes: Vec<u8>,
    /// The shard has reached its size bound: [`ShardWriter::close`] it.
    pub full: bool,
}

/// A shard's last bytes (the end-of-archive blocks) and its record for the index.
#[derive(Debug)]
pub struct Closed {
    /// Append these, then finish the file.
    pub tail: Vec<u8>,
    /// The record for the index.
    pub record: ShardRecord,
}

struct Open {
    url: String,
    samples: u64,
    bytes: u64,
    hasher: Hasher,
}

/// Encodes the samples of one channel of one instance as size-bounded tar shards, one sample at
/// a time, without I/O: the caller streams each sample's bytes into the open shard's file, so
/// memory holds one sample, not one shard, and the bytes are written while still in the cache.
/// The checksum is computed on the way.
pub struct ShardWriter {
    host: String,
    max_bytes: u64,
    next_index: usize,
    open: Option<Open>,
}

const BLOCK: usize = 512;

/// Appends one tar entry (a POSIX ustar header, the data, zero padding to a block).
fn entry(out: &mut Vec<u8>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_path(name)?;
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len() + (BLOCK - data.len() % BLOCK) % BLOCK, 0);
    Ok(())
}

impl ShardWriter {
    /// A writer for instance `host` whose shards close once they pass `max_bytes`.
    pub fn new(host: &str, max_bytes: usize) -> ShardWriter {
        ShardWriter {
            host: host.to_string(),
            max_bytes: max_bytes.max(1) as u64,
            next_index: 0,
            open: None,
        }
    }

    /// Encodes one sample: `files` are (extension, bytes), stored as `<basename>.<extension>`.
    pub fn add(&mut self, basename: &str, files: &[(&str, &[u8])]) -> std::io::Result<Added> {
        let size: usize = files
            .iter()
            .map(|(_, data)| BLOCK + data.len().div_ceil(BLOCK) * BLOCK)
            .sum();
        let mut bytes = Vec::with_capacity(size);
        for (extension, data) in files {
            entry(&mut bytes, &format!("{basename}.{extension}"), data)?;
        }
        let opened = match self.open {
            Some(_) => None,
            None => {
                let url = format!("{}-{:06}.tar", self.host, self.next_index);
                self.next_index += 1;
                self.open = Some(Open {
                    url: url.clone(),
                    samples: 0,
                    bytes: 0,
                    hasher: Hasher::new(),
                });
                Some(url)
            }
        };
        let open = self.open.as_mut().expect("a shard is open");
        open.hasher.update(&bytes);
        open.bytes += bytes.len() as u64;
        open.samples += 1;
        let full = open.bytes >= self.max_bytes;
        Ok(Added {
            opened,
            bytes,
            full,
        })
    }

    /// Closes the open shard, if any.
    pub fn close(&mut self) -> Option<Closed> {
        let mut open = self.open.take()?;
        // The end of an archive: two zero blocks.
        let tail = vec![0u8; 2 * BLOCK];
        open.hasher.update(&tail);
        Some(Closed {
            record: ShardRecord {
                url: open.url,
                nsamples: open.samples,
                filesize: open.bytes + tail.len() as u64,
                sha256: open.hasher.finish(),
            },
            tail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardline_lineage::Digest;

    /// Runs samples through a writer and collects the shards as files would hold them.
    fn write_all(writer: &mut ShardWriter, samples: &[Vec<u8>]) -> Vec<(ShardRecord, Vec<u8>)> {
        let mut shards = Vec::new();
        let mut current: Option<Vec<u8>> = None;
        let mut finish = |writer: &mut ShardWriter, current: &mut Option<Vec<u8>>| {
            let closed = writer.close().expect("a shard is open");
            let mut bytes = current.take().expect("bytes");
            bytes.extend_from_slice(&closed.tail);
            shards.push((closed.record, bytes));
        };
        for (i, payload) in samples.iter().enumerate() {
            let added = writer
                .add(&format!("{i:06}"), &[("npy", payload), ("cls", b"1")])
                .expect("add");
            if added.opened.is_some() {
                assert!(current.is_none(), "a shard opened while one was open");
                current = Some(Vec::new());
            }
            current
                .as_mut()
                .expect("open")
                .extend_from_slice(&added.bytes);
            if added.full {
                finish(writer, &mut current);
            }
        }
        if current.is_some() {
            finish(writer, &mut current);
        }
        assert!(writer.close().is_none());
        shards
    }

    #[test]
    fn shards_close_at_the_size_bound_and_read_back() {
        let mut writer = ShardWriter::new("algo-2", 3000);
        let samples: Vec<Vec<u8>> = (0..5).map(|i| vec![i as u8; 1000]).collect();
        let shards = write_all(&mut writer, &samples);
        assert_eq!(shards[0].0.url, "algo-2-000000.tar");
        assert_eq!(shards[1].0.url, "algo-2-000001.tar");
        assert_eq!(shards.iter().map(|s| s.0.nsamples).sum::<u64>(), 5);
        assert!(shards.len() >= 2);
        let mut seen = 0;
        for (record, bytes) in &shards {
            assert_eq!(record.filesize, bytes.len() as u64);
            assert_eq!(record.sha256, Digest::of(bytes));
            let mut archive = tar::Archive::new(&bytes[..]);
            let mut names = Vec::new();
            for entry in archive.entries().expect("entries") {
                let mut entry = entry.expect("entry");
                let name = entry.path().expect("path").display().to_string();
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut data).expect("read");
                if name.ends_with(".npy") {
                    assert_eq!(data, samples[seen]);
                    seen += 1;
                }
                names.push(name);
            }
            assert_eq!(names.len() as u64, 2 * record.nsamples);
        }
        assert_eq!(seen, 5);
        assert_eq!(
            tar::Archive::new(&shards[0].1[..])
                .entries()
                .expect("entries")
                .take(2)
                .map(|e| e
                    .expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string())
                .collect::<Vec<_>>(),
            ["000000.npy", "000000.cls"]
        );
    }
}
