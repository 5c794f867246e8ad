//! Readers for ingestion dumps. Each turns one whole input object into ping
//! bodies (or per-record rejections); a file that cannot be read at all is an
//! error naming the file, which the caller fails on or counts.

use std::io::Read;

use apache_avro::types::Value as AvroValue;
use arrow::array::{Array, AsArray};
use arrow::datatypes::TimestampMicrosecondType;
use bytes::Bytes;

use super::contain_decoder_panic;
use super::location::{ObjectRanges, ObjectRead};
use crate::wire::ping::{parse_sink_line, PingRejection};
use parquet::errors::ParquetError;

/// Input formats `stage` reads.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum InputFormat {
    /// The telemetry sink's NDJSON of PubSub messages (`.ndjson`, `.ndjson.gz`).
    Ndjson,
    /// Parquet export of the decoded-payload table.
    Parquet,
    /// Avro export of the decoded-payload table.
    Avro,
}

impl InputFormat {
    pub const ALL: [InputFormat; 3] =
        [InputFormat::Ndjson, InputFormat::Parquet, InputFormat::Avro];

    /// The format's name, as `stage --input-format` takes it.
    pub fn name(self) -> &'static str {
        match self {
            InputFormat::Ndjson => "ndjson",
            InputFormat::Parquet => "parquet",
            InputFormat::Avro => "avro",
        }
    }

    pub fn from_name(name: &str) -> Option<InputFormat> {
        InputFormat::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The format a file name implies, if any.
    pub fn of_path(path: &str) -> Option<InputFormat> {
        let name = path.rsplit('/').next().unwrap_or(path);
        if name.starts_with('.') || name.starts_with('_') {
            return None;
        }
        if name.ends_with(".ndjson") || name.ends_with(".ndjson.gz") || name.ends_with(".json.gz") {
            Some(InputFormat::Ndjson)
        } else if name.ends_with(".parquet") {
            Some(InputFormat::Parquet)
        } else if name.ends_with(".avro") {
            Some(InputFormat::Avro)
        } else {
            None
        }
    }
}

/// The largest allocation apache-avro may make for one value of an input
/// file. Its own default (512 MiB) let a 43-byte file declaring a huge map
/// reserve that much at once; since 0.22 it also bounds the entries of an
/// array or map block by their in-memory size, so at 16 MiB no declared
/// count reserves more than a few times this. Avro blocks (16 KB in our
/// writer, well under a megabyte in exports) fit with room to spare.
const AVRO_MAX_ALLOCATION: usize = 16 << 20;

/// Sets [`AVRO_MAX_ALLOCATION`] before the first Avro read: the crate takes
/// the value once, for the whole process.
fn limit_avro_allocations() {
    static LIMIT: std::sync::Once = std::sync::Once::new();
    LIMIT.call_once(|| {
        apache_avro::util::max_allocation_bytes(AVRO_MAX_ALLOCATION);
    });
}

/// One ping body as read from a dump, with its submission date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPing {
    pub body: Vec<u8>,
    /// `YYYY-MM-DD` of the submission timestamp, in UTC.
    pub submission_date: String,
}

/// The UTC date of a sink's `submission_timestamp`: RFC 3339 (seconds may
/// be left out), or without an offset, which the sink means as UTC.
fn utc_date(timestamp: &str) -> Result<String, PingRejection> {
    use chrono::{DateTime, NaiveDateTime};
    let utc = DateTime::parse_from_rfc3339(timestamp)
        .or_else(|_| DateTime::parse_from_str(timestamp, "%Y-%m-%dT%H:%M%:z"))
        .map(|t| t.naive_utc())
        .or_else(|_| NaiveDateTime::parse_from_str(timestamp, "%Y-%m-%dT%H:%M:%S%.f"))
        .map_err(|_| PingRejection::BadTimestamp)?;
    Ok(utc.format("%Y-%m-%d").to_string())
}

/// Why a whole input file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot be read as {format:?}: {message}")]
pub struct UnreadableFile {
    pub path: String,
    pub format: InputFormat,
    pub message: String,
}

/// Longest sink line: a Firefox ping with all its shares is a few hundred KB.
const MAX_LINE_BYTES: usize = 16 << 20;
/// Most text one input file may decompress to: a gzip bomb is an unreadable
/// file once past it, not hours of work (sink files hold tens of MB).
const MAX_FILE_TEXT_BYTES: u64 = 4 << 30;
/// Largest ping a decoded-table record may decompress to.
const MAX_RECORD_BYTES: u64 = 16 << 20;

