//! The one public error type of the store crate.

/// What went wrong while talking to a store. Every variant names the URL it concerns and says what
/// the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL could not be understood.
    #[error("invalid store URL {url:?}: {reason}")]
    InvalidUrl {
        /// What the user gave.
        url: String,
        /// Why it is invalid and what to give instead.
        reason: String,
    },
    /// The object or prefix does not exist.
    #[error("{url} does not exist")]
    NotFound {
        /// The full URL of the missing object or prefix.
        url: String,
    },
    /// The store refused the credentials or the request.
    #[error(
        "{url}: access denied ({source}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's permissions"
    )]
    Denied {
        /// The URL of the request that was refused.
        url: String,
        /// The store's answer.
        source: object_store::Error,
    },
    /// The store could not be reached or answered with an error after retries.
    #[error(
        "{url}: the store failed ({source}); check that it is reachable (AWS_ENDPOINT_URL, AWS_REGION, AWS_ALLOW_HTTP for plain http)"
    )]
    Unavailable {
        /// The URL of the failed request.
        url: String,
        /// The underlying error, after retries.
        source: object_store::Error,
    },
    /// A local file could not be read or written (its permissions, its type, a full disk): a
    /// fault of that file or its file system, which the message names, not of a remote store.
    #[error("{url}: {source}")]
    LocalFile {
        /// The file's URL.
        url: String,
        /// What the file system reported.
        source: object_store::Error,
    },
    /// The store could not be configured from the URL and the environment.
    #[error("{url}: the store cannot be configured: {source}")]
    Config {
        /// The URL being opened.
        url: String,
        /// What object_store reported.
        source: object_store::Error,
    },
    /// A local directory could not be created or read, or a streamed write could not finish.
    #[error("{path}: {source}")]
    Io {
        /// The local path.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A commit record under an output prefix could not be understood.
    #[error("{url}: the pending commit record is damaged ({reason}); remove it and rerun the step")]
    BadCommitRecord {
        /// The URL of the commit record.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// Classifies an object_store error for the object at `url`.
    pub fn from_object_store(url: String, source: object_store::Error) -> Error {
        match source {
            object_store::Error::NotFound { .. } => Error::NotFound { url },
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => Error::Denied { url, source },
            // Local files fail one at a time (EACCES, EISDIR, ENOSPC): no S3 setting is at fault.
            object_store::Error::Generic {
                store: "LocalFileSystem",
                ..
            } => Error::LocalFile { url, source },
            _ => {
                // object_store reports failed S3 listings as `Generic` errors whose text carries the
                // HTTP status and the S3 error code; classify them by that.
                let text = source.to_string();
                let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
                if has(&[
                    "403 Forbidden",
                    "401 Unauthorized",
                    "<Code>AccessDenied</Code>",
                    "<Code>InvalidAccessKeyId</Code>",
                    "<Code>SignatureDoesNotMatch</Code>",
                ]) {
                    Error::Denied { url, source }
                } else if has(&["<Code>NoSuchBucket</Code>"]) {
                    Error::NotFound { url }
                } else {
                    Error::Unavailable { url, source }
                }
            }
        }
    }
}

/// The store crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_file_that_cannot_be_read_is_its_own_fault_not_the_stores() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let source = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(denied),
        };
        let e = Error::from_object_store("file:///data/cat/1.jpg".into(), source);
        assert!(matches!(e, Error::LocalFile { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("file:///data/cat/1.jpg") && text.contains("denied"),
            "{text}"
        );
        assert!(!text.contains("AWS"), "{text}");
    }
}
