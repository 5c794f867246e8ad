//! Every storage backend against a real server on 127.0.0.1: one
//! conformance suite for the `Location` operations the jobs rely on, then
//! the whole two-server pipeline (`integrate --storage`) in separate OS
//! processes. GCS runs the conformance suite against a real bucket when
//! `GOOGLE_APPLICATION_CREDENTIALS` and `PRIO_TEST_GCS_BUCKET` are set.

mod common;

use std::io::Read;
use std::process::Command;

use bytes::Bytes;
use common::storage_servers::{Backend, StorageServer};
use prio_processor::storage::location::{Location, StorageError};

/// What the jobs need from a store, checked the same way on each backend.
fn conformance(loc: &Location) {
    // Round trips, including names with the '=' of partition directories.
    let big = Bytes::from(
        (0..3_000_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    );
    loc.put("batch_id=x/part-00000.parquet", big.clone())
        .unwrap();
    loc.put("batch_id=x/_SUCCESS", Bytes::new()).unwrap();
    loc.put(
        "batch_id=xy/part-00000.parquet",
        Bytes::from_static(b"sibling"),
    )
    .unwrap();
    loc.put("top.json", Bytes::from_static(b"{}")).unwrap();
    assert_eq!(loc.get("batch_id=x/part-00000.parquet").unwrap(), big);
    assert_eq!(loc.get("batch_id=x/_SUCCESS").unwrap(), Bytes::new());

    // Listing: sorted, relative, with sizes, and a prefix is a directory, not a string prefix.
    assert_eq!(
        loc.list().unwrap(),
        vec![
            ("batch_id=x/_SUCCESS".to_string(), 0),
            (
                "batch_id=x/part-00000.parquet".to_string(),
                big.len() as u64
            ),
            ("batch_id=xy/part-00000.parquet".to_string(), 7),
            ("top.json".to_string(), 2),
        ]
    );
    assert_eq!(loc.child("batch_id=x").list().unwrap().len(), 2);
    assert!(loc.child("nothing-here").list().unwrap().is_empty());

    // Read whole, and in ranges (as stage reads its inputs).
    assert_eq!(loc.get("batch_id=x/part-00000.parquet").unwrap(), big);
    let ranges = loc.ranges("batch_id=x/part-00000.parquet", big.len() as u64);
    for start in [0, 1000] {
        let mut read = Vec::new();
        ranges
            .read_from(start)
            .unwrap()
            .read_to_end(&mut read)
            .unwrap();
        assert_eq!(read, big[start as usize..]);
    }
    assert!(ranges.failure().is_none());
    // A missing object fails on opening (local disk) or on the first read (a
    // store); either way the failure kept says what it was.
    let missing = loc.ranges("batch_id=x/missing", 10);
    if let Ok(mut object) = missing.read_from(0) {
        assert!(object.read_to_end(&mut Vec::new()).is_err());
    }
    assert!(matches!(
        missing.failure(),
        Some(StorageError::NotFound { .. })
    ));
    assert!(loc.exists("batch_id=x/_SUCCESS").unwrap());
    assert!(!loc.exists("batch_id=x/missing").unwrap());
    assert!(matches!(
        loc.get("batch_id=x/missing"),
        Err(StorageError::NotFound { .. })
    ));

    // A plain put replaces.
    loc.put("top.json", Bytes::from_static(b"{\"v\":2}"))
        .unwrap();
    assert_eq!(
        loc.get("top.json").unwrap(),
        Bytes::from_static(b"{\"v\":2}")
    );

    // Write-once objects: a rerun with the same bytes passes, other bytes are refused.
    loc.put_once("sent/part.parquet", Bytes::from_static(b"first"), |a, b| {
        a == b
    })
    .unwrap();
    loc.put_once("sent/part.parquet", Bytes::from_static(b"first"), |a, b| {
        a == b
    })
    .unwrap();
    let err = loc
        .put_once("sent/part.parquet", Bytes::from_static(b"other"), |a, b| {
            a == b
        })
        .unwrap_err();
    assert!(matches!(err, StorageError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains("sent/part.parquet"), "{err}");
    assert_eq!(
        loc.get("sent/part.parquet").unwrap(),
        Bytes::from_static(b"first")
    );

    // Streamed objects: one put when small, a multipart upload when larger than a chunk.
    for (name, size) in [("streamed/small", 1000usize), ("streamed/large", 17 << 20)] {
        let data: Vec<u8> = (0..size).map(|i| (i % 241) as u8).collect();
        let mut writer = loc.writer(name).unwrap();
        for piece in data.chunks(3 << 20) {
            std::io::Write::write_all(&mut writer, piece).unwrap();
        }
        writer.finish().unwrap();
        assert_eq!(loc.get(name).unwrap(), Bytes::from(data), "{name}");
    }
    assert_eq!(loc.delete_all("streamed").unwrap(), 2);

    // Deleting: missing objects are fine, and only what is below the prefix goes.
    loc.delete("batch_id=x/missing").unwrap();
    assert_eq!(loc.delete_all("batch_id=x").unwrap(), 2);
    assert_eq!(
        loc.list().unwrap(),
        vec![
            ("batch_id=xy/part-00000.parquet".to_string(), 7),
            ("sent/part.parquet".to_string(), 5),
            ("top.json".to_string(), 7),
        ]
    );
    assert_eq!(loc.delete_all("").unwrap(), 3);
    assert!(loc.list().unwrap().is_empty());
}

/// The pipeline's prefix in the store, kept short: s3s-fs keeps each
/// object's metadata in a file named after the base64 of its key, so keys
/// longer than about 160 characters fail there (file names are at most 255
/// bytes), far below S3's 1024. Real Firefox batch ids are long.
const RUN: &str = "i";

/// Runs the whole system with both servers' buckets on `server`.
fn pipeline(server: &StorageServer) {
    let work = tempfile::tempdir().unwrap();
    let storage = server.url(RUN);
    common::integrate_green(110, work.path(), &["--storage", &storage], server.env());
    // Both servers published into the store, not onto local disk.
    for role in ["a", "b"] {
        let processed =
            server.location(&format!("{RUN}/server-{role}/private/2019-06-26/processed"));
        assert!(processed.exists("_SUCCESS").unwrap(), "server {role}");
    }
    // Locally: only the generated dump and the HTML page of the results.
    assert!(common::files_below(work.path())
        .iter()
        .all(|f| f.starts_with(work.path().join("dump")) || *f == work.path().join("report.html")));

    // cleanup resets server a's private bucket and inbox in the store, and nothing else.
    let bucket = |role: &str, name: &str| server.url(&format!("{RUN}/server-{role}/{name}"));
    common::succeeded(
        Command::new(env!("CARGO_BIN_EXE_prio-processor"))
            .args(["cleanup", "--date", "2019-06-26"])
            .env("BUCKET_INTERNAL_PRIVATE", bucket("a", "private"))
            .env("BUCKET_INTERNAL_SHARED", bucket("a", "inbox"))
            .envs(server.env())
            .output()
            .unwrap(),
    );
    // What is left is the server's mark on its buckets, which is not the date's.
    let listed = |role: &str, name: &str| {
        server
            .location(&format!("{RUN}/server-{role}/{name}"))
            .list()
            .unwrap()
            .into_iter()
            .filter(|(name, _)| name != "_OWNER.json")
            .count()
    };
    assert_eq!(listed("a", "private"), 0);
    assert_eq!(listed("a", "inbox"), 0);
    assert!(listed("b", "private") > 0 && listed("b", "inbox") > 0);
}

#[test]
fn moto_conformance() {
    if let Some(server) = StorageServer::start(Backend::Moto) {
        conformance(&server.location("conformance"));
    }
}

#[test]
fn moto_two_server_pipeline() {
    if let Some(server) = StorageServer::start(Backend::Moto) {
        pipeline(&server);
    }
}

#[test]
fn s3s_fs_conformance_with_signed_requests() {
    if let Some(server) = StorageServer::start(Backend::S3sFs) {
        conformance(&server.location("conformance"));
    }
}

#[test]
fn s3s_fs_two_server_pipeline() {
    if let Some(server) = StorageServer::start(Backend::S3sFs) {
        pipeline(&server);
    }
}

#[test]
fn s3s_fs_refuses_wrong_credentials_with_a_hint() {
    let Some(server) = StorageServer::start(Backend::S3sFs) else {
        return;
    };
    let mut options = server.options();
    for (k, v) in &mut options {
        if k == "aws_secret_access_key" {
            *v = "wrong".into();
        }
    }
    let loc = Location::parse_with(&server.url("denied"), options).unwrap();
    let err = loc.put("x", Bytes::from_static(b"x")).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StorageError::Denied { .. }), "{text}");
    assert!(text.contains("s3://prio-test/denied/x"), "{text}");
    assert!(text.contains("AWS_SECRET_ACCESS_KEY"), "{text}");
    assert!(!text.contains("wrong"), "the secret must not leak: {text}");
}

