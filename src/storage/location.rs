//! Object-store locations: a URL (`file://`, `s3://`, `gs://`, `az://`,
//! `memory://`) or a plain local path, resolved once into a store and a
//! prefix. Calls block, so callers (timely workers, CLI code) stay
//! synchronous and never see tokio: cloud stores run on a small shared tokio
//! runtime; local files are read and written inline on the calling thread
//! (object_store does that outside a runtime), which saves two thread
//! handoffs per call.

use std::io::Read;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

pub use super::error::StorageError;
use super::error::{credential_hint, is_cut_off, is_server_failure, is_transport_failure};
pub use super::object_io::{ObjectRanges, ObjectRead, ObjectWriter};
use super::store::{open_store, retry_config};
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::{Path, PathPart};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

pub(super) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("storage-io")
            .enable_all()
            .build()
            .expect("a tokio runtime for storage I/O")
    })
}

/// A directory-like prefix in some object store.
#[derive(Clone, Debug)]
pub struct Location {
    pub(super) store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
    /// `file://` or `memory://`: calls need no runtime.
    local: bool,
    /// `file://`: where objects sit on the local filesystem, so that
    /// [`ObjectWriter`] can write them straight to their files.
    pub(super) files: Option<Arc<LocalFileSystem>>,
}

/// Times a conditional create cut off without an answer is sent again.
const CREATE_RETRIES: usize = 3;

impl Location {
    /// Resolves a URL or a local path. Cloud credentials come from the
    /// environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`), as each SDK documents.
    pub fn parse(text: &str) -> Result<Location, StorageError> {
        Location::parse_with(text, std::iter::empty::<(String, String)>())
    }

    /// Like [`Location::parse`], with store options (object_store config
    /// keys such as `aws_endpoint` or `google_service_account_key`) that
    /// override the environment.
    pub fn parse_with(
        text: &str,
        options: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Location, StorageError> {
        let bad = |message: String| StorageError::BadUrl {
            url: text.to_string(),
            message,
        };
        let url = if text.contains("://") {
            url::Url::parse(text).map_err(|e| bad(e.to_string()))?
        } else {
            let path = std::path::absolute(text).map_err(|e| bad(e.to_string()))?;
            url::Url::from_directory_path(&path).map_err(|_| bad("not an absolute path".into()))?
        };
        let options: Vec<(String, String)> = std::env::vars().chain(options).collect();
        let retry = retry_config(&options).map_err(bad)?;
        let (store, prefix) = open_store(&url, options, retry)
            .map_err(|e| bad(format!("{e} ({})", credential_hint(text))))?;
        Ok(Location {
            store: Arc::from(store),
            prefix,
            local: matches!(url.scheme(), "file" | "memory"),
            files: (url.scheme() == "file").then(|| Arc::new(LocalFileSystem::new())),
            url: url.to_string().trim_end_matches('/').to_string(),
        })
    }

    /// The location `rel` (slash-separated) below this one. Names are taken
    /// as the store spells them, as [`Location::list`] returns them: a listed
    /// name with escapes (`a%23b` for a file `a#b`) is not escaped again.
    pub fn child(&self, rel: &str) -> Location {
        let mut prefix = self.prefix.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            let part = PathPart::parse(part).unwrap_or_else(|_| PathPart::from(part));
            prefix = prefix.clone().join(part);
        }
        Location {
            store: self.store.clone(),
            prefix,
            url: format!("{}/{}", self.url, rel.trim_matches('/')),
            local: self.local,
            files: self.files.clone(),
        }
    }