/// A record payload, decompressed: at most [`MAX_RECORD_BYTES`].
fn gunzip_record(bytes: &[u8]) -> Result<Vec<u8>, PingRejection> {
    let mut out = Vec::with_capacity(bytes.len() * 4);
    flate2::read::MultiGzDecoder::new(bytes)
        .take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|_| PingRejection::BadGzip)?;
    if out.len() as u64 > MAX_RECORD_BYTES {
        return Err(PingRejection::TooLarge);
    }
    Ok(out)
}

/// Hands every line of `text` to `line`, without its `\n`, holding one line
/// at a time: a line longer than [`MAX_LINE_BYTES`] is skipped whole and
/// handed over as [`PingRejection::TooLarge`], never buffered.
fn for_each_line(
    mut text: impl std::io::BufRead,
    mut line: impl FnMut(Result<&[u8], PingRejection>),
) -> std::io::Result<()> {
    let mut current = Vec::new();
    let mut too_long = false;
    loop {
        let buf = text.fill_buf()?;
        if buf.is_empty() {
            if too_long {
                line(Err(PingRejection::TooLarge));
            } else if !current.is_empty() {
                line(Ok(&current));
            }
            return Ok(());
        }
        let (taken, end) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if !too_long {
            if current.len() + taken > MAX_LINE_BYTES {
                too_long = true;
                current = Vec::new();
            } else {
                current.extend_from_slice(&buf[..taken]);
            }
        }
        text.consume(taken + usize::from(end));
        if end {
            if too_long {
                line(Err(PingRejection::TooLarge));
            } else {
                line(Ok(&current));
            }
            current.clear();
            too_long = false;
        }
    }
}

/// Reads until `buf` is full or the stream ends; returns how much it read.
fn read_up_to(stream: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// A decoded-table payload is gzip of the ping JSON, or the raw JSON.
fn table_payload(bytes: &[u8]) -> Result<Vec<u8>, PingRejection> {
    if is_gzip(bytes) {
        gunzip_record(bytes)
    } else {
        Ok(bytes.to_vec())
    }
}

fn date_of_micros(micros: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_micros(micros).map(|t| t.format("%Y-%m-%d").to_string())
}

/// An input file's bytes, as [`read_records`] takes them.
pub enum InputBytes<'a> {
    /// Read front to back: NDJSON (plain or gzip) and Avro are decoded as
    /// they are read, so memory holds a buffer and one record, whatever the
    /// file's size.
    Stream(&'a mut dyn Read),
    /// The whole file, lent; the buffer comes back for the next file.
    Whole(&'a mut Vec<u8>),
    /// A file read in ranges: Parquet reads its footer, then a row group
    /// at a time, where they are; the other formats read it front to back.
    Ranges(ObjectRanges),
}

impl InputFormat {
    /// Whether [`read_records`] reads this format out of order (Parquet's
    /// footer comes first): in [`InputBytes::Ranges`], or else whole.
    pub fn needs_random_access(self) -> bool {
        self == InputFormat::Parquet
    }
}

/// An input file read in ranges is what Parquet's reader takes. A range
/// past the object's end is refused before anything is read or allocated
/// for it: the footer that names the ranges is hostile too.
impl parquet::file::reader::Length for ObjectRanges {
    fn len(&self) -> u64 {
        ObjectRanges::len(self)
    }
}

impl parquet::file::reader::ChunkReader for ObjectRanges {
    /// Buffered: Parquet reads page headers a few bytes at a time.
    type T = std::io::BufReader<EndsBounded<ObjectRead>>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        within(self, start, 0)?;
        let object = self
            .read_from(start)
            .map_err(|e| ParquetError::External(e.into()))?;
        Ok(std::io::BufReader::new(EndsBounded::new(object)))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        within(self, start, length)?;
        let mut bytes = Vec::with_capacity(length);
        self.read(start..start + length as u64)
            .map_err(|e| ParquetError::External(e.into()))?
            .read_to_end(&mut bytes)
            .map_err(|e| ParquetError::External(e.into()))?;
        if bytes.len() != length {
            return Err(ParquetError::EOF(format!(
                "{length} bytes at {start} expected, {} read",
                bytes.len()
            )));
        }
        Ok(bytes.into())
    }
}

/// How many times a Parquet reader may be told it is at the end before it
/// is told the file is cut short instead.
const MAX_END_READS: u32 = 64;

/// A reader that fails once it has answered "end" [`MAX_END_READS`] times.
/// Parquet's Thrift decoder skips a field it does not know by copying it
/// to nowhere and does not check that the bytes came, so a list that
/// declares millions of such fields past the end of a file costs a read per
/// field: a 1.6 KB file took seconds. A reader that keeps asking at the end
/// is decoding bytes that are not there.
pub struct EndsBounded<R> {
    inner: R,
    ends: u32,
}

impl<R> EndsBounded<R> {
    fn new(inner: R) -> Self {
        EndsBounded { inner, ends: 0 }
    }
}

impl<R: Read> Read for EndsBounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.ends += 1;
            if self.ends > MAX_END_READS {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file declares more than it holds: read on past its end",
                ));
            }
        }
        Ok(n)
    }
}

