//! A published batch, in the two forms analysts read: `aggregate.json`
//! (the outcome with the batch's parameters) and `aggregate.parquet` (one
//! row per element of the aggregate).

use std::sync::Arc;

use arrow::array::{ArrayRef, Decimal128Array, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;

use super::tables::parquet_bytes;
use crate::wire::config::BatchSpec;
use crate::wire::protocol::{by_reason, BatchOutcome};

/// `aggregate.json`: batch id, VDAF and parameters, counts, rejections by
/// reason, and the aggregate.
pub fn published_json(outcome: &BatchOutcome, spec: &BatchSpec) -> Vec<u8> {
    let rejected = by_reason::serialize(&outcome.rejected, serde_json::value::Serializer)
        .expect("counts serialize");
    let json = serde_json::json!({
        "batch_id": outcome.batch_id,
        "vdaf": spec.spec().name(),
        "parameters": spec.spec(),
        "reports_total": outcome.reports_total,
        "reports_aggregated": outcome.reports_aggregated,
        "rejected": rejected,
        "aggregate": outcome.aggregate,
    });
    serde_json::to_vec_pretty(&json).expect("JSON")
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
