//! A published batch, in the two forms analysts read: `aggregate.json`
//! (the outcome with the batch's parameters) and `aggregate.parquet` (one
//! row per element of the aggregate).

use std::sync::Arc;

use arrow::array::{ArrayRef, Decimal128Array, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;

use serde::{Deserialize, Serialize};

use super::location::StorageError;
use super::tables::{malformed, parquet_bytes};
use crate::wire::config::BatchSpec;
use crate::wire::protocol::{by_reason, BatchOutcome, RejectionCounts};

/// `aggregate.json`: batch id, VDAF and parameters, counts, rejections by
/// reason, and the aggregate. Elements are JSON integers of any size, written
/// exactly (a sum of 64-bit values can pass 2^64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedBatch {
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

pub fn published_json(outcome: &BatchOutcome, spec: &BatchSpec) -> Vec<u8> {
    let published = PublishedBatch {
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

/// `aggregate.parquet`, columns `batch_id, vdaf, reports_total,
/// reports_aggregated, index, value`. `value` is DECIMAL(38, 0): sums of
/// 64-bit measurements over up to 2^32 reports stay far below 10^38.
pub fn encode_published(outcome: &BatchOutcome) -> Vec<u8> {
    let aggregate = outcome.aggregate.as_deref().unwrap_or_default();
    let n = aggregate.len();
    let schema = Arc::new(Schema::new(vec![
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
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                outcome.batch_id.as_str(),
                n,
            ))) as ArrayRef,
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
