//! Reading and writing one object a piece at a time: [`ObjectRead`] front
//! to back, [`ObjectRanges`] in ranges (for readers that seek), and
//! [`ObjectWriter`] as a stream that appears whole when it is finished.

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;

use super::error::StorageError;
use super::location::{runtime, Location};

impl Location {
    /// An object of `len` bytes to read in ranges, as readers that seek
    /// (Parquet's) do: each range is a read of its own, so the object is
    /// never held whole.
    pub fn ranges(&self, rel: &str, len: u64) -> ObjectRanges {
        ObjectRanges {
            location: self.clone(),
            rel: rel.to_string(),
            len,
            failure: FailureSlot::default(),
        }
    }

    /// Bytes `range` of an object, read front to back a buffer at
    /// a time (a local file where it is, a cloud object a range request at
    /// a time), keeping failures in `failure`.
    fn open_at(
        &self,
        rel: &str,
        range: std::ops::Range<u64>,
        failure: FailureSlot,
    ) -> Result<ObjectRead, StorageError> {
        use std::io::Seek;
        let url = self.object_url(rel);
        let source = match &self.files {
            Some(files) => {
                let path = self.file_path(files, rel)?;
                let file = std::fs::File::open(&path).and_then(|mut file| {
                    // A directory is not an object, as in object_store.
                    if file.metadata()?.is_dir() {
                        return Err(std::io::ErrorKind::NotFound.into());
                    }
                    file.seek(std::io::SeekFrom::Start(range.start))?;
                    Ok(file)
                });
                ObjectSource::File {
                    file: file.map_err(|e| self.io_error(rel, e))?,
                    left: range.end.saturating_sub(range.start),
                }
            }
            None => ObjectSource::Remote {
                location: self.clone(),
                rel: rel.to_string(),
                next: range.start,
                end: range.end,
                chunk: Bytes::new(),
            },
        };
        Ok(ObjectRead {
            source,
            url,
            failure,
        })
    }

    /// One range of an object, in one request.
    fn get_range(&self, rel: &str, range: std::ops::Range<u64>) -> Result<Bytes, StorageError> {
        let path = self.path(rel);
        let options = object_store::GetOptions::default()
            .with_range(Some(object_store::GetRange::Bounded(range)));
        self.block_on(async { self.store.get_opts(&path, options).await?.bytes().await })
            .map_err(|e| self.error(rel, e))
    }

    /// A streaming writer for one object: see [`ObjectWriter`].
    pub fn writer(&self, rel: &str) -> Result<ObjectWriter, StorageError> {
        let url = self.object_url(rel);
        let sink = match &self.files {
            Some(files) => {
                let dest = self.file_path(files, rel)?;
                let write_error = |source| StorageError::Write {
                    url: url.clone(),
                    source,
                };
                if let Some(dir) = dest.parent() {
                    std::fs::create_dir_all(dir).map_err(write_error)?;
                }
                // `name#digits`: object_store's own staging name, which listings skip.
                let mut staging = dest.clone().into_os_string();
                staging.push(format!("#{}", std::process::id()));
                let staging = std::path::PathBuf::from(staging);
                let file = std::fs::File::create(&staging).map_err(write_error)?;
                Sink::File {
                    file,
                    staging,
                    dest,
                }
            }
            None => Sink::Store(object_store::buffered::BufWriter::with_capacity(
                self.store.clone(),
                self.path(rel),
                ObjectWriter::CHUNK,
            )),
        };
        Ok(ObjectWriter { sink, url })
    }
}

/// A range of an object being read front to back ([`ObjectRanges::read`]).
/// Reading it gives `std::io::Error`s, but a failure of the store itself is
/// kept, so that the caller can tell a file that does not decode from a
/// store that stopped answering ([`ObjectRanges::failure`]).
pub struct ObjectRead {
    source: ObjectSource,
    url: String,
    failure: FailureSlot,
}

/// Where reads of one object keep the storage failure that cut them short.
pub(super) type FailureSlot = Arc<std::sync::Mutex<Option<StorageError>>>;

