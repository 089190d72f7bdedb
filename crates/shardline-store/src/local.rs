//! A fast recursive listing of a local directory.
//!
//! object_store's `LocalFileSystem::list` stats every file twice by absolute path and converts
//! each path through a URL; over a million files that is most of the manifest step's time. This
//! walk reads each directory once and stats entries relative to it (`fstatat` on the directory's
//! descriptor, through std's `DirEntry::metadata`), and builds the same keys and entity tags as
//! object_store (`"<inode>-<mtime µs>-<size>"` in hex), so objects listed here can be read,
//! compared and conditionally fetched through object_store as usual.

use std::path::Path;
use std::time::SystemTime;

use crate::{Error, Object};

/// Lists every file below `dir`, recursively, following symbolic links that stay below `base`
/// (a link that leads outside it, or back to a directory above itself, is an error naming it).
/// Keys are `/`-joined paths relative to `base`. A missing `dir` lists as empty.
pub(crate) fn list_dir(base: &Path, dir: &Path) -> Result<Vec<Object>, Error> {
    let mut objects = Vec::new();
    let io = |path: &Path, source: std::io::Error| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let refused = |path: &Path, why: String| {
        io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
        )
    };
    // The source's real place: links are judged against it, wherever the source itself points.
    let root = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&current, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io(&current, e))?;
            let kind = entry.file_type().map_err(|e| io(&entry.path(), e))?;
            let metadata = if kind.is_symlink() {
                let path = entry.path();
                let target = match std::fs::canonicalize(&path) {
                    Ok(target) => target,
                    // A dangling link is not an object.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        return Err(refused(
                            &path,
                            format!(
                                "this symbolic link cannot be followed ({e}): a link loop? Remove or fix the link"
                            ),
                        ));
                    }
                };
                if !target.starts_with(&root) {
                    return Err(refused(
                        &path,
                        format!(
                            "this symbolic link leads to {}, outside the source {}; sources are read only below their root: copy the file in, or give the source where the files really are",
                            target.display(),
                            root.display()
                        ),
                    ));
                }
                let metadata = std::fs::metadata(&target).map_err(|e| io(&path, e))?;
                let here = std::fs::canonicalize(&current).unwrap_or_else(|_| current.clone());
                if metadata.is_dir() && here.starts_with(&target) {
                    return Err(refused(
                        &path,
                        format!(
                            "this symbolic link leads back to {}, a directory that holds it: a link loop; remove the link",
                            target.display()
                        ),
                    ));
                }
                metadata
            } else if kind.is_dir() {
                pending.push(entry.path());
                continue;
            } else {
                match entry.metadata() {
                    Ok(metadata) => metadata,
                    // Deleted while we listed.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(&entry.path(), e)),
                }
            };
            if metadata.is_dir() {
                pending.push(entry.path());
                continue;
            }
            if !metadata.is_file() {
                continue;
            }
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(io(
                    &entry.path(),
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the file name is not valid UTF-8; rename it",
                    ),
                ));
            };
            // object_store writes `<name>#<digits>` while a put is in flight; it is not an object.
            if let Some((_, suffix)) = name.rsplit_once('#')
                && !suffix.is_empty()
                && suffix.bytes().all(|b| b.is_ascii_digit())
            {
                continue;
            }
            let parent = current.strip_prefix(base).unwrap_or(&current);
            let mut key = String::with_capacity(parent.as_os_str().len() + name.len() + 1);
            for part in parent.iter() {
                key.push_str(&part.to_string_lossy());
                key.push('/');
            }
            key.push_str(name);
            objects.push(object(key, &metadata));
        }
    }
    Ok(objects)
}

fn object(key: String, metadata: &std::fs::Metadata) -> Object {
    use std::os::unix::fs::MetadataExt;
    let micros = metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .unwrap_or_default()
        .as_micros();
    let size = metadata.len();
    Object {
        key,
        size,
        etag: Some(format!("\"{:x}-{micros:x}-{size:x}\"", metadata.ino())),
        last_modified_us: i64::try_from(micros).unwrap_or(i64::MAX),
    }
}
