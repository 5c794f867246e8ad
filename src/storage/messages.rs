//! Rows the two servers exchange through buckets, one file per staged part:
//! `verify1` carries each report's verifier share (or why there is none),
//! `verify2` each report's verdict. Both are Parquet with a `status` column
//! that is `ok` or a rejection reason; rows are sorted by report id.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;

use super::staged::StagedFormat;

/// `status` of a row that is fine.
pub const OK: &str = "ok";

/// One row of a staged part, as `process` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedRow {
    pub id: String,
    pub payload: Vec<u8>,
}

/// One row of a verify1 or verify2 message. Serializable so that workers
/// can pass rows to the worker that writes the part's message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MessageRow {
    pub id: String,
    pub status: String,
    /// The verifier share (verify1); empty otherwise.
    #[serde(with = "serde_bytes")]
    pub share: Vec<u8>,
}

/// A message or part that cannot be decoded: a clear error naming it, never a panic.
#[derive(Debug, thiserror::Error)]
#[error("{name}: malformed: {message}")]
pub struct MalformedObject {
    pub name: String,
    pub message: String,
}

fn message_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("share", DataType::Binary, false),
    ]))
}

pub fn encode_message(rows: &[MessageRow]) -> Vec<u8> {
    let batch = RecordBatch::try_new(
        message_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.id.as_str()),
            )) as ArrayRef,
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.status.as_str()),
            )),
            Arc::new(BinaryArray::from_iter_values(
                rows.iter().map(|r| r.share.as_slice()),
            )),
        ],
    )
    .expect("columns match the schema");
    super::parquet_bytes(&batch, Some(super::random_columns(&["id", "share"])))
}

/// Reads every record batch of a Parquet object.
fn parquet_batches(name: &str, data: Bytes) -> Result<Vec<RecordBatch>, MalformedObject> {
    let malformed = |e: &dyn std::fmt::Display| MalformedObject {
        name: name.to_string(),
        message: e.to_string(),
    };
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(data)
        .and_then(|b| b.build())
        .map_err(|e| malformed(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed(&e))
}

fn column<'a>(
    name: &str,
    batch: &'a RecordBatch,
    col: &str,
) -> Result<&'a Arc<dyn Array>, MalformedObject> {
    batch.column_by_name(col).ok_or_else(|| MalformedObject {
        name: name.to_string(),
        message: format!("no {col:?} column"),
    })
}

fn strings<'a>(
    name: &str,
    batch: &'a RecordBatch,
    col: &str,
) -> Result<&'a StringArray, MalformedObject> {
    column(name, batch, col)?
        .as_string_opt::<i32>()
        .ok_or_else(|| MalformedObject {
            name: name.to_string(),
            message: format!("column {col:?} is not utf8"),
        })
}

fn binaries<'a>(
    name: &str,
    batch: &'a RecordBatch,
    col: &str,
) -> Result<&'a BinaryArray, MalformedObject> {
    column(name, batch, col)?
        .as_binary_opt::<i32>()
        .ok_or_else(|| MalformedObject {
            name: name.to_string(),
            message: format!("column {col:?} is not binary"),
        })
}

pub fn decode_message(name: &str, data: Bytes) -> Result<Vec<MessageRow>, MalformedObject> {
    let mut rows = Vec::new();
    for batch in parquet_batches(name, data)? {
        let (ids, status, shares) = (
            strings(name, &batch, "id")?,
            strings(name, &batch, "status")?,
            binaries(name, &batch, "share")?,
        );
        for i in 0..batch.num_rows() {
            rows.push(MessageRow {
                id: ids.value(i).to_string(),
                status: status.value(i).to_string(),
                share: shares.value(i).to_vec(),
            });
        }
    }
    Ok(rows)
}

/// Reads a staged part written by `stage`, in either format.
pub fn decode_staged(
    name: &str,
    format: StagedFormat,
    data: Bytes,
) -> Result<Vec<StagedRow>, MalformedObject> {
    let malformed = |message: String| MalformedObject {
        name: name.to_string(),
        message,
    };
    match format {
        StagedFormat::Parquet => {
            let mut rows = Vec::new();
            for batch in parquet_batches(name, data)? {
                let (ids, payloads) = (
                    strings(name, &batch, "id")?,
                    binaries(name, &batch, "payload")?,
                );
                for i in 0..batch.num_rows() {
                    rows.push(StagedRow {
                        id: ids.value(i).to_string(),
                        payload: payloads.value(i).to_vec(),
                    });
                }
            }
            Ok(rows)
        }
        StagedFormat::Ndjson => data
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
            .map(|(n, line)| {
                #[derive(serde::Deserialize)]
                struct Line {
                    id: String,
                    payload: String,
                }
                let line: Line = serde_json::from_slice(line)
                    .map_err(|e| malformed(format!("line {}: {e}", n + 1)))?;
                // A share that is not base64 stays a row: it is rejected per report, not per file.
                let payload = crate::wire::ping::decode_base64(&line.payload).unwrap_or_default();
                Ok(StagedRow {
                    id: line.id,
                    payload,
                })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_a_named_error() {
        let rows = vec![
            MessageRow {
                id: "01".into(),
                status: OK.into(),
                share: vec![1, 2, 3],
            },
            MessageRow {
                id: "02".into(),
                status: "undecryptable".into(),
                share: vec![],
            },
        ];
        let bytes = Bytes::from(encode_message(&rows));
        assert_eq!(decode_message("m", bytes.clone()).unwrap(), rows);
        let err = decode_message(
            "peer/verify1/part-00000.parquet",
            bytes.slice(0..bytes.len() / 2),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("peer/verify1/part-00000.parquet: malformed"),
            "{err}"
        );
    }
}
