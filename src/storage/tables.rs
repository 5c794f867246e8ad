//! Parquet in memory: writing one record batch, writer settings for
//! random-looking columns, and reading columns of untrusted objects as
//! named errors, never panics.

use std::sync::Arc;

use arrow::array::{Array, AsArray, BinaryArray, StringArray};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::contain_decoder_panic;
use super::location::StorageError;

/// A record batch as one in-memory Parquet file.
pub fn parquet_bytes(batch: &RecordBatch, properties: Option<WriterProperties>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), properties)
        .expect("in-memory writer");
    writer.write(batch).expect("in-memory write");
    writer.close().expect("in-memory close");
    out
}

/// Writer settings for tables whose `columns` hold random-looking values
/// (shares, verification states, report ids): dictionaries, statistics and
/// compression only cost time on them. Other columns get Snappy.
pub fn random_columns(columns: &[&str]) -> WriterProperties {
    let mut builder = WriterProperties::builder().set_compression(Compression::SNAPPY);
    for column in columns {
        let path = ColumnPath::from(*column);
        builder = builder
            .set_column_dictionary_enabled(path.clone(), false)
            .set_column_statistics_enabled(path.clone(), EnabledStatistics::None)
            .set_column_compression(path, Compression::UNCOMPRESSED);
    }
    builder.build()
}

/// An object that cannot be decoded: a clear error naming it.
pub fn malformed(url: &str, message: impl std::fmt::Display) -> StorageError {
    StorageError::Malformed {
        url: url.to_string(),
        message: message.to_string(),
    }
}

/// Every record batch of the Parquet object at `url`.
pub fn record_batches(url: &str, data: Bytes) -> Result<Vec<RecordBatch>, StorageError> {
    contain_decoder_panic(|| {
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(data)
            .and_then(|b| b.build())
            .map_err(|e| malformed(url, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| malformed(url, e))
    })
    .map_err(|message| malformed(url, message))?
}

fn column<'a>(
    url: &str,
    batch: &'a RecordBatch,
    col: &str,
) -> Result<&'a Arc<dyn Array>, StorageError> {
    batch
        .column_by_name(col)
        .ok_or_else(|| malformed(url, format!("no {col:?} column")))
}

/// A utf8 column of a batch read from `url`.
pub fn strings<'a>(
    url: &str,
    batch: &'a RecordBatch,
    col: &str,
) -> Result<&'a StringArray, StorageError> {
    column(url, batch, col)?
        .as_string_opt::<i32>()
        .ok_or_else(|| malformed(url, format!("column {col:?} is not utf8")))
}

/// A binary column of a batch read from `url`.
pub fn binaries<'a>(
    url: &str,
    batch: &'a RecordBatch,
    col: &str,
) -> Result<&'a BinaryArray, StorageError> {
    column(url, batch, col)?
        .as_binary_opt::<i32>()
        .ok_or_else(|| malformed(url, format!("column {col:?} is not binary")))
}