/// Whether `length` bytes at `start` lie within `object`.
fn within(object: &ObjectRanges, start: u64, length: usize) -> parquet::errors::Result<()> {
    match start.checked_add(length as u64) {
        Some(end) if end <= object.len() => Ok(()),
        _ => Err(ParquetError::EOF(format!(
            "{length} bytes at {start} lie past the end of the file ({} bytes)",
            object.len()
        ))),
    }
}

/// Reads every record of one input object, calling `emit` for each in order.
pub fn read_records(
    path: &str,
    format: InputFormat,
    bytes: InputBytes<'_>,
    mut emit: impl FnMut(Result<RawPing, PingRejection>),
) -> Result<(), UnreadableFile> {
    let unreadable = |message: String| UnreadableFile {
        path: path.to_string(),
        format,
        message,
    };
    // Parquet takes the file or the buffer; the other formats read a stream.
    let (mut whole, mut from_start): (&[u8], ObjectRead);
    let mut nothing = std::io::empty();
    let (stream, data, ranges): (&mut dyn Read, _, _) = match bytes {
        _ if format.needs_random_access() => match bytes {
            InputBytes::Stream(stream) => (stream, None, None),
            InputBytes::Whole(data) => (&mut nothing, Some(data), None),
            InputBytes::Ranges(ranges) => (&mut nothing, None, Some(ranges)),
        },
        InputBytes::Stream(stream) => (stream, None, None),
        InputBytes::Whole(data) => {
            whole = data.as_slice();
            (&mut whole, None, None)
        }
        InputBytes::Ranges(ranges) => {
            from_start = ranges.read_from(0).map_err(|e| unreadable(e.to_string()))?;
            (&mut from_start, None, None)
        }
    };
    match format {
        InputFormat::Ndjson => {
            let mut each_line = |line: Result<&[u8], PingRejection>| {
                let line = match line {
                    Ok(line) => line.strip_suffix(b"\r").unwrap_or(line),
                    Err(reason) => return emit(Err(reason)),
                };
                if line.iter().all(u8::is_ascii_whitespace) {
                    return;
                }
                emit(parse_sink_line(line).and_then(|(message, body)| {
                    let timestamp = message
                        .submission_timestamp()
                        .ok_or(PingRejection::MissingTimestamp)?;
                    Ok(RawPing {
                        submission_date: utc_date(timestamp)?,
                        body,
                    })
                }));
            };
            let mut head = [0u8; 2];
            let head_len =
                read_up_to(stream, &mut head).map_err(|e| unreadable(format!("reading: {e}")))?;
            let text = head[..head_len].chain(stream);
            if is_gzip(&head[..head_len]) {
                // Decompressed as it is read: memory holds one line, whatever the ratio.
                let text = flate2::read::MultiGzDecoder::new(text).take(MAX_FILE_TEXT_BYTES + 1);
                let mut text = std::io::BufReader::with_capacity(1 << 20, text);
                for_each_line(&mut text, &mut each_line)
                    .map_err(|e| unreadable(format!("gzip: {e}")))?;
                if text.into_inner().limit() == 0 {
                    return Err(unreadable(format!(
                        "decompresses to more than {} GiB of text",
                        MAX_FILE_TEXT_BYTES >> 30
                    )));
                }
            } else {
                let text = std::io::BufReader::with_capacity(1 << 20, text);
                for_each_line(text, &mut each_line)
                    .map_err(|e| unreadable(format!("reading: {e}")))?;
            }
        }
        InputFormat::Parquet => {
            if let Some(ranges) = ranges {
                return read_parquet(ranges, &unreadable, &mut emit);
            }
            let mut read = Vec::new();
            let data = match data {
                Some(data) => data,
                None => {
                    stream
                        .read_to_end(&mut read)
                        .map_err(|e| unreadable(format!("reading: {e}")))?;
                    &mut read
                }
            };
            let file = Bytes::from(std::mem::take(data));
            let outcome = read_parquet(file.clone(), &unreadable, &mut emit);
            // Unique again once the reader is gone: the buffer comes back uncopied.
            *data = file.try_into_mut().map(Vec::from).unwrap_or_default();
            outcome?;
        }
        InputFormat::Avro => {
            limit_avro_allocations();
            let stream = std::io::BufReader::with_capacity(1 << 20, stream);
            let mut reader = contain_decoder_panic(|| apache_avro::Reader::new(stream))
                .map_err(|e| unreadable(e.to_string()))?
                .map_err(|e| unreadable(e.to_string()))?;
            while let Some(value) =
                contain_decoder_panic(|| reader.next()).map_err(|e| unreadable(e.to_string()))?
            {
                let value = value.map_err(|e| unreadable(e.to_string()))?;
                let AvroValue::Record(fields) = value else {
                    return Err(unreadable("records expected".into()));
                };
                let mut body = Err(PingRejection::MissingPayload);
                let mut date = None;
                for (name, v) in &fields {
                    match (name.as_str(), v) {
                        ("payload", AvroValue::Bytes(b)) => body = table_payload(b),
                        (
                            "submission_timestamp",
                            AvroValue::TimestampMicros(t) | AvroValue::Long(t),
                        ) => date = date_of_micros(*t),
                        _ => {}
                    }
                }
                emit(body.and_then(|body| {
                    Ok(RawPing {
                        body,
                        submission_date: date.ok_or(PingRejection::MissingTimestamp)?,
                    })
                }));
            }
        }
    }
    Ok(())
}

