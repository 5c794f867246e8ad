//! `stage` end to end through the binary: the real Firefox ping, malformed
//! and duplicated input, the three input formats, worker and process counts,
//! reruns, and unreadable files.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

mod common;

use prio_processor::storage::input::InputFormat;
use prio_processor::wire::envelope::generate_keypair;
use prio_processor::wire::ping::SinkMessage;

const SECRET: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const DATE: &str = "2019-06-26";
/// The batch ids staged: those of the generated dumps and of the Firefox ping.
const CONFIG: &str = r#"{"x": 64, "y": 16,
    "content.blocking_blocked_TESTONLY-0": 2046,
    "content.blocking_blocked_TESTONLY-1": 441,
    "content.blocking_storage_access_api_exempt_TESTONLY-0": 2046,
    "content.blocking_storage_access_api_exempt_TESTONLY-1": 441}"#;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_prio-processor"));
    c.env("STAGING_SECRET", SECRET).env("DATA_CONFIG", CONFIG);
    c
}

/// Writes `bytes` as sink file `name` (below `DATE/00/telemetry/prio/4/`) under `sink`.
fn write_sink_file(sink: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let file = sink.join(format!("{DATE}/00/telemetry/prio/4/{name}"));
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, bytes).unwrap();
    file
}

/// The real Firefox 69 prio ping of `data/fixtures`.
fn firefox_ping() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/fixtures/fx-69.0a1.json"
    ))
    .unwrap()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed:\n{}{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `stage --date DATE --input INPUT`, for the caller to add outputs and flags.
fn stage_command(input: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = bin();
    cmd.args(["stage", "--date", DATE, "--input"]).arg(input);
    cmd
}

fn stage(input: &Path, output: &Path, extra: &[&str]) -> Output {
    run(stage_command(input).arg("--output").arg(output).args(extra))
}

/// Every file below `dir`, relative path -> bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    common::files_below(dir)
        .into_iter()
        .map(|p| {
            (
                p.strip_prefix(dir).unwrap().display().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// The staged parts only (markers hold run-specific fields like the input URL).
fn parts(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    tree(dir)
        .into_iter()
        .filter(|(k, _)| !k.ends_with("_SUMMARY.json"))
        .collect()
}

fn counters(dir: &Path) -> BTreeMap<String, u64> {
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join(format!("submission_date={DATE}/_SUMMARY.json"))).unwrap(),
    )
    .unwrap();
    serde_json::from_value(summary["counters"].clone()).unwrap()
}

/// Reads a staged Parquet part: (batch_id, server_id, id, payload) rows.
fn rows(path: &Path) -> Vec<(String, String, String, Vec<u8>)> {
    use arrow::array::AsArray;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(path).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut out = Vec::new();
    for batch in reader {
        let b = batch.unwrap();
        let s = |i: usize| b.column(i).as_string::<i32>().clone();
        let (batch_id, server, id) = (s(0), s(1), s(2));
        let payload = b.column(3).as_binary::<i32>().clone();
        for i in 0..b.num_rows() {
            out.push((
                batch_id.value(i).into(),
                server.value(i).into(),
                id.value(i).into(),
                payload.value(i).to_vec(),
            ));
        }
    }
    out
}

/// A generated dump with duplicates, malformed records and an unknown batch id.
fn generated_dump(dir: &Path, pings: usize) -> serde_json::Value {
    let (a, b) = (generate_keypair(), generate_keypair());
    run(bin()
        .args([
            "generate",
            "--config",
            r#"{"x": 64, "y": 16}"#,
            "--pings",
            &pings.to_string(),
        ])
        .args([
            "--duplicate-rate",
            "0.2",
            "--malformed-rate",
            "0.2",
            "--entries-per-batch",
            "2",
            "--unknown-batch-id",
            "bad-id",
        ])
        .arg("--output")
        .arg(dir)
        .env("PUBLIC_KEY_HEX_A", a.public_key().to_hex())
        .env("PUBLIC_KEY_HEX_B", b.public_key().to_hex()));
    serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap()
}

#[test]
fn firefox_ping_is_staged_with_matching_ids_for_both_servers() {
    let dir = tempfile::tempdir().unwrap();
    let ping = firefox_ping();
    let line = serde_json::to_vec(&SinkMessage::wrap(
        &ping,
        "91450ff2",
        "2019-06-26T12:45:08.000000Z",
    ))
    .unwrap();
    let input = dir.path().join("in");
    let file = input.join("2019-06-26/12/telemetry/prio/4/part-0.ndjson");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, [line.as_slice(), b"\n"].concat()).unwrap();
    let out = dir.path().join("out");
    stage(&input, &out, &[]);
    let c = counters(&out);
    assert_eq!(c["pings_read"], 1);
    // The sink also writes gzip-compressed NDJSON: same output.
    let gz_input = dir.path().join("gz");
    let gz = gz_input.join("2019-06-26/12/telemetry/prio/4/part-0.ndjson.gz");
    std::fs::create_dir_all(gz.parent().unwrap()).unwrap();
    std::fs::write(
        &gz,
        prio_processor::storage::dump::gzip(&std::fs::read(&file).unwrap()),
    )
    .unwrap();
    stage(&gz_input, &dir.path().join("out-gz"), &[]);
    assert_eq!(parts(&dir.path().join("out-gz")), parts(&out));
    let base = out.join(format!("submission_date={DATE}"));
    assert!(base.join("_SUCCESS").exists());
    for batch in [
        "content.blocking_blocked_TESTONLY-0",
        "content.blocking_blocked_TESTONLY-1",
    ] {
        assert_eq!(c[&format!("entries/{batch}")], 3, "{batch}");
        let a = rows(&base.join(format!("server_id=a/batch_id={batch}/part-00000.parquet")));
        let b = rows(&base.join(format!("server_id=b/batch_id={batch}/part-00000.parquet")));
        assert_eq!(a.len(), 3);
        let ids = |r: &[(String, String, String, Vec<u8>)]| {
            r.iter().map(|x| x.2.clone()).collect::<Vec<_>>()
        };
        assert_eq!(
            ids(&a),
            ids(&b),
            "both servers get the same report ids in the same order"
        );
        let mut sorted = ids(&a);
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, ids(&a), "sorted and unique");
        assert!(a
            .iter()
            .all(|r| r.0 == batch && r.1 == "a" && r.2.len() == 32));
        assert!(b.iter().all(|r| r.1 == "b"));
        // The ping id does not appear anywhere in the output.
        assert!(!ids(&a).iter().any(|id| id.contains("91450ff2")));
        // Server a's shares are the large ones, as in the ping.
        assert!(a[0].3.len() > b[0].3.len());
    }
}

