//! Ingestion-dump formats: the telemetry sink's NDJSON of PubSub messages and
//! Parquet / Avro exports of the decoded-payload table
//! (`document_id`, `submission_timestamp`, `payload` = gzip of the ping JSON).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use flate2::write::GzEncoder;
use flate2::Compression;

use super::write_atomic;

/// One row of the decoded-payload table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRow {
    pub document_id: String,
    /// Microseconds since the Unix epoch, UTC.
    pub submission_timestamp: i64,
    /// The ping JSON, gzip-compressed.
    pub payload: Vec<u8>,
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(bytes.len() / 2), Compression::fast());
    encoder
        .write_all(bytes)
        .expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

/// The Arrow schema of the decoded-payload table.
pub fn decoded_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("document_id", DataType::Utf8, false),
        Field::new(
            "submission_timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("payload", DataType::Binary, false),
    ]))
}

/// The Avro schema of the decoded-payload table.
pub const DECODED_AVRO_SCHEMA: &str = r#"{
  "type": "record",
  "name": "decoded_prio",
  "namespace": "org.mozilla.telemetry",
  "fields": [
    {"name": "document_id", "type": "string"},
    {"name": "submission_timestamp", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "payload", "type": "bytes"}
  ]
}"#;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DumpError + '_ {
    move |source| DumpError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Writes NDJSON lines (each already serialized, without the newline).
pub fn write_ndjson(path: &Path, lines: &[Vec<u8>]) -> Result<(), DumpError> {
    write_atomic(path, |file| {
        let mut out = std::io::BufWriter::new(file);
        for line in lines {
            out.write_all(line)?;
            out.write_all(b"\n")?;
        }
        out.flush()
    })
    .map_err(io_err(path))
}

/// Writes decoded-table rows as one Parquet file.
pub fn write_parquet(path: &Path, rows: &[DecodedRow]) -> Result<(), DumpError> {
    let batch = RecordBatch::try_new(
        decoded_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.document_id.as_str()),
            )) as ArrayRef,
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    rows.iter().map(|r| r.submission_timestamp),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(BinaryArray::from_iter_values(
                rows.iter().map(|r| r.payload.as_slice()),
            )),
        ],
    )
    .map_err(|e| io_err(path)(other(e)))?;
    write_atomic(path, |file| {
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).map_err(other)?;
        writer.write(&batch).map_err(other)?;
        writer.close().map_err(other)?;
        Ok(())
    })
    .map_err(io_err(path))
}

/// Writes decoded-table rows as one Avro object container file.
pub fn write_avro(path: &Path, rows: &[DecodedRow]) -> Result<(), DumpError> {
    use apache_avro::types::{Record, Value};
    let schema = apache_avro::Schema::parse_str(DECODED_AVRO_SCHEMA).expect("schema is valid");
    write_atomic(path, |file| {
        let mut writer =
            apache_avro::Writer::new(&schema, std::io::BufWriter::new(file)).map_err(other)?;
        for row in rows {
            let mut record = Record::new(&schema).expect("schema is a record");
            record.put("document_id", Value::String(row.document_id.clone()));
            record.put(
                "submission_timestamp",
                Value::TimestampMicros(row.submission_timestamp),
            );
            record.put("payload", Value::Bytes(row.payload.clone()));
            writer.append_value(record).map_err(other)?;
        }
        writer.into_inner().map_err(other)?.flush()
    })
    .map_err(io_err(path))
}
