//! Local spill files, so that a worker's memory does not grow with its input:
//! - [`ShareSpill`]: shares that must wait until the input is complete. Each
//!   is written and read back exactly once, with no encoding around it, and
//!   found again by its [`Spilled`] position.
//! - [`RecordSpill`]: small records (such as those positions) read back once,
//!   in the order written.
//! - [`DiskSorter`]: small records read back sorted (an external merge sort).
//!
//! Each lives in a file (or directory) of its own under the caller's
//! directory, deleted when its reader is dropped.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::Path;

pub use extsort::Sortable;
use extsort::{ExternalSorter, PushExternalSorter, SortedIterator};
use tempfile::{NamedTempFile, TempPath};

/// A new file under `dir` (created if missing), named `prefix` and a random
/// suffix, deleted once the last handle to it goes.
fn spill_file(
    dir: &Path,
    prefix: &str,
    buffer: usize,
) -> std::io::Result<BufWriter<NamedTempFile>> {
    std::fs::create_dir_all(dir)?;
    let file = tempfile::Builder::new().prefix(prefix).tempfile_in(dir)?;
    Ok(BufWriter::with_capacity(buffer, file))
}

/// Flushes a spill file and opens it for reading from the start; the
/// returned path deletes the file when dropped.
fn reopen(out: BufWriter<NamedTempFile>) -> std::io::Result<(File, TempPath)> {
    let file = out.into_inner().map_err(|e| e.into_error())?;
    Ok((file.reopen()?, file.into_temp_path()))
}

/// Where one appended pair of shares sits in the spill file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Spilled {
    offset: u64,
    len_a: u32,
    len_b: u32,
}

impl Spilled {
    pub fn encode(&self, out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(&self.offset.to_le_bytes())?;
        out.write_all(&self.len_a.to_le_bytes())?;
        out.write_all(&self.len_b.to_le_bytes())
    }

    pub fn decode(input: &mut impl Read) -> std::io::Result<Self> {
        Ok(Spilled {
            offset: u64::from_le_bytes(read_array(input)?),
            len_a: u32::from_le_bytes(read_array(input)?),
            len_b: u32::from_le_bytes(read_array(input)?),
        })
    }
}

/// Reads exactly `N` bytes.
pub fn read_array<const N: usize>(input: &mut impl Read) -> std::io::Result<[u8; N]> {
    let mut bytes = [0; N];
    input.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// An append-only file of share pairs.
pub struct ShareSpill {
    out: BufWriter<NamedTempFile>,
    len: u64,
}

impl ShareSpill {
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        Ok(ShareSpill {
            out: spill_file(dir, "shares-", 1 << 20)?,
            len: 0,
        })
    }

    pub fn append(&mut self, share_a: &[u8], share_b: &[u8]) -> std::io::Result<Spilled> {
        let too_long = |_| std::io::Error::other("share longer than 4 GiB");
        let spilled = Spilled {
            offset: self.len,
            len_a: share_a.len().try_into().map_err(too_long)?,
            len_b: share_b.len().try_into().map_err(too_long)?,
        };
        self.out.write_all(share_a)?;
        self.out.write_all(share_b)?;
        self.len += (share_a.len() + share_b.len()) as u64;
        Ok(spilled)
    }

    /// Flushes what was appended, so that it can be read back.
    pub fn finish(self) -> std::io::Result<SpillFile> {
        let (input, _path) = reopen(self.out)?;
        Ok(SpillFile { input, _path })
    }
}

/// A finished spill file, read back by position; deleted when dropped.
pub struct SpillFile {
    input: File,
    _path: TempPath,
}

impl SpillFile {
    /// The shares (a, b) appended at `at`, with one read straight into the result.
    pub fn read(&mut self, at: Spilled) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
        let mut share_a = vec![0; at.len_a as usize + at.len_b as usize];
        self.input.seek(SeekFrom::Start(at.offset))?;
        self.input.read_exact(&mut share_a)?;
        let share_b = share_a.split_off(at.len_a as usize);
        Ok((share_a, share_b))
    }
}

/// An append-only file of records, read back once in the order written.
pub struct RecordSpill<T> {
    out: BufWriter<NamedTempFile>,
    records: PhantomData<T>,
}

impl<T: Sortable> RecordSpill<T> {
    pub fn create(dir: &Path, prefix: &str) -> std::io::Result<Self> {
        Ok(RecordSpill {
            out: spill_file(dir, prefix, 1 << 16)?,
            records: PhantomData,
        })
    }

    pub fn append(&mut self, record: &T) -> std::io::Result<()> {
        record.encode(&mut self.out)
    }

    /// The records appended, in order; the file is deleted once they are dropped.
    pub fn finish(self) -> std::io::Result<SpilledRecords<T>> {
        let (input, _path) = reopen(self.out)?;
        Ok(SpilledRecords {
            input: BufReader::with_capacity(1 << 16, input),
            _path,
            records: PhantomData,
        })
    }
}