#[test]
fn malformed_and_duplicate_records_are_counted_and_formats_agree() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    let expected = generated_dump(&dump, 240);
    let out = |n: &str| dir.path().join(n);
    stage(
        &dump.join("sink"),
        &out("ndjson"),
        &["--partition-size", "200KB"],
    );
    stage(
        &dump.join("parquet"),
        &out("parquet"),
        &["--partition-size", "200KB"],
    );
    stage(
        &dump.join("avro"),
        &out("avro"),
        &["--partition-size", "200KB", "--workers", "2"],
    );

    let c = counters(&out("ndjson"));
    let pings = expected["pings"].as_u64().unwrap();
    let duplicates = expected["duplicates"].as_u64().unwrap();
    assert_eq!(c["pings_read"], pings + duplicates);
    assert_eq!(c["duplicates_dropped"], duplicates);
    assert!(duplicates > 20, "the dump has duplicates: {duplicates}");
    for (format, dir_name) in [
        ("ndjson", "ndjson"),
        ("table", "parquet"),
        ("table", "avro"),
    ] {
        let c = counters(&out(dir_name));
        let mut rejected: BTreeMap<String, u64> = c
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("rejected/")?.to_string(), *v)))
            .collect();
        // Counted as read: every copy of a ping sends one entry for bad-id.
        assert_eq!(
            rejected.remove("unknown_batch_id"),
            Some(pings + duplicates),
            "{dir_name}: entries of batch ids not in the config are dropped"
        );
        let want: BTreeMap<String, u64> =
            serde_json::from_value(expected["malformed"][format].clone()).unwrap();
        assert_eq!(rejected, want, "{dir_name}");
    }
    for batch in ["x", "y"] {
        assert_eq!(
            c[&format!("entries/{batch}")],
            expected["batches"][batch]["reports"].as_u64().unwrap()
        );
        assert!(
            c[&format!("parts/{batch}")] >= 2,
            "{batch} is split into several parts"
        );
    }
    assert!(
        !c.contains_key("entries/bad-id")
            && !out("ndjson")
                .join(format!(
                    "submission_date={DATE}/server_id=a/batch_id=bad-id"
                ))
                .exists(),
        "unknown batch ids are not staged"
    );
    let reference = parts(&out("ndjson"));
    assert_eq!(
        parts(&out("parquet")),
        reference,
        "Parquet input stages identically"
    );
    assert_eq!(
        parts(&out("avro")),
        reference,
        "Avro input stages identically"
    );
    // Both servers get the same parts.
    let names = |server: &str| {
        reference
            .keys()
            .filter_map(|k| {
                k.split_once(&format!("server_id={server}/"))
                    .map(|(_, rest)| rest.to_string())
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(names("a"), names("b"));
}

#[test]
fn output_is_identical_for_any_worker_or_process_count_and_reruns() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    generated_dump(&dump, 120);
    let input = dump.join("sink");
    let out = |n: &str| dir.path().join(n);
    let size = ["--partition-size", "100KB"];
    stage(&input, &out("one"), &size);
    stage(
        &input,
        &out("two"),
        &[&size[..], &["--workers", "2"]].concat(),
    );
    let hosts = common::hostfile(dir.path(), 2);
    let cluster = |i: usize| {
        let mut cmd = stage_command(&input);
        cmd.arg("--output")
            .arg(out("procs"))
            .args(size)
            .args([
                "--processes",
                "2",
                "--process",
                &i.to_string(),
                "--hostfile",
            ])
            .arg(&hosts);
        cmd.spawn().unwrap()
    };
    let (p0, p1) = (cluster(0), cluster(1));
    for p in [p0, p1] {
        assert!(p.wait_with_output().unwrap().status.success());
    }
    let reference = parts(&out("one"));
    assert!(reference.len() > 4);
    assert_eq!(parts(&out("two")), reference, "2 workers");
    assert_eq!(parts(&out("procs")), reference, "2 processes");
    let summary = counters(&out("one"));
    assert!(summary["duplicates_dropped"] > 0);
    assert_eq!(counters(&out("two")), summary, "2 workers count the same");
    assert_eq!(
        counters(&out("procs")),
        summary,
        "2 processes count the same"
    );

    // A rerun replaces the output: stale files from a run with other parts disappear.
    stage(&input, &out("one"), &["--partition-size", "10KB"]);
    let smaller = parts(&out("one"));
    assert!(smaller.len() > reference.len());
    stage(&input, &out("one"), &size);
    assert_eq!(
        parts(&out("one")),
        reference,
        "rerun gives identical output, nothing stale"
    );
}

#[test]
fn submission_timestamps_are_read_as_utc_and_records_without_one_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let ping = firefox_ping();
    let line = |timestamp: &str| {
        serde_json::to_string(&SinkMessage::wrap(&ping, "91450ff2", timestamp)).unwrap()
    };
    let no_attributes = serde_json::json!({"payload": SinkMessage::wrap(&ping, "x", "").payload});
    let lines = [
        line("2019-06-25T23:59:59-01:00"), // 06-26 in UTC: staged
        line("2019-06-26T23:30-01:00"),    // 06-27 in UTC
        line("garbage"),
        no_attributes.to_string(),
    ];
    write_sink_file(
        &dir.path().join("sink"),
        "part-0.ndjson",
        lines
            .join(
                "
",
            )
            .as_bytes(),
    );
    let out = dir.path().join("out");
    stage(&dir.path().join("sink"), &out, &[]);
    let c = counters(&out);
    assert_eq!(c["pings_read"], 1, "{c:?}");
    assert_eq!(c["rejected/date_outside"], 1, "{c:?}");
    assert_eq!(c["rejected/bad_timestamp"], 1, "{c:?}");
    assert_eq!(c["rejected/missing_timestamp"], 1, "{c:?}");
}