/// Rows decoded at a time from a Parquet input: a ping is up to a few
/// hundred KB, so Arrow's default of 1024 rows would hold hundreds of MB.
const PARQUET_BATCH_ROWS: usize = 64;

/// The records of a Parquet export of the decoded-payload table.
fn read_parquet<T: parquet::file::reader::ChunkReader + 'static>(
    file: T,
    unreadable: &impl Fn(String) -> UnreadableFile,
    emit: &mut impl FnMut(Result<RawPing, PingRejection>),
) -> Result<(), UnreadableFile> {
    let mut reader = contain_decoder_panic(|| {
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.with_batch_size(PARQUET_BATCH_ROWS).build())
    })
    .map_err(|e| unreadable(e.to_string()))?
    .map_err(|e| unreadable(e.to_string()))?;
    while let Some(batch) =
        contain_decoder_panic(|| reader.next()).map_err(|e| unreadable(e.to_string()))?
    {
        let batch = batch.map_err(|e| unreadable(e.to_string()))?;
        let payload = batch
            .column_by_name("payload")
            .ok_or_else(|| unreadable("no payload column".into()))?;
        let timestamps = batch
            .column_by_name("submission_timestamp")
            .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>().cloned());
        let payloads: Vec<Option<&[u8]>> = match (
            payload.as_binary_opt::<i32>(),
            payload.as_binary_opt::<i64>(),
        ) {
            (Some(a), _) => a.iter().collect(),
            (_, Some(a)) => a.iter().collect(),
            _ => {
                return Err(unreadable(format!(
                    "payload column has type {}, expected binary",
                    payload.data_type()
                )))
            }
        };
        for (i, payload) in payloads.into_iter().enumerate() {
            let date = timestamps
                .as_ref()
                .filter(|t| !t.is_null(i))
                .and_then(|t| date_of_micros(t.value(i)));
            emit(match payload {
                None => Err(PingRejection::MissingPayload),
                Some(bytes) => table_payload(bytes).and_then(|body| {
                    Ok(RawPing {
                        body,
                        submission_date: date.clone().ok_or(PingRejection::MissingTimestamp)?,
                    })
                }),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
