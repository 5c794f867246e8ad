//! A published batch, in the two forms analysts read: `aggregate.json`
//! (the outcome with the batch's parameters) and `aggregate.parquet` (one
//! row per element of the aggregate). Both say which date, batch and server
//! they come from, so that files of many days load in one read.

use std::sync::Arc;

use arrow::array::{ArrayRef, Date32Array, Decimal128Array, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;

use serde::{Deserialize, Serialize};

use super::location::StorageError;
use super::tables::{malformed, parquet_bytes};
use crate::wire::config::BatchSpec;
use crate::wire::protocol::{by_reason, BatchOutcome, RejectionCounts};
use crate::wire::Role;

/// Where a published batch comes from.
#[derive(Debug, Clone, Copy)]
pub struct Provenance {
    pub submission_date: chrono::NaiveDate,
    pub server: Role,
}

/// `aggregate.json`: batch id, VDAF and parameters, counts, rejections by
/// reason, and the aggregate. Elements are JSON integers of any size, written
/// exactly (a sum of 64-bit values can pass 2^64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedBatch {
    /// `YYYY-MM-DD`.
    pub submission_date: String,
    /// The server that published it: `a` or `b` (both publish the same sum).
    pub server: String,
    pub batch_id: String,
    pub vdaf: String,
    /// The batch's VDAF parameters, as the config gave them.
    pub parameters: serde_json::Value,
    pub reports_total: u64,
    pub reports_aggregated: u64,
    #[serde(with = "by_reason")]
    pub rejected: RejectionCounts,
    pub aggregate: Vec<u128>,
}

pub fn published_json(outcome: &BatchOutcome, spec: &BatchSpec, from: Provenance) -> Vec<u8> {
    let published = PublishedBatch {
        submission_date: from.submission_date.format("%Y-%m-%d").to_string(),
        server: from.server.to_string(),
        batch_id: outcome.batch_id.clone(),
        vdaf: spec.spec().name().to_string(),
        parameters: serde_json::to_value(spec.spec()).expect("parameters are small numbers"),
        reports_total: outcome.reports_total,
        reports_aggregated: outcome.reports_aggregated,
        rejected: outcome.rejected.clone(),
        aggregate: outcome.aggregate.clone().unwrap_or_default(),
    };
    serde_json::to_vec_pretty(&published).expect("JSON")
}

/// Reads [`published_json`] back.
pub fn decode_published(url: &str, data: &[u8]) -> Result<PublishedBatch, StorageError> {
    serde_json::from_slice(data).map_err(|e| malformed(url, e))
}

/// `aggregate.parquet`, columns `submission_date` (date), `server`,
/// `batch_id, vdaf, reports_total, reports_aggregated, index, value`.
/// `value` is DECIMAL(38, 0): sums of 64-bit measurements over up to 2^32
/// reports stay far below 10^38.
pub fn encode_published(outcome: &BatchOutcome, from: Provenance) -> Vec<u8> {
    let aggregate = outcome.aggregate.as_deref().unwrap_or_default();
    let n = aggregate.len();
    let schema = Arc::new(Schema::new(vec![
        Field::new("submission_date", DataType::Date32, false),
        Field::new("server", DataType::Utf8, false),
        Field::new("batch_id", DataType::Utf8, false),
        Field::new("vdaf", DataType::Utf8, false),
        Field::new("reports_total", DataType::UInt64, false),
        Field::new("reports_aggregated", DataType::UInt64, false),
        Field::new("index", DataType::UInt32, false),
        Field::new("value", DataType::Decimal128(38, 0), false),
    ]));
    let values = Decimal128Array::from_iter_values(
        aggregate
            .iter()
            .map(|&v| i128::try_from(v).unwrap_or(i128::MAX)),
    )
    .with_precision_and_scale(38, 0)
    .expect("valid decimal type");
    let repeat = |v: u64| Arc::new(UInt64Array::from_iter_values(std::iter::repeat_n(v, n)));
    let days = (from.submission_date - chrono::NaiveDate::default()).num_days();
    let server = from.server.to_string();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Date32Array::from_iter_values(std::iter::repeat_n(
                i32::try_from(days).expect("dates of this era"),
                n,
            ))) as ArrayRef,
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                server.as_str(),
                n,
            ))),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                outcome.batch_id.as_str(),
                n,
            ))),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                outcome.vdaf.as_str(),
                n,
            ))),
            repeat(outcome.reports_total),
            repeat(outcome.reports_aggregated),
            Arc::new(UInt32Array::from_iter_values(0..n as u32)),
            Arc::new(values),
        ],
    )
    .expect("columns match the schema");
    parquet_bytes(&batch, None)
}