/// Inputs planted from `fuzz/regressions/input_file` whose selector byte
/// names `format` (read whole or in ranges), as `found-N.EXT` files in `dir`.
fn plant_fuzz_regressions(dir: &Path, format: InputFormat, ext: &str) -> u64 {
    let regressions = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/input_file");
    let index = InputFormat::ALL.iter().position(|f| *f == format).unwrap();
    let mut planted = 0;
    for entry in std::fs::read_dir(regressions).unwrap() {
        let input = std::fs::read(entry.unwrap().path()).unwrap();
        if let Some((selector, file)) = input.split_first() {
            if *selector as usize % InputFormat::ALL.len() == index {
                std::fs::write(dir.join(format!("found-{planted}.{ext}")), file).unwrap();
                planted += 1;
            }
        }
    }
    assert!(planted > 0, "no {ext} regression inputs");
    planted
}

/// Runs `cmd` with its address space limited to 1 GiB, as on a machine that
/// forbids overcommit: a reservation far beyond what is used then aborts.
fn with_address_space_limit(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    let limit = libc::rlimit {
        rlim_cur: 1 << 30,
        rlim_max: 1 << 30,
    };
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_AS, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    }
}

#[test]
fn hostile_avro_files_are_unreadable_files_not_an_abort() {
    // Found by feeding random bytes after the Avro magic: each declared a map
    // of ~500M entries in the header, which apache-avro reserved at once.
    // The fuzzer's (in fuzz/regressions) declare map blocks of millions of
    // entries, which apache-avro 0.21 reserved (GBs) before reading one.
    let crashers = [
        "4f626a01998cc2c202a013852528df10a77726b4d8aec0793a68c11e29d5110412a8f9e68b11681fe0dc9e",
        "4f626a018cbed0e60242f19d9678859ea45c99395944aed2be8a66943053f8e57b04a7b8f86ac5178d9fd5a\
         0876333615ff94697535f5f8187571695415d8f1fee12",
    ];
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    generated_dump(&dump, 12);
    let avro = dump.join("avro");
    for (n, hex) in crashers.iter().enumerate() {
        std::fs::write(
            avro.join(format!("crash-{n}.avro")),
            hex::decode(hex).unwrap(),
        )
        .unwrap();
    }
    let planted = plant_fuzz_regressions(&avro, InputFormat::Avro, "avro");
    let out = dir.path().join("out");
    run(with_address_space_limit(
        bin()
            .args(["stage", "--date", DATE, "--skip-unreadable", "--input"])
            .arg(&avro)
            .arg("--output")
            .arg(&out),
    ));
    let c = counters(&out);
    assert_eq!(c["files_unreadable"], 2 + planted, "{c:?}");
    assert!(c["pings_read"] > 0, "the good files are still read: {c:?}");
}

