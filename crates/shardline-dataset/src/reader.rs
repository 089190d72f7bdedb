//! A prefetching reader of WebDataset shards: a background thread fetches the shards a rank
//! reads, unpacks the samples, normalises them into `f32` `[channels, height, width]` and queues
//! them; the trainer takes batches and the reader counts how long it waited.

use std::collections::HashMap;
use std::io::Read;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shardline_contract::recipe::Recipe;
use shardline_contract::shards::ShardRecord;
use shardline_store::Store;

use crate::{Error, npy};

/// How uint8 `[height, width, channels]` tensors become model inputs: per channel
/// `(value - mean) / std`, laid out `[channels, height, width]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalise {
    /// The tensor shape the shards must have, `[height, width, channels]`.
    pub shape: [usize; 3],
    /// Per-channel mean.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation.
    pub std: Vec<f32>,
}

impl Normalise {
    /// The normalisation a processing recipe prescribes.
    pub fn from_recipe(recipe: &Recipe) -> Normalise {
        Normalise {
            shape: recipe.shape(),
            mean: recipe.mean.iter().map(|&m| m as f32).collect(),
            std: recipe.std.iter().map(|&s| s as f32).collect(),
        }
    }

    /// Values per sample.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether a sample holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the normalised, channel-first form of `hwc` into `out`.
    pub fn apply(&self, hwc: &[u8], out: &mut [f32]) {
        let [h, w, c] = self.shape;
        let plane = h * w;
        let scale: Vec<f32> = self.std.iter().map(|s| 1.0 / s).collect();
        for (pixel, values) in hwc.chunks_exact(c).enumerate() {
            for (k, &v) in values.iter().enumerate() {
                out[k * plane + pixel] = (f32::from(v) - self.mean[k]) * scale[k];
            }
        }
    }
}

/// One batch for the trainer.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `[batch, channels, height, width]`, normalised.
    pub images: Vec<f32>,
    /// Label ids.
    pub labels: Vec<u32>,
    /// How long the trainer waited for this batch.
    pub waited: Duration,
}

/// Samples travel in chunks: one queue operation (and at most one wake-up of the trainer) per
/// chunk rather than per sample.
const CHUNK: usize = 32;

/// A chunk of normalised samples: `[n, c, h, w]` values and `n` labels.
type Item = Result<(Vec<f32>, Vec<u32>), Error>;

/// Streams the samples of a list of shards on a background thread.
pub struct Prefetcher {
    samples: Receiver<Item>,
    worker: Option<JoinHandle<()>>,
    normalise: Normalise,
    /// Samples received but not yet handed out.
    images: Vec<f32>,
    labels: Vec<u32>,
    finished: bool,
}

/// Where unpacked samples go: straight to the queue, or through a shuffle buffer first.
struct Sink<'a> {
    out: &'a SyncSender<Item>,
    normalise: &'a Normalise,
    buffer: Vec<(Vec<u8>, u32)>,
    capacity: usize,
    state: shardline_lineage::SplitMix64,
    chunk: (Vec<f32>, Vec<u32>),
    /// Random translation of each sample by up to this many pixels (0: none).
    shift: usize,
    shifted: Vec<u8>,
    /// `(rank, world)`: keep the samples whose position in the reading order is `rank` modulo
    /// `world`.
    part: (usize, usize),
    /// Samples seen so far, kept or not.
    seen: usize,
}

