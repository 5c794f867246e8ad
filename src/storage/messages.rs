//! What the two servers exchange through buckets, and how each is encoded.
//!
//! - `verify1` and `verify2`: one Parquet file per staged part, a row per
//!   report with its `status` (`ok` or a rejection reason), for verify1 the
//!   verifier share, and for verify2 the report's nonce. The same rows hold
//!   a server's stored verification states.
//! - `aggregate`: one JSON object per batch with the aggregate share and
//!   what it covers (count and digest of report ids).
//!
//! Decoders name the object and never panic: the peer's bytes are untrusted.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::location::StorageError;
use super::tables::{binaries, malformed, parquet_bytes, random_columns, record_batches, strings};
use crate::wire::protocol::{
    by_reason, parse_status, status_name, RejectionCounts, Status, StatusCounts, Step,
};
use crate::wire::vdaf::{Nonce, NONCE_LEN};

/// One row of a verify1 or verify2 message. Serializable so that workers
/// can pass rows to the worker that writes the part's message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRow {
    pub id: String,
    pub status: Status,
    /// The verifier share (verify1) or verification state (stored states); empty otherwise.
    #[serde(with = "serde_bytes")]
    pub share: Vec<u8>,
    /// The report's nonce as this server opened it (verify2 and stored
    /// states, for reports that opened); `None` otherwise.
    pub nonce: Option<Nonce>,
}

fn message_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("share", DataType::Binary, false),
        Field::new("nonce", DataType::Binary, false),
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
                rows.iter().map(|r| status_name(r.status)),
            )),
            Arc::new(BinaryArray::from_iter_values(
                rows.iter().map(|r| r.share.as_slice()),
            )),
            Arc::new(BinaryArray::from_iter_values(
                rows.iter().map(|r| r.nonce.as_ref().map_or(&[][..], |n| n)),
            )),
        ],
    )
    .expect("columns match the schema");
    parquet_bytes(&batch, Some(random_columns(&["id", "share", "nonce"])))
}

/// Reads a message written by [`encode_message`]; a status this version
/// does not know, or a nonce of another length, makes the object malformed.
pub fn decode_message(url: &str, data: Bytes) -> Result<Vec<MessageRow>, StorageError> {
    let mut rows = Vec::new();
    for batch in record_batches(url, data)? {
        let (ids, status, shares, nonces) = (
            strings(url, &batch, "id")?,
            strings(url, &batch, "status")?,
            binaries(url, &batch, "share")?,
            binaries(url, &batch, "nonce")?,
        );
        for i in 0..batch.num_rows() {
            let status = parse_status(status.value(i))
                .ok_or_else(|| malformed(url, format!("unknown status {:?}", status.value(i))))?;
            let nonce = match nonces.value(i) {
                [] => None,
                bytes => Some(Nonce::try_from(bytes).map_err(|_| {
                    malformed(
                        url,
                        format!("a nonce of {} bytes, not {NONCE_LEN}", bytes.len()),
                    )
                })?),
            };
            rows.push(MessageRow {
                id: ids.value(i).to_string(),
                status,
                share: shares.value(i).to_vec(),
                nonce,
            });
        }
    }
    Ok(rows)
}

/// The aggregate message: one server's share of a batch, with what it covers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AggregateMessage {
    pub batch_id: String,
    pub vdaf: String,
    pub reports_total: u64,
    pub reports_aggregated: u64,
    /// Hex SHA-256 over the parts' digests of aggregated report ids, in part order.
    pub digest: String,
    /// The encoded aggregate share, base64; `None` for a batch below its
    /// `min_batch_size`, whose share never leaves the server.
    pub share: Option<String>,
    #[serde(with = "by_reason")]
    pub rejected: RejectionCounts,
}

impl AggregateMessage {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("JSON")
    }

    pub fn decode(url: &str, data: &[u8]) -> Result<Self, StorageError> {
        serde_json::from_slice(data)
            .map_err(|e| malformed(url, format!("not an aggregate message: {e}")))
    }
}

/// What the servers compare before a run (`hello/_HELLO.json`): the protocol
/// version, each batch's parameters and threshold, the replay window, and a
/// fingerprint of `SHARED_SECRET` (never the secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HelloMessage {
    pub protocol: u32,
    /// Anti-replay's window, which both must use to decide alike. (Absent
    /// from an older version's hello, which then differs in `protocol`.)
    #[serde(default)]
    pub replay_window_days: u32,
    /// Batch id -> its VDAF parameters and `min_batch_size`, as JSON.
    pub batches: BTreeMap<String, serde_json::Value>,
    pub shared_secret_fingerprint: String,
}

