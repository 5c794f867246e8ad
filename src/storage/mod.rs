//! Everything that touches files and buckets: object-store locations, each
//! server's bucket layout, ingestion-dump readers and writers (sink NDJSON,
//! Parquet, Avro), staged parts, exchanged messages, published results and
//! local spill files. Each file format is encoded and decoded in one module.

pub mod batch_dir;
pub mod dump;
pub mod error;
pub mod input;
pub mod location;
pub mod messages;
pub mod object_io;
pub mod published;
pub mod server;
pub mod spill;
pub mod staged;
mod store;
pub mod tables;

use std::io::Write;
use std::path::Path;

/// Runs a third-party decoder (parquet, apache-avro) on outside bytes and
/// turns a panic of its into an error that says so: hostile files find such
/// bugs (the fuzzers found three in parquet 60.1: a division by zero, an
/// `expect` on a dictionary page that never came, an assertion on page
/// metadata), and one bad file must never take the run down. What runs
/// inside is the decoder and, for staged parts, the few checks of ours that
/// read its output.
pub fn contain_decoder_panic<T>(decode: impl FnOnce() -> T) -> Result<T, DecoderPanic> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode))
        .map_err(|panic| DecoderPanic(panic_message(&panic)))
}

/// A third-party decoder panicked on a file; what the panic said.
#[derive(Debug, thiserror::Error)]
#[error("the decoder failed on this file ({0})")]
pub struct DecoderPanic(String);

/// What a caught panic said.
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

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