/// The Parquet files the fuzzers found panicking the parquet crate (its
/// regression inputs for `input_file` whose selector byte says Parquet) are
/// unreadable files to stage, skipped with `--skip-unreadable`.
#[test]
fn parquet_files_that_panic_the_decoder_are_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    generated_dump(&dump, 12);
    let parquet = dump.join("parquet");
    let planted = plant_fuzz_regressions(&parquet, InputFormat::Parquet, "parquet");
    let out = dir.path().join("out");
    stage(&parquet, &out, &["--skip-unreadable"]);
    let c = counters(&out);
    assert_eq!(c["files_unreadable"], planted, "{c:?}");
    assert!(c["pings_read"] > 0, "the good files are still read: {c:?}");
}

#[test]
fn an_endless_line_is_one_rejected_record_and_the_rest_of_the_file_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let ping = firefox_ping();
    let good = serde_json::to_vec(&SinkMessage::wrap(&ping, "x", "2019-06-26T01:00:00Z")).unwrap();
    // 40 MB of one line without an end, then a real ping: about 40 KB compressed.
    let mut text = vec![b'{'; 40 << 20];
    text.push(b'\n');
    text.extend_from_slice(&good);
    let file = write_sink_file(
        &dir.path().join("sink"),
        "part-0.ndjson.gz",
        &prio_processor::storage::dump::gzip(&text),
    );
    assert!(std::fs::metadata(&file).unwrap().len() < 1 << 20);
    // The same, uncompressed: the line limit holds for plain files too.
    std::fs::write(file.with_file_name("part-1.ndjson"), &text).unwrap();
    let out = dir.path().join("out");
    stage(&dir.path().join("sink"), &out, &[]);
    let c = counters(&out);
    assert_eq!(c["rejected/too_large"], 2, "{c:?}");
    assert_eq!(c["pings_read"], 2, "{c:?}");
}

