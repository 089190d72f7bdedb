//! Instances' logs read a byte range at a time, so that a 100 MB log never loads whole: a page
//! is the lines that *start* in `[page × size, (page + 1) × size)`, a tail is the complete lines
//! after an offset. Carriage-return progress lines are collapsed to what a terminal would show
//! last, and several instances' lines are interleaved by their leading timestamps.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The bytes of one page of a log.
pub const PAGE: u64 = 256 * 1024;
/// The most bytes a line that starts in a page may run past its end before it is cut.
const OVERRUN: u64 = 64 * 1024;

/// Lines of one log read from a byte range.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chunk {
    /// The lines, collapsed, without their line ends.
    pub lines: Vec<String>,
    /// The offset just after the last byte read (where a tail goes on from).
    pub end: u64,
    /// The file's size when it was read.
    pub size: u64,
}

/// What a terminal shows of a line written with carriage returns (progress bars): the text after
/// the last `\r`, ignoring one before the line end.
pub fn collapse(line: &str) -> &str {
    let line = line.strip_suffix('\r').unwrap_or(line);
    line.rsplit('\r').next().unwrap_or(line)
}

fn lines_of(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .split('\n')
        .map(|l| collapse(l).to_string())
        .collect()
}

/// The lines that start in page `page` (of [`PAGE`] bytes) of the log at `path`.
pub fn page(path: &Path, page: u64) -> std::io::Result<Chunk> {
    page_of(path, page, PAGE)
}

fn page_of(path: &Path, page: u64, size: u64) -> std::io::Result<Chunk> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let start = page.saturating_mul(size);
    if start >= len {
        return Ok(Chunk {
            lines: Vec::new(),
            end: len,
            size: len,
        });
    }
    // Read one byte before the page to know whether its first line starts there.
    let from = start.saturating_sub(1);
    let to = (start + size + OVERRUN).min(len);
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = vec![0u8; (to - from) as usize];
    file.read_exact(&mut bytes)?;
    let mut begin = 0usize;
    if start > 0 {
        // The line in progress at `start` belongs to the previous page.
        begin = bytes
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |p| p + 1);
    }
    // Keep the lines that start before the page's end; the last may run OVERRUN past it, and
    // a last line without its end (cut, or still being written) is kept as it is.
    let limit = (start + size - from) as usize;
    let mut end = begin;
    while end < bytes.len() && end < limit {
        end = bytes[end..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |p| end + p + 1);
    }
    let mut lines = if end > begin {
        lines_of(&bytes[begin..end])
    } else {
        Vec::new()
    };
    if lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    Ok(Chunk {
        lines,
        end: from + end as u64,
        size: len,
    })
}

/// The complete lines written after `offset` (at most [`PAGE`] bytes of them).
pub fn tail(path: &Path, offset: u64) -> std::io::Result<Chunk> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let from = offset.min(len);
    let to = (from + PAGE).min(len);
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = vec![0u8; (to - from) as usize];
    file.read_exact(&mut bytes)?;
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let mut lines = lines_of(&bytes[..complete]);
    lines.pop();
    Ok(Chunk {
        lines,
        end: from + complete as u64,
        size: len,
    })
}

/// The leading timestamp of a tracing line (`2026-12-01T20:05:08.123Z ...`), if it has one.
fn stamp(line: &str) -> Option<&str> {
    let token = line.split_whitespace().next()?;
    let b = token.as_bytes();
    (b.len() >= 19 && b[4] == b'-' && b[10] == b'T' && b[..4].iter().all(u8::is_ascii_digit))
        .then_some(token)
}

/// Several instances' lines as one list of (instance index, line), in time order by their
/// leading timestamps; a line without one stays after the line before it in its own log.
pub fn interleave(logs: &[Vec<String>]) -> Vec<(usize, String)> {
    let mut at = vec![0usize; logs.len()];
    let mut keys: Vec<String> = vec![String::new(); logs.len()];
    let mut out = Vec::with_capacity(logs.iter().map(Vec::len).sum());
    loop {
        // The next line of each log, keyed by its stamp or the stamp before it.
        let mut best: Option<(usize, String)> = None;
        for (i, log) in logs.iter().enumerate() {
            let Some(line) = log.get(at[i]) else { continue };
            let key = stamp(line).map_or_else(|| keys[i].clone(), str::to_string);
            if best.as_ref().is_none_or(|(_, k)| key < *k) {
                best = Some((i, key));
            }
        }
        let Some((i, key)) = best else { break };
        out.push((i, logs[i][at[i]].clone()));
        keys[i] = key;
        at[i] += 1;
    }
    out
}