impl Sink<'_> {
    fn random(&mut self, below: usize) -> usize {
        (self.state.next_u64() % below as u64) as usize
    }

    /// Normalises one sample into the open chunk, queueing the chunk when full; false once the
    /// trainer stopped reading.
    fn emit(&mut self, hwc: &[u8], label: u32) -> bool {
        if self.shift > 0 {
            let span = 2 * self.shift as u64 + 1;
            let dy = (self.state.next_u64() % span) as isize - self.shift as isize;
            let dx = (self.state.next_u64() % span) as isize - self.shift as isize;
            let mut shifted = std::mem::take(&mut self.shifted);
            translate(hwc, self.normalise.shape, dy, dx, &mut shifted);
            let going = self.emit_plain(&shifted, label);
            self.shifted = shifted;
            return going;
        }
        self.emit_plain(hwc, label)
    }

    fn emit_plain(&mut self, hwc: &[u8], label: u32) -> bool {
        let n = self.normalise.len();
        let (images, labels) = &mut self.chunk;
        let at = images.len();
        images.resize(at + n, 0.0);
        self.normalise.apply(hwc, &mut images[at..]);
        labels.push(label);
        if labels.len() >= CHUNK {
            return self.flush();
        }
        true
    }

    /// Queues the open chunk, if any.
    fn flush(&mut self) -> bool {
        if self.chunk.1.is_empty() {
            return true;
        }
        let n = self.normalise.len();
        let chunk = std::mem::replace(
            &mut self.chunk,
            (Vec::with_capacity(CHUNK * n), Vec::with_capacity(CHUNK)),
        );
        self.out.send(Ok(chunk)).is_ok()
    }

    fn push(&mut self, hwc: Vec<u8>, label: u32) -> bool {
        let position = self.seen;
        self.seen += 1;
        if position % self.part.1 != self.part.0 {
            return true;
        }
        if self.capacity <= 1 {
            return self.emit(&hwc, label);
        }
        if self.buffer.len() < self.capacity {
            self.buffer.push((hwc, label));
            return true;
        }
        let j = self.random(self.buffer.len());
        let (old, old_label) = std::mem::replace(&mut self.buffer[j], (hwc, label));
        self.emit(&old, old_label)
    }

    fn drain(&mut self) -> bool {
        while !self.buffer.is_empty() {
            let j = self.random(self.buffer.len());
            let (hwc, label) = self.buffer.swap_remove(j);
            if !self.emit(&hwc, label) {
                return false;
            }
        }
        true
    }
}

/// `hwc` moved by `(dy, dx)` pixels into `out`, the edge pixels repeated into the space it leaves.
fn translate(hwc: &[u8], [h, w, c]: [usize; 3], dy: isize, dx: isize, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(hwc.len());
    let clamp = |v: isize, n: usize| v.clamp(0, n as isize - 1) as usize;
    for y in 0..h {
        let from_y = clamp(y as isize - dy, h);
        for x in 0..w {
            let at = (from_y * w + clamp(x as isize - dx, w)) * c;
            out.extend_from_slice(&hwc[at..at + c]);
        }
    }
}

fn read_shard(
    store: &Store,
    runtime: &tokio::runtime::Runtime,
    shard: &ShardRecord,
    normalise: &Normalise,
    sink: &mut Sink<'_>,
) -> Result<bool, Error> {
    let url = shard.url.as_str();
    let bytes = runtime.block_on(store.get(url))?;
    let bad = |reason: String| Error::BadShard {
        shard: store.uri_of(url),
        reason,
    };
    // What processing wrote is what trains: a shard changed since (a flipped bit, a truncation,
    // another run's file) is refused rather than learnt from.
    let found = shardline_lineage::Digest::of(&bytes);
    if bytes.len() as u64 != shard.filesize || found != shard.sha256 {
        return Err(bad(format!(
            "its {} bytes (sha256 {found}) do not match the {} bytes (sha256 {}) its channel's index.json lists: it changed after processing; rerun `shardline process` into a fresh --out",
            bytes.len(),
            shard.filesize,
            shard.sha256
        )));
    }
    let mut archive = tar::Archive::new(&bytes[..]);
    // Files of one sample share a basename; a sample is complete once its .npy and .cls are seen.
    let mut pending: HashMap<String, (Option<Vec<u8>>, Option<u32>)> = HashMap::new();
    for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry
            .path()
            .map_err(|e| bad(e.to_string()))?
            .display()
            .to_string();
        let Some((base, extension)) = path.split_once('.') else {
            continue;
        };
        if extension != "npy" && extension != "cls" {
            continue;
        }
        let base = base.to_string();
        let mut data = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut data)
            .map_err(|e| bad(e.to_string()))?;
        let slot = pending.entry(base.clone()).or_default();
        match extension {
            "npy" => {
                let (shape, values) =
                    npy::parse_u8(&data).map_err(|e| bad(format!("{path}: {e}")))?;
                if shape != normalise.shape {
                    return Err(Error::WrongShape {
                        shard: store.uri_of(url),
                        sample: base,
                        found: shape,
                        expected: normalise.shape.to_vec(),
                    });
                }
                slot.0 = Some(values.to_vec());
            }
            "cls" => {
                let text = String::from_utf8_lossy(&data);
                slot.1 = Some(
                    text.trim()
                        .parse()
                        .map_err(|_| bad(format!("{path}: label {text:?} is not a number")))?,
                );
            }
            _ => {}
        }
        if let (Some(_), Some(_)) = slot
            && let Some((Some(image), Some(label))) = pending.remove(&base)
            && !sink.push(image, label)
        {
            // The trainer stopped reading.
            return Ok(false);
        }
    }
    if let Some(base) = pending.keys().next() {
        return Err(bad(format!("sample {base} lacks its .npy or .cls")));
    }
    Ok(true)
}

