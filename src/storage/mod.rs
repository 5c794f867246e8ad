//! Everything that touches files: ingestion-dump writers (and, with staging,
//! readers) for the sink's NDJSON, Parquet and Avro, and atomic writes.

pub mod dump;
pub mod input;
pub mod location;
pub mod messages;
pub mod published;
pub mod spill;
pub mod staged;

use std::io::Write;
use std::path::Path;

/// Writes `path` atomically: a reader sees the old file or the whole new one.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        write(&mut file)?;
        file.flush()?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A record batch as one in-memory Parquet file.
pub fn parquet_bytes(
    batch: &arrow::record_batch::RecordBatch,
    properties: Option<parquet::file::properties::WriterProperties>,
) -> Vec<u8> {
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
pub fn random_columns(columns: &[&str]) -> parquet::file::properties::WriterProperties {
    use parquet::basic::Compression;
    use parquet::file::properties::{EnabledStatistics, WriterProperties};
    use parquet::schema::types::ColumnPath;
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
