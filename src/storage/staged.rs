//! Staged partitions: what `stage` writes and `process` reads. One part per
//! (server, batch id, part number), rows sorted by report id, with columns
//! `batch_id, server_id, id, payload` (Parquet) or `{"id", "payload"}` lines
//! (NDJSON, as the original system wrote them).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use parquet::column::reader::ColumnReader;
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use std::io::Write;

use super::batch_dir::batch_dir;
use super::contain_decoder_panic;
use super::location::{Location, StorageError};
use super::tables::{malformed, random_columns};
use crate::wire::ping::encode_base64;
use crate::wire::report_id::ReportId;
use crate::wire::Role;

/// File format of staged parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StagedFormat {
    Parquet,
    Ndjson,
}

impl StagedFormat {
    pub const ALL: [StagedFormat; 2] = [StagedFormat::Parquet, StagedFormat::Ndjson];

    /// The format a part's file extension (also its name) names.
    pub fn of_extension(ext: &str) -> Option<StagedFormat> {
        StagedFormat::ALL.into_iter().find(|f| f.extension() == ext)
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

/// Share bytes per Parquet data page. Pages go straight to the output as
/// they fill, so the writer holds about one page per column.
const PAGE_BYTES: usize = 1 << 20;

/// Writes one part's rows (already sorted by report id) for one server.
/// Shares are `Bytes` so that Parquet pages are filled from them without
/// another copy.
pub fn write_part(
    format: StagedFormat,
    batch_id: &str,
    role: Role,
    rows: &[(ReportId, Bytes)],
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
        StagedFormat::Parquet => Ok(write_parquet_part(batch_id, role, rows, out)?),
    }
}

/// A staged Parquet part, written column by column with Parquet's own
/// column writers: unlike an Arrow writer, they need no copy of the shares
/// into arrays and no buffered row group, only a page per column.
fn write_parquet_part(
    batch_id: &str,
    role: Role,
    rows: &[(ReportId, Bytes)],
    out: impl std::io::Write + Send,
) -> parquet::errors::Result<()> {
    let schema = staged_schema();
    // Page sizes are checked after each batch of values written: a batch of
    // shares should stay under a page.
    let share_len = rows.iter().map(|(_, p)| p.len()).max().unwrap_or(1).max(1);
    let mut properties = random_columns(&["id", "payload"])
        .into_builder()
        .set_data_page_size_limit(PAGE_BYTES)
        .set_write_batch_size((PAGE_BYTES / share_len).clamp(1, 1024))
        .build();
    // Readers see the Arrow schema an Arrow writer would have recorded.
    parquet::arrow::add_encoded_arrow_schema_to_metadata(&schema, &mut properties);
    let descriptor = parquet::arrow::ArrowSchemaConverter::new().convert(&schema)?;
    let mut writer =
        SerializedFileWriter::new(out, descriptor.root_schema_ptr(), Arc::new(properties))?;
    let constant = |text: &str| ByteArray::from(Bytes::copy_from_slice(text.as_bytes()));
    let (batch_value, role_value) = (constant(batch_id), constant(role.as_str()));
    let mut start = 0;
    while start < rows.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < rows.len() && (end == start || bytes < ROW_GROUP_BYTES) {
            bytes += rows[end].1.len();
            end += 1;
        }
        let group = &rows[start..end];
        let columns: [Vec<ByteArray>; 4] = [
            vec![batch_value.clone(); group.len()],
            vec![role_value.clone(); group.len()],
            group
                .iter()
                .map(|(id, _)| ByteArray::from(hex::encode(id).into_bytes()))
                .collect(),
            group
                .iter()
                .map(|(_, p)| ByteArray::from(p.clone()))
                .collect(),
        ];
        let mut row_group = writer.next_row_group()?;
        for values in &columns {
            let mut column = row_group.next_column()?.expect("four columns");
            column
                .typed::<ByteArrayType>()
                .write_batch(values, None, None)?;
            column.close()?;
        }
        row_group.close()?;
        start = end;
    }
    writer.close()?;
    Ok(())
}

/// One part's rows for one server, as bytes.
pub fn encode_part(
    format: StagedFormat,
    batch_id: &str,
    role: Role,
    rows: &[(ReportId, Bytes)],
) -> Vec<u8> {
    let mut out = Vec::new();
    write_part(format, batch_id, role, rows, &mut out).expect("writing to memory");
    out
}

/// One row of a staged part, as `process` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedRow {
    pub id: String,
    pub payload: Bytes,
}