/// Parquet inputs on a store are read in ranges (footer, then row groups),
/// and stage exactly what the same files on local disk stage.
#[test]
fn s3s_fs_parquet_inputs_are_read_in_ranges_and_staged_as_from_local_disk() {
    let Some(server) = StorageServer::start(Backend::S3sFs) else {
        return;
    };
    let bin = env!("CARGO_BIN_EXE_prio-processor");
    let work = tempfile::tempdir().unwrap();
    let config = r#"{"x": {"vdaf": "count"}, "s": {"vdaf": "sum", "max_measurement": 9}}"#;
    let key = |_| {
        let out = Command::new(bin).arg("keygen").output().unwrap().stdout;
        let key: serde_json::Value = serde_json::from_slice(&out).unwrap();
        key["public_key"].as_str().unwrap().to_string()
    };
    let dump = work.path().join("dump");
    common::succeeded(
        Command::new(bin)
            .args(["generate", "--config", config, "--pings", "40", "--output"])
            .arg(&dump)
            .env("PUBLIC_KEY_HEX_A", key(()))
            .env("PUBLIC_KEY_HEX_B", key(()))
            .output()
            .unwrap(),
    );
    let local = dump.join("parquet");
    let remote = server.location("parquet-input");
    for file in common::files_below(&local) {
        let rel = file
            .strip_prefix(&local)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        remote
            .put(&rel, Bytes::from(std::fs::read(&file).unwrap()))
            .unwrap();
    }
    let stage = |input: &str, output: &std::path::Path| {
        common::succeeded(
            Command::new(bin)
                .args([
                    "stage",
                    "--date",
                    "2019-06-26",
                    "--config",
                    config,
                    "--input",
                    input,
                ])
                .arg("--output")
                .arg(output)
                .env(
                    "STAGING_SECRET",
                    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
                )
                .envs(server.env())
                .output()
                .unwrap(),
        );
    };
    let (from_disk, from_store) = (
        work.path().join("from-disk"),
        work.path().join("from-store"),
    );
    stage(local.to_str().unwrap(), &from_disk);
    stage(&server.url("parquet-input"), &from_store);
    let parts = |dir: &std::path::Path| {
        common::files_below(dir)
            .into_iter()
            .filter(|f| f.to_string_lossy().contains("part-"))
            .map(|f| {
                (
                    f.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&f).unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    let staged = parts(&from_disk);
    assert!(!staged.is_empty());
    assert!(staged == parts(&from_store), "the parts differ");
}

/// A store that goes away mid-run. Stopped for two seconds once server a
/// has finished verify1 (so every later step of both servers meets it), it
/// is waited for: the run ends with the known answers. Stopped for good at
/// the same point, both servers fail with exit 1 and an error that names the
/// store and says what to do; once it is back, a rerun of both servers
/// completes with the known answers.
#[test]
fn s3s_fs_restarted_mid_run_is_waited_for_and_a_lasting_outage_fails_clearly() {
    let Some(mut server) = StorageServer::start(Backend::S3sFs) else {
        return;
    };
    let bin = env!("CARGO_BIN_EXE_prio-processor");
    let output = |args: &[&str]| Command::new(bin).args(args).output().unwrap().stdout;
    let keys: [serde_json::Value; 2] =
        [(), ()].map(|()| serde_json::from_slice(&output(&["keygen"])).unwrap());
    let secret = |name: &str| {
        let seed = String::from_utf8(output(&["shared-seed"])).unwrap();
        (name.to_string(), seed.trim().to_string())
    };
    let config = r#"{"x": {"vdaf": "count", "min_batch_size": 1}, "s": {"vdaf": "sum", "max_measurement": 9, "min_batch_size": 1}}"#;
    let mut env = server.env();
    env.extend([secret("SHARED_SECRET"), secret("STAGING_SECRET")]);
    env.push(("DATA_CONFIG".into(), config.into()));
    // A lasting outage fails within seconds, not object_store's 3 minutes.
    env.push(("STORAGE_RETRY_TIMEOUT".into(), "6".into()));
    for (role, key) in ["A", "B"].iter().zip(&keys) {
        for (var, field) in [
            ("PRIVATE_KEY_HEX", "private_key"),
            ("PRIVATE_SIGNING_KEY_HEX", "signing_private_key"),
        ] {
            env.push((format!("{var}_{role}"), key[field].as_str().unwrap().into()));
        }
    }
    let work = tempfile::tempdir().unwrap();
    let root = server.url("r");
    let verified = server.location("r/server-a/private/2019-06-26/intermediate/internal/verify1");
    let integrate = || {
        Command::new(bin)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "integrate",
                "--pings",
                "60",
                "--storage",
                &root,
                "--work-dir",
            ])
            .arg(work.path())
            .envs(env.iter().cloned())
            // The retries are seen in object_store's info lines.
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let wait_for_verify1 = |run: &mut std::process::Child| {
        let started = std::time::Instant::now();
        while !verified.exists("_SUCCESS").unwrap() {
            assert!(
                run.try_wait().unwrap().is_none(),
                "integrate ended before verify1"
            );
            assert!(started.elapsed().as_secs() < 120, "verify1 did not finish");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };

    let mut run = integrate();
    wait_for_verify1(&mut run);
    server.stop();
    std::thread::sleep(std::time::Duration::from_secs(2));
    server.restart();
    let out = run.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(stdout.matches("  yes  ").count(), 2, "{stdout}");
    assert!(
        stderr.contains("backing off"),
        "no request was retried:\n{stderr}"
    );

    // The first run's marker must not count for the second.
    server.location("").delete_all("r").unwrap();
    let mut run = integrate();
    wait_for_verify1(&mut run);
    server.stop();
    let out = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("s3://prio-test/r/server-")
            && stderr.contains("the storage service did not answer or kept failing")
            && stderr.contains("then rerun"),
        "{stderr}"
    );

    server.restart();
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("dump/expected.json")).unwrap())
            .unwrap();
    let servers = ["a", "b"].map(|role| {
        let i = usize::from(role == "b");
        let bucket = |role: &str, name: &str| server.url(&format!("r/server-{role}/{name}"));
        let peer = ["a", "b"][1 - i];
        Command::new(bin)
            .args(["process", "--date", "2019-06-26"])
            .envs(env.iter().cloned())
            .env("SERVER_ID", role)
            .env("PRIVATE_KEY_HEX", keys[i]["private_key"].as_str().unwrap())
            .env(
                "PRIVATE_SIGNING_KEY_HEX",
                keys[i]["signing_private_key"].as_str().unwrap(),
            )
            .env(
                "PUBLIC_SIGNING_KEY_HEX_EXTERNAL",
                keys[1 - i]["signing_public_key"].as_str().unwrap(),
            )
            .env("BUCKET_INTERNAL_PRIVATE", bucket(role, "private"))
            .env("BUCKET_INTERNAL_SHARED", bucket(role, "inbox"))
            .env("BUCKET_EXTERNAL_SHARED", bucket(peer, "inbox"))
            .env("RETRY_DELAY", "0.2")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    });
    for (role, child) in ["a", "b"].iter().zip(servers) {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "rerun of {role}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for batch in ["x", "s"] {
            let published = server
                .location(&format!(
                    "r/server-{role}/private/2019-06-26/processed/batch_id={batch}"
                ))
                .get("aggregate.json")
                .unwrap();
            let published: serde_json::Value = serde_json::from_slice(&published).unwrap();
            assert_eq!(
                (&published["aggregate"], &published["reports_aggregated"]),
                (
                    &expected["batches"][batch]["aggregate"],
                    &expected["batches"][batch]["reports"]
                ),
                "{batch} at {role} after the rerun"
            );
        }
    }
}

#[test]
fn azurite_conformance() {
    if let Some(server) = StorageServer::start(Backend::Azurite) {
        conformance(&server.location("conformance"));
    }
}

#[test]
fn azurite_two_server_pipeline() {
    if let Some(server) = StorageServer::start(Backend::Azurite) {
        pipeline(&server);
    }
}

/// Needs a real bucket: `GOOGLE_APPLICATION_CREDENTIALS=key.json PRIO_TEST_GCS_BUCKET=name`.
#[test]
fn gcs_conformance_against_a_real_bucket() {
    let (Ok(_), Ok(bucket)) = (
        std::env::var("GOOGLE_APPLICATION_CREDENTIALS"),
        std::env::var("PRIO_TEST_GCS_BUCKET"),
    ) else {
        eprintln!(
            "SKIPPED: set GOOGLE_APPLICATION_CREDENTIALS and PRIO_TEST_GCS_BUCKET to run the \
             conformance suite against a real GCS bucket"
        );
        return;
    };
    let run = format!("prio-processor-conformance/{}", std::process::id());
    conformance(&Location::parse(&format!("gs://{bucket}/{run}")).unwrap());
}