impl Prefetcher {
    /// Starts reading `shards` (their urls are keys below `store`) in order, keeping up to
    /// `depth` samples ready; each shard's bytes are checked against its size and checksum.
    pub fn spawn(
        store: Store,
        shards: Vec<ShardRecord>,
        normalise: Normalise,
        depth: usize,
    ) -> Prefetcher {
        Prefetcher::spawn_shuffled(store, shards, normalise, depth, 0, 0, 0, (0, 1))
    }

    /// Like [`Prefetcher::spawn`], with samples passed through a shuffle buffer of `shuffle`
    /// samples (WebDataset's `shuffle(n)`): shards written in key order hold one class after
    /// another, and batches drawn in that order would too. Each sample is then moved by a random
    /// translation of up to `shift` pixels each way (0: none; the edge is repeated into the
    /// space it leaves). The order and the translations are a function of `seed`. Only the
    /// samples of `part` are kept (see [`crate::EpochPlan::part`]).
    #[allow(clippy::too_many_arguments)]
    pub fn spawn_shuffled(
        store: Store,
        shards: Vec<ShardRecord>,
        normalise: Normalise,
        depth: usize,
        shuffle: usize,
        shift: usize,
        seed: u64,
        part: (usize, usize),
    ) -> Prefetcher {
        let part = (part.0, part.1.max(1));
        let (sender, samples) = sync_channel(depth.div_ceil(CHUNK).max(2));
        let shape = normalise.clone();
        let worker = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = sender.send(Err(Error::BadShard {
                        shard: store.uri(),
                        reason: format!("cannot start the reader: {e}"),
                    }));
                    return;
                }
            };
            let mut sink = Sink {
                out: &sender,
                normalise: &shape,
                buffer: Vec::with_capacity(shuffle.min(1 << 16)),
                capacity: shuffle,
                state: shardline_lineage::SplitMix64(seed),
                chunk: (Vec::new(), Vec::new()),
                shift,
                shifted: Vec::new(),
                part,
                seen: 0,
            };
            for shard in &shards {
                match read_shard(&store, &runtime, shard, &shape, &mut sink) {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        let _ = sender.send(Err(e));
                        return;
                    }
                }
            }
            if sink.drain() {
                sink.flush();
            }
        });
        Prefetcher {
            samples,
            worker: Some(worker),
            normalise,
            images: Vec::new(),
            labels: Vec::new(),
            finished: false,
        }
    }

    /// Receives chunks until `size` samples are held or the shards are exhausted.
    fn fill(&mut self, size: usize) -> Result<(), Error> {
        while self.labels.len() < size && !self.finished {
            match self.samples.recv() {
                Ok(Ok((images, labels))) => {
                    self.images.extend_from_slice(&images);
                    self.labels.extend_from_slice(&labels);
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => self.finished = true,
            }
        }
        Ok(())
    }

    /// Hands out the first `size` samples held.
    fn take(&mut self, size: usize, waited: Duration) -> Batch {
        let size = size.min(self.labels.len());
        let n = self.normalise.len();
        let images = self.images.drain(..size * n).collect();
        let labels = self.labels.drain(..size).collect();
        Batch {
            images,
            labels,
            waited,
        }
    }

    /// The next `size` samples as one batch, or `None` once the shards are exhausted (a partial
    /// last batch is dropped: every rank runs whole batches).
    pub fn next_batch(&mut self, size: usize) -> Result<Option<Batch>, Error> {
        let started = Instant::now();
        self.fill(size)?;
        if self.labels.len() < size {
            return Ok(None);
        }
        Ok(Some(self.take(size, started.elapsed())))
    }
}