impl HelloMessage {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("JSON")
    }

    pub fn decode(url: &str, data: &[u8]) -> Result<Self, StorageError> {
        serde_json::from_slice(data).map_err(|e| malformed(url, format!("not a hello: {e}")))
    }
}

/// A step's `_SUMMARY.json`, sent with its `_SUCCESS`: `{"STEP/BATCH/STATUS": reports}`.
pub fn encode_step_summary(step: Step, counts: &StatusCounts) -> Vec<u8> {
    let flat: BTreeMap<String, u64> = counts
        .iter()
        .map(|((batch_id, status), n)| (format!("{step}/{batch_id}/{}", status_name(*status)), *n))
        .collect();
    serde_json::to_vec_pretty(&flat).expect("JSON")
}

/// Whether two message files hold the same rows, however they were encoded.
pub fn same_rows(a: &Bytes, b: &Bytes) -> bool {
    a == b
        || decode_message("", a.clone())
            .is_ok_and(|x| decode_message("", b.clone()).is_ok_and(|y| x == y))
}

/// Whether two JSON objects hold the same values, however they were formatted.
pub fn same_json(a: &Bytes, b: &Bytes) -> bool {
    let parse = |bytes: &Bytes| serde_json::from_slice::<serde_json::Value>(bytes).ok();
    a == b || parse(a).is_some_and(|x| Some(x) == parse(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Rejection;

    fn rows() -> Vec<MessageRow> {
        vec![
            MessageRow {
                id: "01".into(),
                status: Ok(()),
                share: vec![1, 2, 3],
                nonce: Some([9; NONCE_LEN]),
            },
            MessageRow {
                id: "02".into(),
                status: Err(Rejection::Undecryptable),
                share: vec![],
                nonce: None,
            },
        ]
    }

    #[test]
    fn messages_round_trip_and_garbage_is_a_named_error() {
        let bytes = Bytes::from(encode_message(&rows()));
        assert_eq!(decode_message("m", bytes.clone()).unwrap(), rows());
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

    /// A one-row message as a hostile peer might write it.
    fn one_row(status: &str, nonce: &[u8]) -> Bytes {
        let batch = RecordBatch::try_new(
            message_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(["01"])) as ArrayRef,
                Arc::new(StringArray::from_iter_values([status])),
                Arc::new(BinaryArray::from_iter_values([b"".as_slice()])),
                Arc::new(BinaryArray::from_iter_values([nonce])),
            ],
        )
        .unwrap();
        parquet_bytes(&batch, None).into()
    }

    #[test]
    fn a_status_this_version_does_not_know_is_malformed() {
        let err = decode_message("peer/x", one_row("fine_trust_me", b"")).unwrap_err();
        assert!(err.to_string().contains("fine_trust_me"), "{err}");
    }

    #[test]
    fn a_nonce_of_another_length_is_malformed() {
        let err = decode_message("peer/x", one_row("ok", &[1; 15])).unwrap_err();
        assert!(err.to_string().contains("nonce of 15 bytes"), "{err}");
    }

    #[test]
    fn write_once_compares_content_not_encoding() {
        let ours = Bytes::from(encode_message(&rows()));
        // The same rows as another version might have encoded them: other writer settings.
        let batch = record_batches("", ours.clone()).unwrap().remove(0);
        let theirs = Bytes::from(parquet_bytes(&batch, None));
        assert_ne!(ours, theirs);
        assert!(same_rows(&ours, &theirs));
        let mut changed = rows();
        changed[0].status = Err(Rejection::InvalidProof);
        assert!(!same_rows(&ours, &Bytes::from(encode_message(&changed))));
        assert!(!same_rows(&ours, &Bytes::from_static(b"not parquet")));

        assert!(same_json(
            &Bytes::from_static(b"{\"a\": 1, \"b\": [2]}"),
            &Bytes::from_static(b"{\n  \"b\": [2],\n  \"a\": 1\n}")
        ));
        assert!(!same_json(
            &Bytes::from_static(b"{\"a\": 1}"),
            &Bytes::from_static(b"{\"a\": 2}")
        ));
    }
}
