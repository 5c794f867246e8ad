//! Staged partitions: what `stage` writes and `process` reads. One part per
//! (server, batch id, part number), rows sorted by report id, with columns
//! `batch_id, server_id, id, payload` (Parquet) or `{"id", "payload"}` lines
//! (NDJSON, as the original system wrote them).

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use std::io::Write;

use super::location::{Location, StorageError};
use crate::wire::ping::encode_base64;
use crate::wire::report_id::ReportId;
use crate::wire::Role;

/// File format of staged parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StagedFormat {
    Parquet,
    Ndjson,
}

impl StagedFormat {
    /// The format a part's file extension names.
    pub fn of_extension(ext: &str) -> Option<StagedFormat> {
        [StagedFormat::Parquet, StagedFormat::Ndjson]
            .into_iter()
            .find(|f| f.extension() == ext)
    }

    pub fn extension(self) -> &'static str {
        match self {
            StagedFormat::Parquet => "parquet",
            StagedFormat::Ndjson => "ndjson",
        }
    }
}

/// The Arrow schema of a staged Parquet part.
pub fn staged_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("batch_id", DataType::Utf8, false),
        Field::new("server_id", DataType::Utf8, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("payload", DataType::Binary, false),
    ]))
}

/// Share bytes per Parquet row group: parts are written and read a row
/// group at a time, so memory holds a row group, not a part.
const ROW_GROUP_BYTES: usize = 8 << 20;

/// Writes one part's rows (already sorted by report id) for one server.
pub fn write_part(
    format: StagedFormat,
    batch_id: &str,
    role: Role,
    rows: &[(ReportId, &[u8])],
    out: impl std::io::Write + Send,
) -> std::io::Result<()> {
    match format {
        StagedFormat::Ndjson => {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
            for (id, payload) in rows {
                let line =
                    serde_json::json!({"id": hex::encode(id), "payload": encode_base64(payload)});
                serde_json::to_writer(&mut out, &line)?;
                out.write_all(b"\n")?;
            }
            out.flush()
        }
        StagedFormat::Parquet => {
            let properties = super::random_columns(&["id", "payload"]);
            let mut writer = ArrowWriter::try_new(out, staged_schema(), Some(properties))?;
            let mut start = 0;
            while start < rows.len() {
                let mut end = start;
                let mut bytes = 0;
                while end < rows.len() && (end == start || bytes < ROW_GROUP_BYTES) {
                    bytes += rows[end].1.len();
                    end += 1;
                }
                let group = &rows[start..end];
                let batch = RecordBatch::try_new(
                    staged_schema(),
                    vec![
                        Arc::new(StringArray::from_iter_values(
                            group.iter().map(|_| batch_id),
                        )) as ArrayRef,
                        Arc::new(StringArray::from_iter_values(
                            group.iter().map(|_| role.as_str()),
                        )),
                        Arc::new(StringArray::from_iter_values(
                            group.iter().map(|(id, _)| hex::encode(id)),
                        )),
                        Arc::new(BinaryArray::from_iter_values(group.iter().map(|(_, p)| *p))),
                    ],
                )
                .expect("columns match the schema");
                writer.write(&batch)?;
                writer.flush()?;
                start = end;
            }
            writer.close()?;
            Ok(())
        }
    }
}

/// One part's rows for one server, as bytes.
pub fn encode_part(
    format: StagedFormat,
    batch_id: &str,
    role: Role,
    rows: &[(ReportId, &[u8])],
) -> Vec<u8> {
    let mut out = Vec::new();
    write_part(format, batch_id, role, rows, &mut out).expect("writing to memory");
    out
}

/// Where staged parts and markers go for each server.
#[derive(Debug, Clone)]
pub struct StagedLayout {
    /// Per server: the directory holding `batch_id=X/` partitions.
    servers: [Location; 2],
    /// Directories that get `_SUCCESS` and `_SUMMARY.json`.
    markers: Vec<Location>,
}

pub const SUCCESS: &str = "_SUCCESS";
pub const SUMMARY: &str = "_SUMMARY.json";

impl StagedLayout {
    /// One output for both servers: `OUT/submission_date=D/server_id={a,b}/batch_id=X/`.
    pub fn combined(output: &Location, date: &str) -> Self {
        let base = output.child(&format!("submission_date={date}"));
        StagedLayout {
            servers: Role::BOTH.map(|r| base.child(&format!("server_id={r}"))),
            markers: vec![base],
        }
    }

    /// Each server's own bucket, in the `raw/` layout `process` reads: `BUCKET/D/raw/batch_id=X/`.
    pub fn per_server(a: &Location, b: &Location, date: &str) -> Self {
        let servers = [a, b].map(|l| l.child(&format!("{date}/raw")));
        StagedLayout {
            markers: servers.to_vec(),
            servers,
        }
    }

    pub fn part_name(batch_id: &str, part: u32, format: StagedFormat) -> String {
        format!("batch_id={batch_id}/part-{part:05}.{}", format.extension())
    }

    pub fn server(&self, role: Role) -> &Location {
        &self.servers[role.agg_id()]
    }

    pub fn markers(&self) -> &[Location] {
        &self.markers
    }

    /// Removes a previous run's output for this date, `_SUCCESS` first so
    /// that no reader trusts a half-deleted output. The marker directories
    /// hold the server directories in both layouts.
    pub fn clear(&self) -> Result<(), StorageError> {
        for m in &self.markers {
            m.delete(SUCCESS)?;
        }
        for m in &self.markers {
            m.delete_all("")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::messages::decode_staged;

    #[test]
    fn a_large_part_is_written_in_row_groups_and_reads_back_whole() {
        let payloads: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1 << 20]).collect();
        let rows: Vec<(ReportId, &[u8])> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| ([i as u8; 16], p.as_slice()))
            .collect();
        let bytes = encode_part(StagedFormat::Parquet, "x", Role::A, &rows);
        let reader = parquet::file::serialized_reader::SerializedFileReader::new(
            bytes::Bytes::from(bytes.clone()),
        )
        .unwrap();
        use parquet::file::reader::FileReader;
        // 20 MiB of shares in row groups of 8 MiB: 8 + 8 + 4 rows.
        assert_eq!(reader.metadata().num_row_groups(), 3);
        let back = decode_staged("part", StagedFormat::Parquet, bytes.into()).unwrap();
        assert_eq!(back.len(), 20);
        for (row, (id, payload)) in back.iter().zip(&rows) {
            assert_eq!(row.id, hex::encode(id));
            assert_eq!(row.payload, *payload);
        }
    }
}