/// Reads a staged part written by [`write_part`] for server `role`, in
/// either format. A Parquet part staged for the other server is refused
/// (NDJSON parts do not name their server).
pub fn decode_staged(
    url: &str,
    format: StagedFormat,
    data: Bytes,
    role: Role,
) -> Result<Vec<StagedRow>, StorageError> {
    match format {
        StagedFormat::Parquet => contain_decoder_panic(|| read_parquet_part(url, data, role))
            .map_err(|message| malformed(url, message))?,
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
                    .map_err(|e| malformed(url, format!("line {}: {e}", n + 1)))?;
                // A share that is not base64 stays a row: it is rejected per report, not per file.
                let payload = crate::wire::ping::decode_base64(&line.payload).unwrap_or_default();
                Ok(StagedRow {
                    id: line.id,
                    payload: payload.into(),
                })
            })
            .collect(),
    }
}

/// Rows of values read per call of a column reader.
const READ_BATCH: usize = 1024;

/// A staged Parquet part's rows, read with Parquet's column readers: a
/// payload is a view of the part's bytes (its pages are stored uncompressed),
/// not a copy. Decoding into Arrow arrays and copying out of them cost, for
/// prio1's shares of tens of kilobytes, more than reading the file.
fn read_parquet_part(url: &str, data: Bytes, role: Role) -> Result<Vec<StagedRow>, StorageError> {
    let bad = |e: parquet::errors::ParquetError| malformed(url, e);
    let reader = SerializedFileReader::new(data.clone()).map_err(bad)?;
    let schema = reader.metadata().file_metadata().schema_descr();
    let index = |name: &str| {
        schema
            .columns()
            .iter()
            .position(|c| c.path().string() == name)
            .ok_or_else(|| malformed(url, format!("no {name:?} column")))
    };
    let (server_column, id_column, payload_column) =
        (index("server_id")?, index("id")?, index("payload")?);
    let mut rows = Vec::new();
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).map_err(bad)?;
        let expected = usize::try_from(group.metadata().num_rows())
            .map_err(|_| malformed(url, "a row group with a negative row count"))?;
        let read = |column: usize| -> Result<Vec<ByteArray>, StorageError> {
            let name = schema.column(column).path().string();
            let ColumnReader::ByteArrayColumnReader(mut reader) =
                group.get_column_reader(column).map_err(bad)?
            else {
                return Err(malformed(url, format!("column {name:?} is not binary")));
            };
            // A column written as nullable (as other writers do) holds no nulls here.
            let nullable = schema.column(column).max_def_level() > 0;
            let (mut values, mut levels, mut records) = (Vec::new(), Vec::new(), 0);
            while records < expected {
                let want = READ_BATCH.min(expected - records);
                let (read, _, _) = reader
                    .read_records(want, nullable.then_some(&mut levels), None, &mut values)
                    .map_err(bad)?;
                if read == 0 {
                    break;
                }
                records += read;
            }
            if records != expected || values.len() != expected {
                return Err(malformed(
                    url,
                    format!("column {name:?} is short or has nulls"),
                ));
            }
            Ok(values)
        };
        let (servers, ids, payloads) = (
            read(server_column)?,
            read(id_column)?,
            read(payload_column)?,
        );
        for ((server, id), payload) in servers.iter().zip(&ids).zip(&payloads) {
            if server.data() != role.as_str().as_bytes() {
                return Err(malformed(
                    url,
                    format!(
                        "staged for server {:?}, not for this server ({role}): check \
                         that stage's --output-a and --output-b were not swapped",
                        String::from_utf8_lossy(server.data())
                    ),
                ));
            }
            let id = std::str::from_utf8(id.data())
                .map_err(|_| malformed(url, "a report id that is not UTF-8"))?;
            rows.push(StagedRow {
                id: id.to_string(),
                payload: view(&data, payload.data()),
            });
        }
    }
    Ok(rows)
}

