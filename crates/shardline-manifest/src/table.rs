//! The dataset table: one row per object, written as Parquet and CSV.

use std::sync::Arc;

use arrow_array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::Error;
use crate::split::Channel;

/// One object of the dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The key relative to the source, `<class_label>/<rest>`.
    pub key: String,
    /// Index of the class label in the label list (the label id).
    pub label: u32,
    /// The channel the object was assigned to.
    pub channel: Channel,
    /// Size in bytes.
    pub size: u64,
    /// The store's entity tag, if any.
    pub etag: Option<String>,
    /// Last modification, microseconds since the Unix epoch.
    pub last_modified_us: i64,
}

const BATCH: usize = 64 * 1024;

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("class_label", DataType::Utf8, false),
        Field::new("label", DataType::Int32, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("size", DataType::Int64, false),
        Field::new("etag", DataType::Utf8, true),
        Field::new(
            "last_modified",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]))
}

/// Encodes the table as Parquet (snappy-compressed, one row group per million rows).
pub fn to_parquet(rows: &[Row], labels: &[String]) -> Result<Vec<u8>, Error> {
    let fail = |e: &dyn std::fmt::Display| Error::Encode {
        file: "dataset.parquet".into(),
        reason: e.to_string(),
    };
    let schema = schema();
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by(shardline_lineage::PRODUCER.to_string())
        .build();
    let mut out = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut out, schema.clone(), Some(props)).map_err(|e| fail(&e))?;
    for chunk in rows.chunks(BATCH) {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(chunk.iter().map(|r| &r.key))),
            Arc::new(StringArray::from_iter_values(
                chunk.iter().map(|r| &labels[r.label as usize]),
            )),
            Arc::new(Int32Array::from_iter_values(
                chunk.iter().map(|r| r.label as i32),
            )),
            Arc::new(StringArray::from_iter_values(
                chunk.iter().map(|r| r.channel.name()),
            )),
            Arc::new(Int64Array::from_iter_values(
                chunk.iter().map(|r| r.size as i64),
            )),
            Arc::new(StringArray::from_iter(
                chunk.iter().map(|r| r.etag.as_deref()),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    chunk.iter().map(|r| r.last_modified_us),
                )
                .with_timezone("UTC"),
            ),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| fail(&e))?;
        writer.write(&batch).map_err(|e| fail(&e))?;
    }
    writer.close().map_err(|e| fail(&e))?;
    Ok(out)
}

/// Encodes the table as CSV with a header row; `last_modified` is RFC 3339 in UTC.
pub fn to_csv(rows: &[Row], labels: &[String]) -> Result<Vec<u8>, Error> {
    let fail = |e: csv::Error| Error::Encode {
        file: "dataset.csv".into(),
        reason: e.to_string(),
    };
    let mut writer = csv::Writer::from_writer(Vec::with_capacity(rows.len() * 96));
    writer
        .write_record([
            "key",
            "class_label",
            "label",
            "channel",
            "size",
            "etag",
            "last_modified",
        ])
        .map_err(fail)?;
    let mut label_text = String::new();
    let mut size_text = String::new();
    for row in rows {
        use std::fmt::Write as _;
        label_text.clear();
        size_text.clear();
        let _ = write!(label_text, "{}", row.label);
        let _ = write!(size_text, "{}", row.size);
        let modified = chrono::DateTime::from_timestamp_micros(row.last_modified_us)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            .unwrap_or_default();
        writer
            .write_record([
                row.key.as_str(),
                labels[row.label as usize].as_str(),
                label_text.as_str(),
                row.channel.name(),
                size_text.as_str(),
                row.etag.as_deref().unwrap_or(""),
                modified.as_str(),
            ])
            .map_err(fail)?;
    }
    writer.into_inner().map_err(|e| Error::Encode {
        file: "dataset.csv".into(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    fn rows() -> (Vec<Row>, Vec<String>) {
        let labels = vec!["cat".to_string(), "dog".to_string()];
        let rows = vec![
            Row {
                key: "cat/1.jpg".into(),
                label: 0,
                channel: Channel::Train,
                size: 10,
                etag: Some("\"e1\"".into()),
                last_modified_us: 1_700_000_000_000_000,
            },
            Row {
                key: "dog/a,b.jpg".into(),
                label: 1,
                channel: Channel::Test,
                size: 20,
                etag: None,
                last_modified_us: 0,
            },
        ];
        (rows, labels)
    }

    #[test]
    fn parquet_round_trips_through_a_reader() {
        let (rows, labels) = rows();
        let bytes = to_parquet(&rows, &labels).expect("parquet");
        let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).expect("reader");
        assert_eq!(reader.metadata().file_metadata().num_rows(), 2);
        let fields: Vec<String> = reader
            .metadata()
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        assert_eq!(
            fields,
            [
                "key",
                "class_label",
                "label",
                "channel",
                "size",
                "etag",
                "last_modified"
            ]
        );
        let first = reader
            .get_row_iter(None)
            .expect("rows")
            .next()
            .expect("row")
            .expect("ok");
        let text = first.to_string();
        assert!(
            text.contains("cat/1.jpg") && text.contains("train"),
            "{text}"
        );
        // The same rows give the same bytes.
        assert_eq!(
            to_parquet(&rows, &labels).expect("parquet"),
            to_parquet(&rows, &labels).expect("parquet")
        );
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let (rows, labels) = rows();
        let text = String::from_utf8(to_csv(&rows, &labels).expect("csv")).expect("utf-8");
        let expected = "key,class_label,label,channel,size,etag,last_modified\n\
            cat/1.jpg,cat,0,train,10,\"\"\"e1\"\"\",2023-11-14T22:13:20.000000Z\n\
            \"dog/a,b.jpg\",dog,1,test,20,,1970-01-01T00:00:00.000000Z\n";
        assert_eq!(text, expected);
    }
}
