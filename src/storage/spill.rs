//! Local spill file for shares: a worker that must hold shares until its
//! input is complete appends them here and keeps only where they are, so
//! memory holds an index, not the dataset. Each share is written and read
//! back exactly once, with no encoding around it.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Where one appended pair of shares sits in the spill file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Spilled {
    offset: u64,
    len_a: u32,
    len_b: u32,
}

/// An append-only file of share pairs.
pub struct ShareSpill {
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
}

impl ShareSpill {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        Ok(ShareSpill {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, File::create(path)?),
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
    pub fn finish(mut self) -> std::io::Result<SpillFile> {
        self.out.flush()?;
        Ok(SpillFile {
            input: File::open(&self.path)?,
            path: self.path,
        })
    }
}

/// A finished spill file, read back by position; deleted when dropped.
pub struct SpillFile {
    input: File,
    path: PathBuf,
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

impl Drop for SpillFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_read_back_by_position_in_any_order_and_the_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spill.bin");
        let mut spill = ShareSpill::create(&path).unwrap();
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
        assert!(!path.exists());
    }
}
