//! Local spill files: records a worker must hold until its input is complete
//! go to disk, so memory stays bounded by one partition, not the dataset.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// An append-only file of bincode records.
pub struct SpillWriter {
    path: PathBuf,
    out: BufWriter<File>,
    records: u64,
}

impl SpillWriter {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        Ok(SpillWriter {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, File::create(path)?),
            records: 0,
        })
    }

    pub fn append<T: Serialize>(&mut self, record: &T) -> std::io::Result<()> {
        bincode::serialize_into(&mut self.out, record).map_err(std::io::Error::other)?;
        self.records += 1;
        Ok(())
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    /// Flushes and returns a reader over everything appended.
    pub fn finish<T: DeserializeOwned>(mut self) -> std::io::Result<SpillReader<T>> {
        self.out.flush()?;
        Ok(SpillReader {
            input: BufReader::with_capacity(1 << 20, File::open(&self.path)?),
            left: self.records,
            path: self.path,
            _record: std::marker::PhantomData,
        })
    }
}

/// Reads back a spill file's records in order; deletes the file when dropped.
pub struct SpillReader<T> {
    input: BufReader<File>,
    left: u64,
    path: PathBuf,
    _record: std::marker::PhantomData<T>,
}

impl<T: DeserializeOwned> Iterator for SpillReader<T> {
    type Item = std::io::Result<T>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(bincode::deserialize_from(&mut self.input).map_err(std::io::Error::other))
    }
}

impl<T> Drop for SpillReader<T> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