#[test]
fn an_empty_date_fails_and_says_what_was_found_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    generated_dump(&dump, 12);
    let out = dir.path().join("out");
    // Another date: nothing to read, and the error says what is there.
    let err = run_fails(
        bin()
            .args(["stage", "--date", "2019-06-27", "--input"])
            .arg(dump.join("sink"))
            .arg("--output")
            .arg(&out),
    );
    assert!(
        err.contains("no input files for 2019-06-27")
            && err.contains("files of other dates (2019-06-26)"),
        "{err}"
    );
    // Every record rejected (no configured batch id): a failure without markers.
    let marker = out.join(format!("submission_date={DATE}/_SUCCESS"));
    let err = run_fails(
        stage_command(dump.join("sink"))
            .arg("--output")
            .arg(&out)
            .env("DATA_CONFIG", r#"{"other": 8}"#),
    );
    assert!(
        err.contains("no report was staged for 2019-06-26") && err.contains("unknown_batch_id="),
        "{err}"
    );
    assert!(!marker.exists());
    run(bin()
        .args(["stage", "--date", DATE, "--allow-empty", "--input"])
        .arg(dump.join("sink"))
        .arg("--output")
        .arg(&out)
        .env("DATA_CONFIG", r#"{"other": 8}"#));
    assert!(marker.exists(), "--allow-empty marks the date staged");
}

#[test]
fn a_single_file_is_an_input() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    generated_dump(&dump, 12);
    let file = common::files_below(&dump.join("sink"))
        .into_iter()
        .next()
        .unwrap();
    let out = dir.path().join("out");
    stage(&file, &out, &[]);
    let c = counters(&out);
    assert_eq!(c["files_read"], 1, "{c:?}");
    assert!(c["pings_read"] > 0, "{c:?}");
}

#[test]
fn input_files_with_any_characters_in_their_names_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    generated_dump(&dump, 24);
    let reference = dir.path().join("reference");
    stage(&dump.join("sink"), &reference, &[]);
    // The same files under names that object stores escape.
    for (n, file) in common::files_below(&dump.join("sink")).iter().enumerate() {
        let odd = file.with_file_name(format!("part %23 #{n} [é] ?&+=.ndjson"));
        std::fs::rename(file, odd).unwrap();
    }
    let out = dir.path().join("out");
    stage(&dump.join("sink"), &out, &["--skip-unreadable"]);
    let c = counters(&out);
    assert_eq!(c.get("files_unreadable"), None, "{c:?}");
    assert_eq!(c, counters(&reference));
    assert_eq!(parts(&out), parts(&reference));
}

#[test]
fn per_server_outputs_use_the_raw_layout() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    generated_dump(&dump, 24);
    let (a, b) = (dir.path().join("bucket-a"), dir.path().join("bucket-b"));
    run(stage_command(dump.join("sink"))
        .arg("--output-a")
        .arg(&a)
        .arg("--output-b")
        .arg(&b));
    for (bucket, server) in [(&a, "a"), (&b, "b")] {
        let raw = bucket.join(format!("{DATE}/raw"));
        assert!(raw.join("_SUCCESS").exists());
        let part = raw.join("batch_id=x/part-00000.parquet");
        let r = rows(&part);
        assert_eq!(r.len(), 48);
        assert!(r.iter().all(|x| x.1 == server));
    }
    assert!(!a.join(format!("{DATE}/raw/server_id=b")).exists());
}

/// A part that cannot be written (a directory is in its way) fails the run,
/// naming the part, and neither server's date is marked staged.
#[test]
fn a_part_that_cannot_be_written_fails_the_run_and_marks_nothing_staged() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    generated_dump(&dump, 24);
    for workers in ["1", "2"] {
        let a = dir.path().join(format!("bucket-a-{workers}"));
        let b = dir.path().join(format!("bucket-b-{workers}"));
        let in_the_way = a.join(format!("{DATE}/raw/batch_id=x/part-00000.parquet/dir"));
        std::fs::create_dir_all(&in_the_way).unwrap();
        std::fs::write(in_the_way.join("file"), b"").unwrap();
        let err = run_fails(
            stage_command(dump.join("sink"))
                .arg("--output-a")
                .arg(&a)
                .arg("--output-b")
                .arg(&b)
                .args(["--workers", workers]),
        );
        assert!(
            err.contains("batch_id=x/part-00000.parquet: writing failed"),
            "{err}"
        );
        for bucket in [&a, &b] {
            assert!(!bucket.join(format!("{DATE}/raw/_SUCCESS")).exists());
        }
    }
}