pub struct SpilledRecords<T> {
    input: BufReader<File>,
    _path: TempPath,
    records: PhantomData<T>,
}

impl<T: Sortable> Iterator for SpilledRecords<T> {
    type Item = std::io::Result<T>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.input.fill_buf() {
            Ok([]) => None,
            Ok(_) => Some(T::decode(&mut self.input)),
            Err(e) => Some(Err(e)),
        }
    }
}

type Compare<T> = fn(&T, &T) -> Ordering;

/// Sorts records of any number in bounded memory: runs of `run_len` records
/// are sorted in memory and written to a directory of their own, then merged
/// as they are read. Memory holds one run while pushing and a buffer per run
/// while reading.
pub struct DiskSorter<T: Sortable> {
    dir: tempfile::TempDir,
    sorter: PushExternalSorter<T, Compare<T>>,
}

impl<T: Sortable + Ord> DiskSorter<T> {
    /// Keeps its runs in a new directory under `parent`.
    pub fn new(parent: &Path, run_len: usize) -> std::io::Result<Self> {
        std::fs::create_dir_all(parent)?;
        let dir = tempfile::Builder::new()
            .prefix("sort-")
            .tempdir_in(parent)?;
        // A run is written when it holds more than the segment size: one less
        // keeps the run's buffer at `run_len`, not the next power of two.
        let sorter = ExternalSorter::new()
            .with_segment_size(run_len.max(2) - 1)
            .with_sort_dir(dir.path().to_path_buf())
            .pushed_by(T::cmp as Compare<T>);
        Ok(DiskSorter { dir, sorter })
    }

    pub fn push(&mut self, record: T) -> std::io::Result<()> {
        self.sorter.push(record)
    }

    /// Every record pushed, sorted; the runs are deleted once it is dropped.
    pub fn finish(self) -> std::io::Result<SortedRecords<T>> {
        Ok(SortedRecords {
            merged: self.sorter.done()?,
            _dir: self.dir,
        })
    }
}

pub struct SortedRecords<T: Sortable> {
    merged: SortedIterator<T, Compare<T>>,
    /// Declared after `merged`, so that the run files are closed before their directory goes.
    _dir: tempfile::TempDir,
}

impl<T: Sortable> Iterator for SortedRecords<T> {
    type Item = std::io::Result<T>;

    fn next(&mut self) -> Option<Self::Item> {
        self.merged.next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_read_back_by_position_in_any_order_and_the_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = ShareSpill::create(dir.path()).unwrap();
        let first = spill.append(b"aaaa", b"b").unwrap();
        let empty = spill.append(b"", b"").unwrap();
        let last = spill.append(&[7; 3000], b"bbbbbb").unwrap();
        let mut file = spill.finish().unwrap();
        assert_eq!(
            file.read(last).unwrap(),
            (vec![7; 3000], b"bbbbbb".to_vec())
        );
        assert_eq!(file.read(empty).unwrap(), (vec![], vec![]));
        assert_eq!(file.read(first).unwrap(), (b"aaaa".to_vec(), b"b".to_vec()));
        drop(file);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct Record(String, u32);

    impl Sortable for Record {
        fn encode<W: Write>(&self, out: &mut W) -> std::io::Result<()> {
            out.write_all(&(self.0.len() as u32).to_le_bytes())?;
            out.write_all(self.0.as_bytes())?;
            out.write_all(&self.1.to_le_bytes())
        }

        fn decode<R: Read>(input: &mut R) -> std::io::Result<Self> {
            let len = u32::from_le_bytes(read_array(input)?) as usize;
            let mut name = vec![0; len];
            input.read_exact(&mut name)?;
            let name = String::from_utf8(name).map_err(std::io::Error::other)?;
            Ok(Record(name, u32::from_le_bytes(read_array(input)?)))
        }
    }

    fn records(n: u32) -> impl Iterator<Item = Record> {
        (0..n).map(|i| Record(format!("id-{}", (i * 7919) % 1000), i))
    }

    #[test]
    fn records_come_back_in_the_order_written_and_the_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = RecordSpill::create(dir.path(), "records-").unwrap();
        for r in records(500) {
            spill.append(&r).unwrap();
        }
        let back: Vec<Record> = spill.finish().unwrap().map(Result::unwrap).collect();
        assert_eq!(back, records(500).collect::<Vec<_>>());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn records_sorted_on_disk_in_many_runs_come_back_sorted_and_the_runs_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        for (count, runs) in [(0, 0), (5, 0), (1000, 1000usize.div_ceil(64))] {
            let mut sorter = DiskSorter::new(dir.path(), 64).unwrap();
            for r in records(count) {
                sorter.push(r).unwrap();
            }
            let sorted = sorter.finish().unwrap();
            assert_eq!(sorted.merged.disk_segment_count(), runs);
            let back: Vec<Record> = sorted.map(Result::unwrap).collect();
            let mut expected: Vec<Record> = records(count).collect();
            expected.sort();
            assert_eq!(back, expected);
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
