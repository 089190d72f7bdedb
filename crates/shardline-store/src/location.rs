//! Parsing of the store URLs that users type: plain paths, `file://`, `memory://` and `s3://`.
//!
//! This module is pure: it turns a string into a [`Location`] without touching any store, so that a
//! bad URL is reported before any work starts.

use std::path::{Component, PathBuf};

use crate::{Error, Result};

/// Which kind of store a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Local files: a plain path or a `file://` URL.
    Local,
    /// A process-wide in-memory store, `memory://name/prefix`, used by tests.
    Memory,
    /// An S3-compatible object store, `s3://bucket/prefix`.
    S3,
}

/// A parsed store URL: which store, which bucket (or memory store name), and the prefix below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The kind of store.
    pub scheme: Scheme,
    /// The S3 bucket, or the name of the in-memory store; empty for local files.
    pub bucket: String,
    /// The prefix inside the store, without leading or trailing `/`. For local files this is the
    /// absolute path without its leading `/`.
    pub prefix: String,
}

impl Location {
    /// Parses what a user typed. Relative local paths are made absolute against the current
    /// directory, and `.` and `..` are resolved lexically.
    pub fn parse(input: &str) -> Result<Location> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: input.to_string(),
            reason: reason.to_string(),
        };
        if input.trim().is_empty() {
            return Err(invalid(
                "it is empty; give a path, file://, s3:// or memory:// URL",
            ));
        }
        if let Some(rest) = input.strip_prefix("s3://") {
            let (bucket, prefix) = split_bucket(rest);
            if bucket.is_empty() {
                return Err(invalid("an s3:// URL needs a bucket: s3://bucket/prefix"));
            }
            return Ok(Location {
                scheme: Scheme::S3,
                bucket: bucket.to_string(),
                prefix: clean_prefix(prefix).map_err(|r| invalid(&r))?,
            });
        }
        if let Some(rest) = input.strip_prefix("memory://") {
            let (name, prefix) = split_bucket(rest);
            return Ok(Location {
                scheme: Scheme::Memory,
                bucket: name.to_string(),
                prefix: clean_prefix(prefix).map_err(|r| invalid(&r))?,
            });
        }
        let path = if let Some(rest) = input.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(invalid(
                    "a file:// URL needs an absolute path: file:///data/pets",
                ));
            }
            PathBuf::from(rest)
        } else if let Some((scheme, _)) = input.split_once("://") {
            return Err(invalid(&format!(
                "the scheme {scheme}:// is not supported; use a local path, file://, s3:// or memory://"
            )));
        } else {
            PathBuf::from(input)
        };
        let absolute = if path.is_absolute() {
            path
        } else {
            std::env::current_dir()
                .map_err(|e| invalid(&format!("the current directory cannot be read: {e}")))?
                .join(path)
        };
        let mut parts: Vec<String> = Vec::new();
        for component in absolute.components() {
            match component {
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                Component::ParentDir => {
                    parts.pop();
                }
                Component::Normal(part) => {
                    let part = part
                        .to_str()
                        .ok_or_else(|| invalid("the path is not valid UTF-8"))?;
                    parts.push(part.to_string());
                }
            }
        }
        Ok(Location {
            scheme: Scheme::Local,
            bucket: String::new(),
            prefix: parts.join("/"),
        })
    }

    /// The canonical URI of this location with a trailing `/`: `s3://bucket/prefix/`,
    /// `file:///abs/path/` or `memory://name/prefix/`. It is the `prefix` of the manifests
    /// written for it.
    pub fn uri(&self) -> String {
        let body = match self.scheme {
            Scheme::S3 => format!("s3://{}/{}", self.bucket, self.prefix),
            Scheme::Memory => format!("memory://{}/{}", self.bucket, self.prefix),
            Scheme::Local => format!("file:///{}", self.prefix),
        };
        if body.ends_with('/') {
            body
        } else {
            format!("{body}/")
        }
    }

    /// The location of `relative` below this one.
    pub fn join(&self, relative: &str) -> Location {
        let relative = relative.trim_matches('/');
        let prefix = match (self.prefix.is_empty(), relative.is_empty()) {
            (_, true) => self.prefix.clone(),
            (true, false) => relative.to_string(),
            (false, false) => format!("{}/{}", self.prefix, relative),
        };
        Location {
            prefix,
            ..self.clone()
        }
    }

    /// Whether `other` is this location or below it (same store, and a prefix that starts at a
    /// `/` boundary of this one: `data/pets` holds `data/pets/x`, not `data/pets-raw`).
    pub fn contains(&self, other: &Location) -> bool {
        self.scheme == other.scheme
            && self.bucket == other.bucket
            && (self.prefix.is_empty()
                || other.prefix == self.prefix
                || other.prefix.starts_with(&format!("{}/", self.prefix)))
    }

    /// Whether either location holds the other: writing to one may touch the other.
    pub fn overlaps(&self, other: &Location) -> bool {
        self.contains(other) || other.contains(self)
    }

    /// For local locations, the directory on disk.
    pub fn local_path(&self) -> Option<PathBuf> {
        (self.scheme == Scheme::Local).then(|| PathBuf::from(format!("/{}", self.prefix)))
    }
}

fn split_bucket(rest: &str) -> (&str, &str) {
    match rest.split_once('/') {
        Some((bucket, prefix)) => (bucket, prefix),
        None => (rest, ""),
    }
}

fn clean_prefix(prefix: &str) -> std::result::Result<String, String> {
    let parts: Vec<&str> = prefix.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err("a prefix may not contain `.` or `..` segments".to_string());
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected_uri: &str) {
        let location = Location::parse(input).expect("valid URL");
        assert_eq!(location.uri(), expected_uri, "for input {input}");
    }

    #[test]
    fn parses_each_scheme() {
        check("s3://bucket/pets", "s3://bucket/pets/");
        check("s3://bucket/pets/", "s3://bucket/pets/");
        check("s3://bucket", "s3://bucket/");
        check("memory://t1/a//b/", "memory://t1/a/b/");
        check("/data/pets", "file:///data/pets/");
        check("file:///data/pets/", "file:///data/pets/");
        check("/data/./x/../pets", "file:///data/pets/");
    }

    #[test]
    fn relative_paths_become_absolute() {
        let location = Location::parse("some/dir").expect("valid");
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(location.local_path().expect("local"), cwd.join("some/dir"));
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in ["", "gs://b/x", "s3:///x", "file://relative", "s3://b/../x"] {
            let err = Location::parse(bad).expect_err(bad).to_string();
            assert!(err.contains("URL"), "{bad}: {err}");
        }
    }

    #[test]
    fn join_appends_relative_paths() {
        let location = Location::parse("s3://b/pets").expect("valid");
        assert_eq!(location.join("cat/").uri(), "s3://b/pets/cat/");
        assert_eq!(
            Location::parse("s3://b").expect("valid").join("x").prefix,
            "x"
        );
    }
}