/// A killed run leaves staging files (`name#N`, which listings skip) in the
/// output and its spill directory; the next run removes both, but not the
/// spill directory of a run still alive.
#[test]
fn a_rerun_removes_what_killed_runs_left() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    generated_dump(&dump, 8);
    let (out, spills) = (dir.path().join("out"), dir.path().join("spill"));
    let half_written = [
        format!("submission_date={DATE}/server_id=a/batch_id=x/part-00000.parquet#1"),
        format!("submission_date={DATE}/server_id=b/batch_id=y/part-00003.parquet#12345"),
        format!("submission_date={DATE}/_SUMMARY.json#2"),
    ];
    for name in &half_written {
        let path = out.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }
    let dead = {
        let mut child = Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        child.id()
    };
    let dead_spill = spills.join(format!("prio-processor-stage-{dead}-0"));
    let live_spill = spills.join(format!("prio-processor-stage-{}-0", std::process::id()));
    for spill in [&dead_spill, &live_spill] {
        std::fs::create_dir_all(spill).unwrap();
        std::fs::write(spill.join("shares-0"), vec![0; 4096]).unwrap();
    }
    stage(
        &dump.join("sink"),
        &out,
        &["--spill-dir", spills.to_str().unwrap()],
    );
    for name in &half_written {
        assert!(!out.join(name).exists(), "{name} is still there");
    }
    assert!(
        !dead_spill.exists(),
        "the killed run's spill directory is still there"
    );
    assert!(
        live_spill.join("shares-0").exists(),
        "a live run's spill files were removed"
    );
}

/// Fault injection: staging runs killed with SIGKILL after a random delay,
/// each followed by a rerun, end with output byte-identical to an
/// uninterrupted run's, no half-written file and no spill directory left.
/// `FAULT_CYCLES` (default 6) and `FAULT_SEED` (printed) choose the cycles;
/// `scripts/fault-cycles` runs hundreds.
#[test]
fn staging_runs_killed_at_random_points_rerun_to_the_same_output() {
    use rand::{RngExt, SeedableRng};
    use std::os::unix::process::ExitStatusExt;
    let seed = common::fault_seed();
    let mut rng = rand::rngs::ChaCha20Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    generated_dump(&dump, 300);
    let spills = dir.path().join("spill");
    let args = |workers: &str| {
        let mut c = bin();
        c.args(["stage", "--date", DATE, "--partition-size", "20KB"])
            .args(["--workers", workers, "--input"])
            .arg(dump.join("sink"))
            .arg("--spill-dir")
            .arg(&spills);
        c
    };
    let reference = dir.path().join("reference");
    let started = std::time::Instant::now();
    run(args("2").arg("--output").arg(&reference));
    let span = started.elapsed();
    let want = tree(&reference);
    let out = dir.path().join("out");
    // Kills that found the run still going (not all do).
    let mut interrupted = 0;
    for cycle in 0..common::fault_cycles(6) {
        let workers = if rng.random() { "2" } else { "1" };
        let delay = span.mul_f64(rng.random_range(0.0..1.2));
        let mut killed = args(workers)
            .arg("--output")
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        killed.kill().unwrap();
        let status = killed.wait().unwrap();
        interrupted += usize::from(status.signal() == Some(libc::SIGKILL));
        run(args(workers).arg("--output").arg(&out));
        let what =
            format!("cycle {cycle}: {workers} workers killed after {delay:?} (FAULT_SEED={seed})");
        assert!(tree(&out) == want, "{what}: the rerun's output differs");
        let debris = common::half_written_files(&out);
        assert!(debris.is_empty(), "{what}: left {debris:?}");
        let spilled: Vec<_> = std::fs::read_dir(&spills)
            .map_or(Vec::new(), |d| d.map(|e| e.unwrap().path()).collect());
        assert!(spilled.is_empty(), "{what}: left {spilled:?}");
    }
    eprintln!("{interrupted} kills interrupted a running stage");
    assert!(
        interrupted > 0,
        "no kill found stage running (FAULT_SEED={seed})"
    );
}

#[test]
fn unreadable_files_fail_with_their_name_unless_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    let expected = generated_dump(&dump, 48);
    let bad = dump.join("sink/2019-06-26/03/telemetry/prio/4/broken.ndjson.gz");
    std::fs::write(&bad, [0x1f, 0x8b, 0x08, 0x00, 0x01, 0x02]).unwrap();
    let out = dir.path().join("out");
    let spill = dir.path().join("spill");
    let failed = stage_command(dump.join("sink"))
        .arg("--output")
        .arg(&out)
        .arg("--spill-dir")
        .arg(&spill)
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        common::files_below(&spill).is_empty(),
        "the failed run's spill files are deleted"
    );
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("broken.ndjson.gz") && stderr.contains("--skip-unreadable"),
        "{stderr}"
    );
    assert!(!out
        .join(format!("submission_date={DATE}/_SUCCESS"))
        .exists());

    stage(&dump.join("sink"), &out, &["--skip-unreadable"]);
    let c = counters(&out);
    assert_eq!(c["files_unreadable"], 1);
    assert_eq!(
        c["pings_read"] - c["duplicates_dropped"],
        expected["pings"].as_u64().unwrap(),
        "nothing valid is lost"
    );
}

