//! Staged partitions: what `stage` writes and `process` reads. One part per
//! (server, batch id, part number), rows sorted by report id, with columns
//! `batch_id, server_id, id, payload` (Parquet) or `{"id", "payload"}` lines
//! (NDJSON, as the original system wrote them).

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;

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

/// Encodes one part's rows (already sorted by report id) for one server.
pub fn encode_part(
    format: StagedFormat,
    batch_id: &str,
    role: Role,
    rows: &[(ReportId, &[u8])],
) -> Vec<u8> {
    match format {
        StagedFormat::Ndjson => {
            let mut out = Vec::new();
            for (id, payload) in rows {
                let line =
                    serde_json::json!({"id": hex::encode(id), "payload": encode_base64(payload)});
                serde_json::to_writer(&mut out, &line).expect("JSON to a Vec");
                out.push(b'\n');
            }
            out
        }
        StagedFormat::Parquet => {
            let batch = RecordBatch::try_new(
                staged_schema(),
                vec![
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|_| batch_id)))
                        as ArrayRef,
                    Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|_| role.as_str()),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|(id, _)| hex::encode(id)),
                    )),
                    Arc::new(BinaryArray::from_iter_values(rows.iter().map(|(_, p)| *p))),
                ],
            )
            .expect("columns match the schema");
            super::parquet_bytes(&batch, Some(super::random_columns(&["id", "payload"])))
        }
    }
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