/// `part` as a view of `whole` when it lies inside it, else a copy.
fn view(whole: &Bytes, part: &[u8]) -> Bytes {
    let (inside, within) = (whole.as_ptr_range(), part.as_ptr_range());
    if inside.start <= within.start && within.end <= inside.end {
        whole.slice_ref(part)
    } else {
        Bytes::copy_from_slice(part)
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
        format!(
            "{}/part-{part:05}.{}",
            batch_dir(batch_id),
            format.extension()
        )
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
            // And what a killed run left half-written, which listings skip.
            m.remove_debris()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_part_is_written_in_row_groups_and_reads_back_whole() {
        let rows: Vec<(ReportId, Bytes)> = (0..20u8)
            .map(|i| ([i; 16], Bytes::from(vec![i; 1 << 20])))
            .collect();
        let bytes = encode_part(StagedFormat::Parquet, "x", Role::A, &rows);
        let reader = parquet::file::serialized_reader::SerializedFileReader::new(
            bytes::Bytes::from(bytes.clone()),
        )
        .unwrap();
        use parquet::file::reader::FileReader;
        // 20 MiB of shares in row groups of 8 MiB: 8 + 8 + 4 rows.
        assert_eq!(reader.metadata().num_row_groups(), 3);
        let bytes = Bytes::from(bytes);
        let back = decode_staged("part", StagedFormat::Parquet, bytes.clone(), Role::A).unwrap();
        // Each payload is a view of the part's bytes, not a copy.
        let whole = bytes.as_ptr_range();
        for row in &back {
            let part = row.payload.as_ptr_range();
            assert!(whole.start <= part.start && part.end <= whole.end);
        }
        let err = decode_staged("part", StagedFormat::Parquet, bytes, Role::B).unwrap_err();
        assert!(err.to_string().contains("staged for server \"a\""), "{err}");
        assert_eq!(back.len(), 20);
        for (row, (id, payload)) in back.iter().zip(&rows) {
            assert_eq!(row.id, hex::encode(id));
            assert_eq!(row.payload, *payload);
        }
    }

    /// A part written by another Parquet writer (compressed pages, Arrow's
    /// schema) reads the same; a part that lacks a column or holds numbers
    /// in it is refused as malformed.
    #[test]
    fn parts_of_other_writers_read_or_are_refused_by_name() {
        use arrow::array::{ArrayRef, BinaryArray, Int32Array, StringArray};
        use arrow::record_batch::RecordBatch;
        // Snappy-compressed pages; columns declared nullable or not.
        let write_as = |nullable: bool, columns: Vec<(&str, ArrayRef)>| {
            let columns = columns.into_iter().map(|(n, a)| (n, a, nullable));
            let batch = RecordBatch::try_from_iter_with_nullable(columns).unwrap();
            let mut out = Vec::new();
            let compressed = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::SNAPPY)
                .build();
            let mut writer =
                parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), Some(compressed))
                    .unwrap();
            writer.write(&batch).unwrap();
            writer.close().unwrap();
            Bytes::from(out)
        };
        let write = |columns| write_as(false, columns);
        let text = |v: &[&str]| Arc::new(StringArray::from(v.to_vec())) as ArrayRef;
        let payloads: ArrayRef = Arc::new(BinaryArray::from(vec![&b"one"[..], b"two"]));
        let two_rows = |payload: ArrayRef| {
            vec![
                ("server_id", text(&["a", "a"])),
                ("id", text(&["01", "02"])),
                ("payload", payload),
            ]
        };
        let read_back = |part| {
            let rows = decode_staged("p", StagedFormat::Parquet, part, Role::A).unwrap();
            rows.iter()
                .map(|r| (r.id.clone(), r.payload.to_vec()))
                .collect::<Vec<_>>()
        };
        let want = [
            ("01".to_string(), b"one".to_vec()),
            ("02".to_string(), b"two".to_vec()),
        ];
        let mut with_batch_id = two_rows(payloads.clone());
        with_batch_id.insert(0, ("batch_id", text(&["x", "x"])));
        assert_eq!(read_back(write(with_batch_id)), want);

        let no_id = write(vec![
            ("server_id", text(&["a", "a"])),
            ("payload", payloads.clone()),
        ]);
        let err = decode_staged("p", StagedFormat::Parquet, no_id, Role::A).unwrap_err();
        assert!(err.to_string().contains("no \"id\" column"), "{err}");
        let numbers = write(vec![
            ("server_id", text(&["a"])),
            ("id", text(&["01"])),
            ("payload", Arc::new(Int32Array::from(vec![7])) as ArrayRef),
        ]);
        let err = decode_staged("p", StagedFormat::Parquet, numbers, Role::A).unwrap_err();
        assert!(err.to_string().contains("is not binary"), "{err}");

        // Columns declared nullable read when they hold no null, and are refused when they do.
        assert_eq!(read_back(write_as(true, two_rows(payloads))), want);
        let with_null: ArrayRef = Arc::new(BinaryArray::from(vec![Some(&b"one"[..]), None]));
        let part = write_as(true, two_rows(with_null));
        let err = decode_staged("p", StagedFormat::Parquet, part, Role::A).unwrap_err();
        assert!(
            err.to_string()
                .contains("\"payload\" is short or has nulls"),
            "{err}"
        );
    }
}