/// Takes the failure kept in `slot`.
fn take_failure(slot: &FailureSlot) -> Option<StorageError> {
    slot.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// An object read in ranges ([`Location::ranges`]); every read keeps a
/// storage failure for [`ObjectRanges::failure`], as [`ObjectRead`] does;
/// clones share it.
#[derive(Clone)]
pub struct ObjectRanges {
    location: Location,
    rel: String,
    len: u64,
    failure: FailureSlot,
}

impl ObjectRanges {
    /// The object's size, as listed.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the object is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The object from byte `start` on, read front to back. A failure to
    /// open is kept too; the caller gets its text.
    pub fn read_from(&self, start: u64) -> Result<ObjectRead, StorageError> {
        self.read(start..self.len)
    }

    /// Bytes `range` of the object, read front to back.
    pub fn read(&self, range: std::ops::Range<u64>) -> Result<ObjectRead, StorageError> {
        self.location
            .open_at(&self.rel, range, self.failure.clone())
            .map_err(|failure| {
                let text = StorageError::Read {
                    url: self.location.object_url(&self.rel),
                    source: std::io::Error::other(failure.to_string()),
                };
                *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(failure);
                text
            })
    }

    /// The storage failure that cut a read short, if any.
    pub fn failure(&self) -> Option<StorageError> {
        take_failure(&self.failure)
    }
}

enum ObjectSource {
    /// A local file, with the bytes left of the range read: a reader
    /// that keeps asking at the end (a hostile Parquet file makes Parquet's
    /// do that millions of times) costs no system call.
    File { file: std::fs::File, left: u64 },
    /// A cloud object from `next` to `end`, fetched a range at a time. Each
    /// range is one request with its own retries, read whole, so a slow
    /// reader never holds a request open past the client's timeout.
    Remote {
        location: Location,
        rel: String,
        next: u64,
        end: u64,
        /// What is left of the last range.
        chunk: Bytes,
    },
}

/// Bytes fetched per request when a cloud object is read front to back.
const REMOTE_RANGE: u64 = 8 << 20;

impl Read for ObjectRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let read = match &mut self.source {
            ObjectSource::File { file, left } => {
                let most = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                if most == 0 {
                    return Ok(0);
                }
                match file.read(&mut buf[..most]) {
                    Ok(n) => {
                        *left -= n as u64;
                        Ok(n)
                    }
                    Err(source) => Err(StorageError::Read {
                        url: self.url.clone(),
                        source,
                    }),
                }
            }
            ObjectSource::Remote {
                location,
                rel,
                next,
                end,
                chunk,
            } => loop {
                if !chunk.is_empty() {
                    let n = buf.len().min(chunk.len());
                    buf[..n].copy_from_slice(&chunk.split_to(n));
                    break Ok(n);
                }
                if *next >= *end {
                    break Ok(0);
                }
                let range = *next..(*next + REMOTE_RANGE).min(*end);
                match location.get_range(rel, range.clone()) {
                    Ok(bytes) if bytes.len() as u64 == range.end - range.start => {
                        *next = range.end;
                        *chunk = bytes;
                    }
                    Ok(bytes) => {
                        break Err(StorageError::Read {
                            url: self.url.clone(),
                            source: std::io::Error::other(format!(
                                "{} bytes at {} asked for, {} came: the object changed while it was read",
                                range.end - range.start,
                                range.start,
                                bytes.len()
                            )),
                        })
                    }
                    Err(e) => break Err(e),
                }
            },
        };
        read.map_err(|failure| {
            let message = failure.to_string();
            *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(failure);
            std::io::Error::other(message)
        })
    }
}

/// Streams one object, so a large object never sits whole in memory: the
/// bytes go out in chunks (a multipart upload once the object outgrows one
/// chunk), and the object appears whole on [`ObjectWriter::finish`], never
/// in part. Dropping it unfinished writes nothing visible.
pub struct ObjectWriter {
    sink: Sink,
    url: String,
}

enum Sink {
    /// A local file is written from the caller's thread into a staging file
    /// that is renamed into place: no copy into upload chunks, no hand-off
    /// to I/O threads.
    File {
        file: std::fs::File,
        staging: std::path::PathBuf,
        dest: std::path::PathBuf,
    },
    Store(object_store::buffered::BufWriter),
}

impl ObjectWriter {
    /// Upload chunk size; S3 needs at least 5 MiB per part.
    pub(super) const CHUNK: usize = 8 << 20;

    /// Completes the object.
    pub fn finish(mut self) -> Result<(), StorageError> {
        use tokio::io::AsyncWriteExt;
        let finished = match &mut self.sink {
            Sink::File { staging, dest, .. } => std::fs::rename(&*staging, &*dest),
            // The buffered writer uploads parts as tokio tasks, for every store.
            Sink::Store(upload) => runtime().block_on(upload.shutdown()),
        };
        finished.map_err(|source| StorageError::Write {
            url: self.url.clone(),
            source,
        })
    }
}

impl Drop for ObjectWriter {
    /// An unfinished local object leaves no staging file behind (a
    /// finished one was renamed away, so this finds nothing).
    fn drop(&mut self) {
        if let Sink::File { staging, .. } = &self.sink {
            let _ = std::fs::remove_file(staging);
        }
    }
}

impl std::io::Write for ObjectWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use tokio::io::AsyncWriteExt;
        match &mut self.sink {
            Sink::File { file, .. } => file.write_all(buf)?,
            Sink::Store(upload) => runtime().block_on(upload.write_all(buf))?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