    /// Runs one store call to completion: inline for local stores, on the
    /// shared runtime for cloud stores (their HTTP clients need tokio).
    pub(super) fn block_on<F: std::future::Future>(&self, call: F) -> F::Output {
        if self.local {
            futures::executor::block_on(call)
        } else {
            runtime().block_on(call)
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub(super) fn path(&self, rel: &str) -> Path {
        self.child(rel).prefix
    }

    /// The URL of the object at `rel` (`""` is this location itself).
    pub fn object_url(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.url.clone()
        } else {
            format!("{}/{}", self.url, rel)
        }
    }

    pub(super) fn error(&self, rel: &str, source: object_store::Error) -> StorageError {
        let url = self.object_url(rel);
        match source {
            object_store::Error::NotFound { .. } => StorageError::NotFound { url },
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => StorageError::Denied {
                hint: credential_hint(&url),
                url,
            },
            source if is_transport_failure(&source) || is_server_failure(&source) => {
                StorageError::Unavailable { url, source }
            }
            source => StorageError::Other { url, source },
        }
    }

    /// Every object below this location, as (relative path, size), sorted by path.
    pub fn list(&self) -> Result<Vec<(String, u64)>, StorageError> {
        let prefix = self.prefix.clone();
        let listed: Vec<_> = self
            .block_on(self.store.list(Some(&prefix)).try_collect::<Vec<_>>())
            .map_err(|e| self.error("", e))?;
        let mut out: Vec<(String, u64)> = listed
            .into_iter()
            .filter_map(|meta| {
                let rel: Vec<String> = meta
                    .location
                    .prefix_match(&prefix)?
                    .map(|p| p.as_ref().to_string())
                    .collect();
                Some((rel.join("/"), meta.size))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Reads a whole object. A local file is read straight into a buffer of
    /// its size: object_store's local reader zeroes its buffer first, which
    /// for parts of megabytes costs more in page faults than the read.
    pub fn get(&self, rel: &str) -> Result<Bytes, StorageError> {
        let Some(files) = &self.files else {
            let path = self.path(rel);
            return self
                .block_on(async { self.store.get(&path).await?.bytes().await })
                .map_err(|e| self.error(rel, e));
        };
        let path = self.file_path(files, rel)?;
        let mut buffer = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut file| {
                // Exactly the object's size: growing by doubling would hold
                // twice the largest object.
                buffer.reserve_exact(file.metadata()?.len() as usize);
                file.read_to_end(&mut buffer)
            })
            // A directory is not an object, as in object_store.
            .map_err(|source| self.io_error(rel, source))?;
        Ok(buffer.into())
    }

    /// Where object `rel` of this `file://` location lies on disk.
    pub(super) fn file_path(
        &self,
        files: &LocalFileSystem,
        rel: &str,
    ) -> Result<std::path::PathBuf, StorageError> {
        files
            .path_to_filesystem(&self.path(rel))
            .map_err(|e| self.error(rel, e))
    }

    /// A local file's I/O error as the storage error it means.
    pub(super) fn io_error(&self, rel: &str, source: std::io::Error) -> StorageError {
        let url = self.object_url(rel);
        match source.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::IsADirectory => {
                StorageError::NotFound { url }
            }
            std::io::ErrorKind::PermissionDenied => StorageError::Denied {
                hint: credential_hint(&url),
                url,
            },
            _ => StorageError::Read { url, source },
        }
    }

    /// Writes a whole object in one put: readers see the old object or the new one, never part.
    pub fn put(&self, rel: &str, data: impl Into<PutPayload>) -> Result<(), StorageError> {
        let path = self.path(rel);
        let payload = data.into();
        self.block_on(self.store.put(&path, payload))
            .map(|_| ())
            .map_err(|e| self.error(rel, e))
    }

    /// Writes an object that must never change once written, such as a
    /// message the peer may already have read: created if absent, accepted
    /// if already there with content that `same` deems equal (a rerun; an
    /// encoding may differ between versions of this program), and a
    /// [`StorageError::Conflict`] otherwise. The create is conditional
    /// (`PutMode::Create`) on every store that supports it.
    pub fn put_once(
        &self,
        rel: &str,
        data: Bytes,
        same: impl Fn(&Bytes, &Bytes) -> bool,
    ) -> Result<(), StorageError> {
        let path = self.path(rel);
        let create = || {
            let options = object_store::PutOptions::from(object_store::PutMode::Create);
            self.block_on(self.store.put_opts(&path, data.clone().into(), options))
        };
        // object_store does not repeat a create cut off mid-request (it may
        // have landed); the comparison below makes repeating it safe. It has
        // retried one that never connected already.
        let mut outcome = create();
        for _ in 0..CREATE_RETRIES {
            match &outcome {
                Err(e) if is_cut_off(e) => outcome = create(),
                _ => break,
            }
        }
        match outcome {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) if same(&self.get(rel)?, &data) => {
                Ok(())
            }
            Err(object_store::Error::AlreadyExists { .. }) => Err(StorageError::Conflict {
                url: self.object_url(rel),
            }),
            Err(e) => Err(self.error(rel, e)),
        }
    }

    /// An object's size, or `None` when there is no such object.
    pub fn size(&self, rel: &str) -> Result<Option<u64>, StorageError> {
        let path = self.path(rel);
        match self.block_on(self.store.head(&path)) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(rel, e)),
        }
    }

    /// Whether an object exists.
    pub fn exists(&self, rel: &str) -> Result<bool, StorageError> {
        let path = self.path(rel);
        match self.block_on(self.store.head(&path)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(rel, e)),
        }
    }

    /// Deletes one object; a missing object is not an error.
    pub fn delete(&self, rel: &str) -> Result<(), StorageError> {
        let path = self.path(rel);
        match self.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(rel, e)),
        }
    }

    /// Whether this is a directory on the local filesystem.
    pub fn is_local_files(&self) -> bool {
        self.files.is_some()
    }

    /// Removes the staging files (`name#digits`, object_store's and
    /// [`ObjectWriter`]'s) that writers killed mid-write left below this
    /// location; returns how many. Listings skip such files, so nothing else
    /// ever would. Only local directories have them: elsewhere an unfinished
    /// upload is no object (buckets expire unfinished multipart uploads by
    /// lifecycle rule). Call it only while nothing writes below here.
    pub fn remove_debris(&self) -> Result<usize, StorageError> {
        self.remove_staging_files(true, |_| true)
    }

    /// Removes the staging files of the object `name` directly here (as
    /// [`Location::remove_debris`], for one object of a directory others write in).
    pub fn remove_debris_of(&self, name: &str) -> Result<usize, StorageError> {
        self.remove_staging_files(false, |file| {
            file.split_once('#')
                .is_some_and(|(object, _)| object == name)
        })
    }

    /// Removes staging files here (and below, when `below`) whose names pass `select`.
    fn remove_staging_files(
        &self,
        below: bool,
        select: impl Fn(&str) -> bool,
    ) -> Result<usize, StorageError> {
        let Some(files) = &self.files else {
            return Ok(0);
        };
        let root = files
            .path_to_filesystem(&self.prefix)
            .map_err(|e| self.error("", e))?;
        let fail = |source| StorageError::Write {
            url: self.url.clone(),
            source,
        };
        let mut removed = 0;
        let mut dirs = vec![root];
        while let Some(dir) = dirs.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(fail(e)),
            };
            for entry in entries {
                let entry = entry.map_err(fail)?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if entry.file_type().map_err(fail)?.is_dir() {
                    if below {
                        dirs.push(entry.path());
                    }
                } else if is_staging_name(&name) && select(&name) {
                    std::fs::remove_file(entry.path()).map_err(fail)?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Deletes every object below `rel`; returns how many.
    pub fn delete_all(&self, rel: &str) -> Result<usize, StorageError> {
        let below = self.child(rel);
        let objects = below.list()?;
        for (name, _) in &objects {
            below.delete(name)?;
        }
        Ok(objects.len())
    }
}

/// `name#digits`: a local writer's staging file, not an object. The rule is
/// object_store's (digits after the first `#`), so that exactly what its
/// listings hide is removed.
fn is_staging_name(name: &str) -> bool {
    name.split_once('#')
        .is_some_and(|(_, digits)| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_end_in_a_hash_and_digits() {
        for name in ["part-00000.parquet#1", "_SUCCESS#12345", "#1"] {
            assert!(is_staging_name(name), "{name}");
        }
        for name in ["part-00000.parquet", "notes#v2", "x#", "a#b#7", "a#1b"] {
            assert!(!is_staging_name(name), "{name}");
        }
    }

    #[test]
    fn local_paths_and_file_urls_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::parse(dir.path().to_str().unwrap()).unwrap();
        loc.put("a/b/c.txt", Bytes::from_static(b"hello")).unwrap();
        loc.put("a/d.txt", Bytes::from_static(b"x")).unwrap();
        assert_eq!(loc.get("a/b/c.txt").unwrap(), Bytes::from_static(b"hello"));
        assert!(loc.exists("a/d.txt").unwrap());
        assert!(!loc.exists("nope").unwrap());
        let url = format!("file://{}", dir.path().display());
        let same = Location::parse(&url).unwrap();
        assert_eq!(
            same.child("a").list().unwrap(),
            vec![("b/c.txt".to_string(), 5), ("d.txt".to_string(), 1)]
        );
        assert!(matches!(
            loc.get("missing"),
            Err(StorageError::NotFound { .. })
        ));
        assert_eq!(loc.get("a/b/c.txt").unwrap(), Bytes::from_static(b"hello"));
        assert!(matches!(loc.get("a"), Err(StorageError::NotFound { .. })));
        // Streamed objects, below and above one upload chunk.
        for size in [10, ObjectWriter::CHUNK * 2 + 17] {
            let data: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
            let mut writer = loc.writer("a/streamed.bin").unwrap();
            for piece in data.chunks(1 << 20) {
                std::io::Write::write_all(&mut writer, piece).unwrap();
            }
            writer.finish().unwrap();
            assert_eq!(loc.get("a/streamed.bin").unwrap(), Bytes::from(data));
        }
        loc.delete("a/streamed.bin").unwrap();
        // An unfinished object never appears and leaves no staging file.
        let mut writer = loc.writer("a/unfinished.bin").unwrap();
        std::io::Write::write_all(&mut writer, b"half").unwrap();
        drop(writer);
        let mut names: Vec<_> = std::fs::read_dir(dir.path().join("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["b", "d.txt"]);
        assert_eq!(loc.delete_all("a/b").unwrap(), 1);
        assert_eq!(loc.list().unwrap(), vec![("a/d.txt".to_string(), 1)]);
    }

    #[test]
    fn put_once_accepts_a_rerun_and_refuses_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::parse(dir.path().to_str().unwrap()).unwrap();
        loc.put_once("m/x", Bytes::from_static(b"same"), |a, b| a == b)
            .unwrap();
        loc.put_once("m/x", Bytes::from_static(b"same"), |a, b| a == b)
            .unwrap();
        let err = loc
            .put_once("m/x", Bytes::from_static(b"new"), |a, b| a == b)
            .unwrap_err();
        assert!(matches!(err, StorageError::Conflict { .. }), "{err}");
        assert!(err.to_string().contains("cleanup"), "{err}");
        assert_eq!(loc.get("m/x").unwrap(), Bytes::from_static(b"same"));
    }

    /// A one-request HTTP server on loopback: answers `status` with no body,
    /// returns the request line.
    fn answer_once(status: &'static str) -> (String, std::thread::JoinHandle<String>) {
        answer_once_with(status, "Content-Length: 0\r\n\r\n")
    }

    /// [`answer_once`], sending `rest` (headers, blank line, body) after the status line.
    fn answer_once_with(
        status: &'static str,
        rest: &'static str,
    ) -> (String, std::thread::JoinHandle<String>) {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = std::io::BufReader::new(stream);
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            write!(
                reader.get_mut(),
                "HTTP/1.1 {status}\r\nConnection: close\r\n{rest}"
            )
            .unwrap();
            request_line.trim_end().to_string()
        });
        (base, handle)
    }

    /// A loopback GCS location whose one request gets `status` and `rest`.
    fn gcs_answering(status: &'static str, rest: &'static str) -> Location {
        let (base, _) = answer_once_with(status, rest);
        let key = serde_json::json!({
            "private_key": "", "private_key_id": "", "client_email": "",
            "disable_oauth": true, "gcs_base_url": base,
        });
        Location::parse_with(
            "gs://bucket/p",
            [
                ("google_service_account_key".to_string(), key.to_string()),
                // The one answer is all there is: retrying would wait for nothing.
                ("storage_retry_timeout".to_string(), "0.3".to_string()),
            ],
        )
        .unwrap()
    }

    /// A range cut off by the store is the store's failure, kept for the
    /// caller, not the end of a shorter file.
    #[test]
    fn an_object_read_in_ranges_tells_a_cut_off_body_from_its_end() {
        use std::io::Read;
        let headers = "ETag: \"1\"\r\nLast-Modified: Wed, 26 Jun 2019 00:00:00 GMT\r\n";
        let answer = |length: u64, body: &str| {
            let rest = format!(
                "{headers}Content-Range: bytes 0-{}/{length}\r\nContent-Length: {length}\r\n\r\n{body}",
                length - 1
            );
            gcs_answering("206 Partial Content", Box::leak(rest.into_boxed_str()))
        };
        let whole = answer(5, "hello").ranges("x", 5);
        let mut text = String::new();
        whole
            .read_from(0)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "hello");
        assert!(whole.failure().is_none());

        let cut = answer(1000, "hello").ranges("x", 1000);
        let mut read = Vec::new();
        assert!(cut.read_from(0).unwrap().read_to_end(&mut read).is_err());
        let failure = cut.failure().expect("the store's failure is kept");
        assert!(failure.to_string().contains("gs://bucket/p/x"), "{failure}");
    }

    #[test]
    fn gcs_urls_address_the_bucket_and_object_and_denials_name_the_variable() {
        let (base, request) = answer_once("403 Forbidden");
        // A service-account key without OAuth that points the client at loopback.
        let key = serde_json::json!({
            "private_key": "", "private_key_id": "", "client_email": "",
            "disable_oauth": true, "gcs_base_url": base,
        });
        let loc = Location::parse_with(
            "gs://telemetry-bucket/prio/a",
            [("google_service_account_key".to_string(), key.to_string())],
        )
        .unwrap();
        assert_eq!(loc.url(), "gs://telemetry-bucket/prio/a");
        let err = loc.child("2019-06-26").get("raw/_SUCCESS").unwrap_err();
        // object_store percent-encodes the whole object name; GCS decodes it.
        let request = request.join().unwrap();
        let mut decoded = Vec::new();
        let mut bytes = request.bytes();
        while let Some(b) = bytes.next() {
            if b == b'%' {
                let hex = [bytes.next().unwrap(), bytes.next().unwrap()];
                decoded.push(u8::from_str_radix(std::str::from_utf8(&hex).unwrap(), 16).unwrap());
            } else {
                decoded.push(b);
            }
        }
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            "GET /telemetry-bucket/prio/a/2019-06-26/raw/_SUCCESS HTTP/1.1"
        );
        let text = err.to_string();
        assert!(matches!(err, StorageError::Denied { .. }), "{text}");
        assert!(
            text.contains("gs://telemetry-bucket/prio/a/2019-06-26/raw/_SUCCESS"),
            "{text}"
        );
        assert!(text.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{text}");
    }

    #[test]
    fn gcs_credentials_file_that_cannot_be_read_is_a_clear_error() {
        let err = Location::parse_with(
            "gs://bucket/prefix",
            [(
                "google_application_credentials".to_string(),
                "/nonexistent/prio-key.json".to_string(),
            )],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("gs://bucket/prefix"), "{err}");
        assert!(err.contains("/nonexistent/prio-key.json"), "{err}");
        assert!(err.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{err}");
    }

    #[test]
    fn unknown_scheme_is_a_clear_error() {
        let err = Location::parse("ftp://host/x").unwrap_err().to_string();
        assert!(err.contains("ftp://host/x"), "{err}");
    }
}
