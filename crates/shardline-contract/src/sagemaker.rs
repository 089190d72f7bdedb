//! SageMaker manifest files: the plain `ManifestFile` JSON array and the augmented JSON Lines form.
//!
//! Plain form: `[{"prefix": "s3://bucket/pets/"}, "cat/0001.jpg", ...]`; every entry is a key
//! relative to the prefix. Shardline writes one entry per line so that manifests diff well.

use serde_json::Value;

use crate::Error;

/// A parsed plain manifest: a prefix and keys relative to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The URI every key is relative to, ending in `/`.
    pub prefix: String,
    /// The keys, in file order.
    pub keys: Vec<String>,
}

/// Writes a plain manifest for `keys` under `prefix`.
pub fn write_manifest<'a>(prefix: &str, keys: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 << 16);
    out.extend_from_slice(b"[{\"prefix\":");
    push_json_string(&mut out, prefix);
    out.push(b'}');
    for key in keys {
        out.extend_from_slice(b",\n");
        push_json_string(&mut out, key);
    }
    out.extend_from_slice(b"]\n");
    out
}

/// One record of an augmented manifest.
#[derive(Debug, Clone, Copy)]
pub struct AugmentedRecord<'a> {
    /// The object's full URI.
    pub source_ref: &'a str,
    /// Its class label.
    pub class: &'a str,
    /// Its label id.
    pub class_id: u32,
}

/// Writes an augmented manifest (JSON Lines with `source-ref`, `class` and `class-id`).
pub fn write_augmented<'a>(records: impl IntoIterator<Item = AugmentedRecord<'a>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 << 16);
    for record in records {
        out.extend_from_slice(b"{\"source-ref\":");
        push_json_string(&mut out, record.source_ref);
        out.extend_from_slice(b",\"class\":");
        push_json_string(&mut out, record.class);
        out.extend_from_slice(format!(",\"class-id\":{}}}\n", record.class_id).as_bytes());
    }
    out
}

fn push_json_string(out: &mut Vec<u8>, text: &str) {
    // serde_json's escaping, without building a Value.
    let escaped = serde_json::to_string(text).unwrap_or_else(|_| String::from("\"\""));
    out.extend_from_slice(escaped.as_bytes());
}

/// Parses a plain manifest. `uri` names the file in errors.
pub fn parse_manifest(uri: &str, bytes: &[u8]) -> Result<Manifest, Error> {
    let bad = |reason: String| Error::BadManifest {
        uri: uri.to_string(),
        reason,
    };
    let value: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON ({e})")))?;
    let items = value
        .as_array()
        .ok_or_else(|| bad("it is not a JSON array".into()))?;
    let prefix = items
        .first()
        .and_then(|first| first.get("prefix"))
        .and_then(Value::as_str)
        .ok_or_else(|| bad("the first element must be {\"prefix\": \"<uri>\"}".into()))?;
    if prefix.is_empty() {
        return Err(bad("the prefix is empty".into()));
    }
    let prefix = if prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    };
    let keys = items[1..]
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad(format!("entry {} is not a string key", i + 1)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Manifest { prefix, keys })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_sagemaker_shape() {
        let bytes = write_manifest("s3://bucket/pets/", ["cat/1.jpg", "dog/\"2\".jpg"]);
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        assert_eq!(
            text,
            "[{\"prefix\":\"s3://bucket/pets/\"},\n\"cat/1.jpg\",\n\"dog/\\\"2\\\".jpg\"]\n"
        );
        let parsed = parse_manifest("m", &bytes).expect("parse");
        assert_eq!(parsed.prefix, "s3://bucket/pets/");
        assert_eq!(parsed.keys, vec!["cat/1.jpg", "dog/\"2\".jpg"]);
    }

    #[test]
    fn empty_manifests_are_valid_json() {
        let bytes = write_manifest("file:///d/", std::iter::empty());
        assert!(parse_manifest("m", &bytes).expect("parse").keys.is_empty());
    }

    #[test]
    fn augmented_lines_are_json() {
        let bytes = write_augmented([AugmentedRecord {
            source_ref: "s3://b/p/cat/1.jpg",
            class: "cat",
            class_id: 0,
        }]);
        let value: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(value["source-ref"], "s3://b/p/cat/1.jpg");
        assert_eq!(value["class-id"], 0);
    }

    #[test]
    fn rejects_malformed_manifests() {
        for (bytes, needle) in [
            (&b"{}"[..], "not a JSON array"),
            (b"[]", "first element"),
            (b"[{\"prefix\":\"\"}]", "empty"),
            (b"[{\"prefix\":\"s3://b/\"}, 3]", "entry 1"),
            (b"[", "not JSON"),
        ] {
            let err = parse_manifest("s3://b/x.manifest", bytes)
                .expect_err(needle)
                .to_string();
            assert!(
                err.contains(needle) && err.contains("s3://b/x.manifest"),
                "{err}"
            );
        }
    }
}
