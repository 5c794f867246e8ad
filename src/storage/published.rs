//! The published aggregate as a Parquet table: one row per element.

use std::sync::Arc;

use arrow::array::{ArrayRef, Decimal128Array, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;

/// Columns: `batch_id, vdaf, reports_total, reports_aggregated, index, value`.
/// `value` is DECIMAL(38, 0): sums of 64-bit measurements over up to 2^32
/// reports stay far below 10^38.
pub fn encode_published(
    batch_id: &str,
    vdaf: &str,
    reports_total: u64,
    reports_aggregated: u64,
    aggregate: &[u128],
) -> Vec<u8> {
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
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                batch_id, n,
            ))) as ArrayRef,
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(vdaf, n))),
            Arc::new(UInt64Array::from_iter_values(std::iter::repeat_n(
                reports_total,
                n,
            ))),
            Arc::new(UInt64Array::from_iter_values(std::iter::repeat_n(
                reports_aggregated,
                n,
            ))),
            Arc::new(UInt32Array::from_iter_values(0..n as u32)),
            Arc::new(values),
        ],
    )
    .expect("columns match the schema");
    super::parquet_bytes(&batch, None)
}