/// The instance a step's error names as failed (`instance algo-2 failed after ...`, the process
/// stage's error), if any.
pub fn failed_instance(error: &str) -> Option<&str> {
    let (_, rest) = error.split_once("instance ")?;
    let (host, rest) = rest.split_once(' ')?;
    rest.starts_with("failed").then_some(host)
}

/// Which instances straggled: those whose log last grew more than half again the median of the
/// others' time after the step started, and at least `slack` seconds later than that median.
/// `ends` are seconds from the step's start to each log's last change.
pub fn stragglers(ends: &[f64], slack: f64) -> Vec<bool> {
    (0..ends.len())
        .map(|i| {
            let mut others: Vec<f64> = ends
                .iter()
                .enumerate()
                .filter(|&(j, e)| j != i && e.is_finite())
                .map(|(_, e)| *e)
                .collect();
            if others.is_empty() {
                return false;
            }
            others.sort_by(f64::total_cmp);
            let median = others[others.len() / 2];
            ends[i] > median * 1.5 && ends[i] > median + slack
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carriage_returns_collapse_to_the_last_state() {
        assert_eq!(collapse("10%\r50%\r100% done"), "100% done");
        assert_eq!(collapse("plain\r"), "plain");
        assert_eq!(collapse(""), "");
    }

    #[test]
    fn pages_hold_the_lines_that_start_in_them_and_nothing_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text).expect("write");
        let mut seen = Vec::new();
        for p in 0.. {
            let c = page_of(&path, p, 64).expect("page");
            if c.lines.is_empty() {
                break;
            }
            seen.extend(c.lines);
        }
        let want: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
        assert_eq!(seen, want);
        assert!(page(&path, 1000).expect("past the end").lines.is_empty());
    }

    #[test]
    fn a_tail_takes_complete_lines_from_an_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        std::fs::write(&path, "a\nb\r\nc").expect("write");
        let c = tail(&path, 0).expect("tail");
        assert_eq!(c.lines, ["a", "b"]);
        assert_eq!(c.end, 5);
        std::fs::write(&path, "a\nb\r\nc d\n").expect("write");
        assert_eq!(tail(&path, c.end).expect("tail").lines, ["c d"]);
        assert!(tail(&path, 999).expect("past the end").lines.is_empty());
    }

    #[test]
    fn the_failed_instance_and_stragglers_are_found() {
        let error = "process: instance algo-2 failed after 3 attempt(s): exited with status 1; its log is x";
        assert_eq!(failed_instance(error), Some("algo-2"));
        assert_eq!(failed_instance("cannot read the manifest"), None);
        assert_eq!(failed_instance("instance algo-1 started"), None);
        assert_eq!(
            stragglers(&[10.0, 11.0, 12.0, 40.0], 5.0),
            [false, false, false, true]
        );
        // Close together, or a lone instance: nobody straggles.
        assert_eq!(stragglers(&[1.0, 2.0, 3.9], 5.0), [false, false, false]);
        assert_eq!(stragglers(&[100.0], 5.0), [false]);
    }

    #[test]
    fn instances_interleave_by_time() {
        let a = vec![
            "2026-01-01T00:00:01Z a1".to_string(),
            "  continued".to_string(),
            "2026-01-01T00:00:03Z a3".to_string(),
        ];
        let b = vec!["2026-01-01T00:00:02Z b2".to_string()];
        let merged = interleave(&[a, b]);
        let got: Vec<(usize, &str)> = merged
            .iter()
            .map(|(i, l)| (*i, &l[l.len() - 2..]))
            .collect();
        assert_eq!(got, [(0, "a1"), (0, "ed"), (1, "b2"), (0, "a3")]);
    }
}
