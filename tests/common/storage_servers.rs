//! Real storage servers for the backend tests, started on 127.0.0.1 with
//! port 0: moto (S3, from PyPI), s3s-fs (S3 with SigV4 checks, from
//! crates.io) and Azurite (Azure Blob, from npm). `.ci/run` installs them.
//! A server that is not installed skips its test with a message, unless
//! `PRIO_REQUIRE_STORAGE_SERVERS=1` (set in CI) makes that a failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use prio_processor::storage::location::Location;

/// Azurite's documented development account (public, not a secret).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// s3s-fs checks SigV4 signatures against these.
const S3S_ACCESS_KEY: &str = "prio-test-access";
const S3S_SECRET_KEY: &str = "prio-test-secret";
pub const BUCKET: &str = "prio-test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Moto,
    S3sFs,
    Azurite,
}

/// A running storage server with one bucket; killed (its whole process group) on drop.
pub struct StorageServer {
    pub backend: Backend,
    child: Child,
    endpoint: String,
    dir: tempfile::TempDir,
}

impl StorageServer {
    /// Starts `backend` with an empty bucket [`BUCKET`], or returns `None`
    /// (after saying why) when the server is not installed here.
    pub fn start(backend: Backend) -> Option<StorageServer> {
        let dir = tempfile::tempdir().unwrap();
        if backend == Backend::S3sFs {
            std::fs::create_dir(dir.path().join(BUCKET)).unwrap();
        }
        let child = match command(backend, dir.path(), 0).spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return skip(&format!(
                    "{backend:?} is not installed ({e}); .ci/run installs it"
                ));
            }
            Err(e) => panic!("starting {backend:?}: {e}"),
        };
        // The guard exists before anything can fail, so the server never outlives the test.
        let mut server = StorageServer {
            backend,
            child,
            endpoint: String::new(),
            dir,
        };
        server.endpoint = match read_listening_url(&mut server.child, backend) {
            Ok(url) => url,
            Err(said) if said.contains("No module named") => {
                return skip(&format!(
                    "{backend:?} is not installed ({said}); .ci/run installs it"
                ));
            }
            Err(said) => panic!("{backend:?} did not print its URL; it said:\n{said}"),
        };
        server.wait_until_answering();
        server.create_bucket()?;
        Some(server)
    }

    /// Kills the server (its whole process group): the store stops answering.
    pub fn stop(&mut self) {
        // A group already stopped is not signalled again: its id may be reused.
        if self.child.try_wait().is_ok_and(|exited| exited.is_some()) {
            return;
        }
        // SAFETY: killpg only sends a signal to the group this test started.
        unsafe {
            libc::killpg(self.child.id() as libc::pid_t, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// Starts the stopped server again on the same port, with the objects
    /// it stored (s3s-fs keeps them on disk; the others hold them in memory).
    pub fn restart(&mut self) {
        assert_eq!(
            self.backend,
            Backend::S3sFs,
            "only s3s-fs keeps its objects"
        );
        let port: u16 = self.endpoint.rsplit(':').next().unwrap().parse().unwrap();
        self.child = command(self.backend, self.dir.path(), port)
            .spawn()
            .unwrap();
        let url = read_listening_url(&mut self.child, self.backend).unwrap();
        assert_eq!(url, self.endpoint, "restarted on another address");
        self.wait_until_answering();
    }

    /// The `(variable, value)` pairs a child process needs for this server.
    pub fn env(&self) -> Vec<(String, String)> {
        let pairs = match self.backend {
            Backend::Moto | Backend::S3sFs => {
                let (key, secret) = match self.backend {
                    Backend::S3sFs => (S3S_ACCESS_KEY, S3S_SECRET_KEY),
                    _ => ("moto-key", "moto-secret"),
                };
                [
                    ("AWS_ENDPOINT_URL", self.endpoint.clone()),
                    ("AWS_ALLOW_HTTP", "true".into()),
                    ("AWS_ACCESS_KEY_ID", key.into()),
                    ("AWS_SECRET_ACCESS_KEY", secret.into()),
                    ("AWS_REGION", "us-east-1".into()),
                ]
            }
            Backend::Azurite => [
                ("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT.into()),
                ("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY.into()),
                ("AZURE_STORAGE_ENDPOINT", self.azure_account_url()),
                ("AZURE_ALLOW_HTTP", "true".into()),
                ("AZURE_STORAGE_USE_EMULATOR", "false".into()),
            ],
        };
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// The same settings as object_store options, for in-process use
    /// (the test process's environment is shared by parallel tests).
    pub fn options(&self) -> Vec<(String, String)> {
        self.env()
            .into_iter()
            .map(|(k, v)| (k.to_lowercase(), v))
            .collect()
    }

    /// The URL of `prefix` in this server's bucket.
    pub fn url(&self, prefix: &str) -> String {
        let scheme = match self.backend {
            Backend::Moto | Backend::S3sFs => "s3",
            Backend::Azurite => "az",
        };
        format!("{scheme}://{BUCKET}/{prefix}")
    }

    /// `prefix` in this server's bucket, opened in this process.
    pub fn location(&self, prefix: &str) -> Location {
        Location::parse_with(&self.url(prefix), self.options()).unwrap()
    }

    fn azure_account_url(&self) -> String {
        format!("{}/{AZURITE_ACCOUNT}", self.endpoint)
    }

    fn wait_until_answering(&self) {
        let addr = self.endpoint.trim_start_matches("http://");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "{:?} at {addr} never answered",
                self.backend
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn create_bucket(&self) -> Option<()> {
        match self.backend {
            // s3s-fs serves the directories of its root as buckets.
            Backend::S3sFs => {}
            // moto takes an unsigned CreateBucket.
            Backend::Moto => {
                let status = http_put(&self.endpoint, &format!("/{BUCKET}"));
                assert!(status.contains(" 200 "), "moto CreateBucket: {status}");
            }
            // Azurite wants a signed request: the Azure SDK for Python makes it.
            Backend::Azurite => {
                let connection = format!(
                    "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};\
                     AccountKey={AZURITE_KEY};BlobEndpoint={};",
                    self.azure_account_url()
                );
                let script = "import sys\n\
                    from azure.storage.blob import BlobServiceClient\n\
                    BlobServiceClient.from_connection_string(sys.argv[1]).create_container(sys.argv[2])\n";
                let out = Command::new("python3")
                    .args(["-c", script, &connection, BUCKET])
                    .output()
                    .expect("python3");
                if !out.status.success() {
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    if stderr.contains("ModuleNotFoundError") {
                        return skip(
                            "azure-storage-blob (PyPI) is not installed; .ci/run installs it",
                        );
                    }
                    panic!("creating the Azurite container: {stderr}");
                }
            }
        }
        Some(())
    }
}

impl Drop for StorageServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The command that runs `backend` on 127.0.0.1 (`port` 0: any free port)
/// with its data in `dir`, in a process group of its own.
fn command(backend: Backend, dir: &std::path::Path, port: u16) -> Command {
    let port = port.to_string();
    let mut cmd = match backend {
        Backend::Moto => {
            let mut cmd = Command::new("python3");
            cmd.args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port]);
            cmd
        }
        Backend::S3sFs => {
            let mut cmd = Command::new("s3s-fs");
            cmd.args(["--host", "127.0.0.1", "--port", &port])
                .args(["--access-key", S3S_ACCESS_KEY])
                .args(["--secret-key", S3S_SECRET_KEY])
                .arg(dir)
                .env("RUST_LOG", "info");
            cmd
        }
        Backend::Azurite => {
            let mut cmd = Command::new("azurite-blob");
            cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port])
                .args(["--inMemoryPersistence", "--disableTelemetry"]);
            cmd
        }
    };
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    cmd
}

fn skip<T>(why: &str) -> Option<T> {
    if std::env::var("PRIO_REQUIRE_STORAGE_SERVERS").is_ok_and(|v| v == "1") {
        panic!("{why} (PRIO_REQUIRE_STORAGE_SERVERS=1)");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// Reads the server's output until it prints the URL it listens on (or
/// returns what it said instead); keeps draining its output afterwards so it
/// never blocks on a full pipe.
fn read_listening_url(child: &mut Child, backend: Backend) -> Result<String, String> {
    let (tx, rx) = mpsc::channel::<String>();
    let streams: [Box<dyn Read + Send>; 2] = [
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stderr.take().unwrap()),
    ];
    for stream in streams {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let marker = match backend {
        Backend::Moto => "Running on http://",
        Backend::S3sFs => "server is running at http://",
        Backend::Azurite => "listens on http://",
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(at) = line.find(marker) {
                    let url = &line[at + marker.len() - "http://".len()..];
                    return Ok(url.split_whitespace().next().unwrap().to_string());
                }
                seen.push(line);
            }
            Err(_) => return Err(seen.join("\n")),
        }
    }
}

/// An unsigned, empty HTTP PUT on loopback; returns the status line.
fn http_put(endpoint: &str, path: &str) -> String {
    let host = endpoint.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(
        stream,
        "PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut status = String::new();
    BufReader::new(stream).read_line(&mut status).unwrap();
    status
}