impl Prefetcher {
    /// Up to `size` samples: a full batch, the partial last one, or `None` when nothing is left
    /// (for evaluation, where every sample counts and no collective waits on batch counts).
    pub fn next_partial(&mut self, size: usize) -> Result<Option<Batch>, Error> {
        let started = Instant::now();
        self.fill(size)?;
        if self.labels.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.take(size, started.elapsed())))
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Closing the queue makes the worker stop at its next sample.
        let (_, closed) = sync_channel(1);
        drop(std::mem::replace(&mut self.samples, closed));
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use shardline_contract::shards::npy as write_npy;
    use shardline_process::shards::ShardWriter;

    fn shards(
        store: &Store,
        runtime: &tokio::runtime::Runtime,
        samples: usize,
    ) -> Vec<ShardRecord> {
        let mut writer = ShardWriter::new("algo-1", 2000);
        let mut urls = Vec::new();
        let mut open: Vec<u8> = Vec::new();
        let mut put = |writer: &mut ShardWriter, open: &mut Vec<u8>| {
            if let Some(closed) = writer.close() {
                open.extend_from_slice(&closed.tail);
                runtime
                    .block_on(store.put(&closed.record.url, Bytes::from(std::mem::take(open))))
                    .expect("put");
                urls.push(closed.record);
            }
        };
        for i in 0..samples {
            // A 2x2 RGB image whose red channel is the sample number.
            let hwc: Vec<u8> = (0..4).flat_map(|_| [i as u8, 10, 20]).collect();
            let npy = write_npy(&hwc, &[2, 2, 3]);
            let label = (i % 3).to_string();
            let files: [(&str, &[u8]); 3] =
                [("npy", &npy), ("cls", label.as_bytes()), ("json", b"{}")];
            let added = writer.add(&format!("{i:08}"), &files).expect("add");
            open.extend_from_slice(&added.bytes);
            if added.full {
                put(&mut writer, &mut open);
            }
        }
        put(&mut writer, &mut open);
        urls
    }

    fn normalise() -> Normalise {
        Normalise {
            shape: [2, 2, 3],
            mean: vec![0.0, 10.0, 0.0],
            std: vec![1.0, 1.0, 10.0],
        }
    }

    #[test]
    fn batches_are_normalised_channel_first_in_order() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let store = Store::open("memory://reader-order/train").expect("store");
        let urls = shards(&store, &runtime, 10);
        assert!(urls.len() > 1, "several shards");
        let mut reader = Prefetcher::spawn(store, urls, normalise(), 4);
        let batch = reader.next_batch(4).expect("read").expect("batch");
        assert_eq!(batch.labels, vec![0, 1, 2, 0]);
        // Sample 1: red plane = 1, green plane = (10 - 10) / 1 = 0, blue plane = 20 / 10 = 2.
        assert_eq!(
            &batch.images[12..24],
            &[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0]
        );
        assert!(reader.next_batch(4).expect("read").is_some());
        assert!(
            reader.next_batch(4).expect("read").is_none(),
            "2 samples left: no partial batch"
        );
    }

    #[test]
    fn a_shard_of_another_recipe_is_refused() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let store = Store::open("memory://reader-shape/train").expect("store");
        let urls = shards(&store, &runtime, 3);
        let wrong = Normalise {
            shape: [4, 4, 3],
            ..normalise()
        };
        let mut reader = Prefetcher::spawn(store, urls, wrong, 4);
        let err = reader.next_batch(2).expect_err("wrong shape").to_string();
        assert!(err.contains("another recipe"), "{err}");
    }

    #[test]
    fn a_shard_whose_bytes_changed_is_refused_naming_it() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let store = Store::open("memory://reader-bitflip/train").expect("store");
        let urls = shards(&store, &runtime, 3);
        let mut bytes = runtime
            .block_on(store.get(&urls[0].url))
            .expect("get")
            .to_vec();
        // One bit of a pixel flipped: the tar still parses, the sample would train.
        let at = bytes.len() / 3;
        bytes[at] ^= 1;
        runtime
            .block_on(store.put(&urls[0].url, Bytes::from(bytes)))
            .expect("put");
        let mut reader = Prefetcher::spawn(store, urls.clone(), normalise(), 4);
        let err = reader.next_batch(2).expect_err("changed").to_string();
        assert!(
            err.contains(&urls[0].url) && err.contains("do not match"),
            "{err}"
        );
    }

    #[test]
    fn the_shuffle_buffer_mixes_samples_deterministically() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let store = Store::open("memory://reader-shuffle/train").expect("store");
        let urls = shards(&store, &runtime, 30);
        let read = |seed: u64| {
            let mut reader = Prefetcher::spawn_shuffled(
                store.clone(),
                urls.clone(),
                normalise(),
                4,
                16,
                0,
                seed,
                (0, 1),
            );
            let batch = reader.next_partial(30).expect("read").expect("batch");
            // The red plane of each sample holds its number.
            batch
                .images
                .chunks(12)
                .map(|s| s[0] as u32)
                .collect::<Vec<_>>()
        };
        let order = read(1);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..30).collect::<Vec<_>>(), "every sample once");
        assert_ne!(order, sorted, "not in key order");
        assert_eq!(order, read(1));
        assert_ne!(order, read(2));
    }

    #[test]
    fn dropping_the_reader_stops_its_thread() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let store = Store::open("memory://reader-drop/train").expect("store");
        let urls = shards(&store, &runtime, 50);
        let mut reader = Prefetcher::spawn(store, urls, normalise(), 1);
        assert!(reader.next_batch(1).expect("read").is_some());
        drop(reader);
    }
}