/// A file the staging user may not read fails the run with its name, and
/// with `--skip-unreadable` is counted and skipped. (As root, which reads
/// every file, stage runs as `nobody` here.)
#[test]
fn a_file_the_run_may_not_read_is_skipped_when_asked() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    let expected = generated_dump(&dump, 24);
    let secret = write_sink_file(&dump.join("sink"), "secret.ndjson", b"{}\n");
    for path in common::files_below(dir.path()) {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut dirs = vec![dir.path().to_path_buf()];
    while let Some(d) = dirs.pop() {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        dirs.extend(
            std::fs::read_dir(&d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.is_dir()),
        );
    }
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    let stage_as_user = |out: &str, extra: &[&str]| {
        let mut cmd = stage_command(dump.join("sink"));
        cmd.arg("--output").arg(dir.path().join(out)).args(extra);
        // SAFETY: geteuid only reads the process's user id.
        if unsafe { libc::geteuid() } == 0 {
            cmd.uid(65534).gid(65534);
        }
        cmd.output().unwrap()
    };
    let failed = stage_as_user("failed", &[]);
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("secret.ndjson") && stderr.contains("denied"),
        "{stderr}"
    );

    let skipped = stage_as_user("out", &["--skip-unreadable"]);
    assert!(
        skipped.status.success(),
        "{}",
        String::from_utf8_lossy(&skipped.stderr)
    );
    let c = counters(&dir.path().join("out"));
    assert_eq!(c["files_unreadable"], 1);
    assert_eq!(
        c["pings_read"] - c["duplicates_dropped"],
        expected["pings"].as_u64().unwrap(),
        "nothing readable is lost"
    );
}

#[test]
fn a_missing_secret_or_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = stage_command(dir.path())
        .arg("--output")
        .arg(dir.path().join("out"))
        .env("STAGING_SECRET", "c2hvcnQ=")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("STAGING_SECRET") && !stderr.contains("c2hvcnQ="),
        "{stderr}"
    );
    let out = run_fails(
        stage_command(dir.path())
            .arg("--output")
            .arg(dir.path().join("o"))
            .args(["--workers", "2"]),
    );
    assert_eq!(out.matches("no input files").count(), 1, "said once: {out}");
}

fn run_fails(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn a_share_larger_than_its_vdaf_allows_is_a_counted_rejection_not_staged() {
    use prio_processor::wire::ping::{build_ping, PrioEntry};
    let dir = tempfile::tempdir().unwrap();
    // "y" is Prio2 over 16 bits: its shares are a few hundred bytes.
    let entry = |a: String| PrioEntry {
        batch_id: "y".into(),
        share_a: a,
        share_b: "AAAA".into(),
    };
    let huge = "QUFB".repeat(50_000);
    let ping = build_ping(
        "f0f0f0f0-0000-4000-8000-000000000001",
        "2019-06-26T12:00:00.000Z",
        &[entry(huge.clone()), entry("AAAA".into())],
    );
    let line = serde_json::to_vec(&SinkMessage::wrap(
        &serde_json::to_vec(&ping).unwrap(),
        "f0f0f0f0",
        "2019-06-26T12:00:02.000000Z",
    ))
    .unwrap();
    let input = dir.path().join("in");
    write_sink_file(&input, "part-0.ndjson", &[line.as_slice(), b"\n"].concat());
    let out = dir.path().join("out");
    stage(&input, &out, &[]);
    let c = counters(&out);
    assert_eq!(c["rejected/share_too_large"], 1, "{c:?}");
    assert_eq!(
        c["entries/y"], 1,
        "the other entry of the ping is staged: {c:?}"
    );
    let staged = rows(&out.join(format!(
        "submission_date={DATE}/server_id=a/batch_id=y/part-00000.parquet"
    )));
    assert!(
        staged.iter().all(|r| r.3.len() < 1000),
        "no huge share is staged"
    );
}
