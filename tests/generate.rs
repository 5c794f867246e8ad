//! `generate` writes the dump it promises: the same pings in the sink NDJSON,
//! Parquet and Avro, with the duplicates and malformed records it reports,
//! and shares that open to the seed's known answer.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::process::Command;

mod common;

use prio_processor::wire::config::BatchConfig;
use prio_processor::wire::envelope::generate_keypair;
use prio_processor::wire::ping::{decode_base64, parse_ping, parse_sink_line, Ping};
use prio_processor::wire::server::{verify_locally, ServerSecrets};
use prio_processor::wire::Role;

const CONFIG: &str = r#"{"bits-64": 64, "flag": {"vdaf": "count"}}"#;

fn files(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    common::files_below(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Tallies pings by id and malformed records by reason.
#[derive(Default, Debug, PartialEq)]
struct Tally {
    pings: BTreeMap<String, usize>,
    malformed: BTreeMap<String, u64>,
}

impl Tally {
    fn ping_body(&mut self, body: &[u8]) -> Option<Ping> {
        match parse_ping(body) {
            Ok(p) => {
                *self.pings.entry(p.id.clone()).or_default() += 1;
                Some(p)
            }
            Err(r) => {
                *self.malformed.entry(r.reason().into()).or_default() += 1;
                None
            }
        }
    }
}

#[test]
fn generate_writes_three_consistent_formats_with_the_known_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (key_a, key_b) = (generate_keypair(), generate_keypair());
    let status = Command::new(env!("CARGO_BIN_EXE_prio-processor"))
        .args([
            "generate",
            "--config",
            CONFIG,
            "--pings",
            "1000",
            "--duplicate-rate",
            "0.1",
        ])
        .args([
            "--malformed-rate",
            "0.1",
            "--entries-per-batch",
            "2",
            "--unknown-batch-id",
            "bad-id",
            "--records-per-file",
            "30",
        ])
        .arg("--output")
        .arg(dir.path())
        .env("PUBLIC_KEY_HEX_A", key_a.public_key().to_hex())
        .env("PUBLIC_KEY_HEX_B", key_b.public_key().to_hex())
        .status()
        .unwrap();
    assert!(status.success());
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("expected.json")).unwrap()).unwrap();

    // NDJSON: the sink layout, one PubSub message per line.
    let sink = files(&dir.path().join("sink"), "ndjson");
    // About 50 records an hour, at most 30 per file: the sink rotates its files.
    assert!(
        sink.len() >= 48,
        "two or more files per hour: {}",
        sink.len()
    );
    assert!(sink[0].ends_with("sink/2019-06-26/00/telemetry/prio/4/part-00000.ndjson"));
    assert!(sink[1].ends_with("sink/2019-06-26/00/telemetry/prio/4/part-00001.ndjson"));
    for (format, ext) in [("parquet", "parquet"), ("avro", "avro")] {
        assert_eq!(files(&dir.path().join(format), ext).len(), sink.len());
    }
    let mut ndjson = Tally::default();
    let mut unique = Vec::new();
    let mut seen = HashSet::new();
    for file in &sink {
        let text = std::fs::read(file).unwrap();
        let lines: Vec<&[u8]> = text
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert!(
            lines.len() <= 30,
            "{}: {} records",
            file.display(),
            lines.len()
        );
        for line in lines {
            match parse_sink_line(line) {
                Ok((message, body)) => {
                    assert!(message
                        .submission_timestamp()
                        .unwrap()
                        .starts_with("2019-06-26T"));
                    if let Some(p) = ndjson.ping_body(&body) {
                        if seen.insert(p.id.clone()) {
                            unique.push(p);
                        }
                    }
                }
                Err(r) => *ndjson.malformed.entry(r.reason().into()).or_default() += 1,
            }
        }
    }

    // Parquet and Avro: the decoded-payload table, gzip-compressed ping JSON.
    let mut parquet = Tally::default();
    for file in files(&dir.path().join("parquet"), "parquet") {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(file).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            assert_eq!(
                batch
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>(),
                ["document_id", "submission_timestamp", "payload"]
            );
            let payload = batch
                .column(2)
                .as_any()
                .downcast_ref::<arrow::array::BinaryArray>()
                .unwrap();
            for bytes in payload.iter().flatten() {
                let body = if bytes.starts_with(&[0x1f, 0x8b]) {
                    gunzip(bytes)
                } else {
                    bytes.to_vec()
                };
                parquet.ping_body(&body);
            }
        }
    }
    let mut avro = Tally::default();
    for file in files(&dir.path().join("avro"), "avro") {
        for value in apache_avro::Reader::new(std::fs::File::open(file).unwrap()).unwrap() {
            let apache_avro::types::Value::Record(fields) = value.unwrap() else {
                panic!("record expected")
            };
            let Some((_, apache_avro::types::Value::Bytes(bytes))) =
                fields.iter().find(|(k, _)| k == "payload")
            else {
                panic!("payload bytes expected")
            };
            let body = if bytes.starts_with(&[0x1f, 0x8b]) {
                gunzip(bytes)
            } else {
                bytes.clone()
            };
            avro.ping_body(&body);
        }
    }

    // Same pings everywhere; counts as expected.json says.
    assert_eq!(parquet, avro);
    assert_eq!(ndjson.pings, parquet.pings);
    assert_eq!(unique.len() as u64, expected["pings"].as_u64().unwrap());
    assert_eq!(unique.len(), 1000);
    let copies: usize = ndjson.pings.values().map(|n| n - 1).sum();
    assert_eq!(copies as u64, expected["duplicates"].as_u64().unwrap());
    assert!(
        copies > 50 && copies < 150,
        "about 10% duplicates, got {copies}"
    );
    let as_map = |v: &serde_json::Value| -> BTreeMap<String, u64> {
        serde_json::from_value(v.clone()).unwrap()
    };
    assert_eq!(ndjson.malformed, as_map(&expected["malformed"]["ndjson"]));
    assert_eq!(parquet.malformed, as_map(&expected["malformed"]["table"]));

    // Every share opens; the totals are the seed's answer, computed here.
    let config = BatchConfig::from_json(CONFIG).unwrap();
    let verify_key = rand::random();
    let secrets = [(Role::A, key_a), (Role::B, key_b)].map(|(role, key)| ServerSecrets {
        role,
        private_keys: key.into(),
        verify_key,
    });
    let mut totals: BTreeMap<String, (u64, Vec<u128>)> = BTreeMap::new();
    let mut aggregates: BTreeMap<&str, _> = config
        .iter()
        .map(|(id, s)| (id, [s.vdaf.aggregate_init(), s.vdaf.aggregate_init()]))
        .collect();
    for ping in &unique {
        assert_eq!(
            ping.entries.len(),
            5,
            "2 entries per batch id plus the unknown one"
        );
        for entry in &ping.entries {
            let Some(spec) = config.get(&entry.batch_id) else {
                assert_eq!(entry.batch_id, "bad-id");
                continue;
            };
            let env = [&entry.share_a, &entry.share_b].map(|s| decode_base64(s).unwrap());
            let outs =
                verify_locally(&spec.vdaf, &secrets, &entry.batch_id, [&env[0], &env[1]]).unwrap();
            let aggs = aggregates.get_mut(entry.batch_id.as_str()).unwrap();
            for (agg, out) in aggs.iter_mut().zip(&outs) {
                spec.vdaf.accumulate(agg, out).unwrap();
            }
            totals.entry(entry.batch_id.clone()).or_default().0 += 1;
        }
    }
    for (batch_id, [a, b]) in &aggregates {
        let n = totals[*batch_id].0;
        let got = config
            .get(batch_id)
            .unwrap()
            .vdaf
            .unshard(a, b, n as usize)
            .unwrap();
        let want: Vec<u128> = match *batch_id {
            // Every client sends the seed pattern: bit i set when i % 3 == 0 or i % 5 == 0.
            "bits-64" => (0..64u64)
                .map(|i| if i % 3 == 0 || i % 5 == 0 { 2000 } else { 0 })
                .collect(),
            // Report k counts 1 when k % 3 == 0 or k % 5 == 0, k = 0..2000.
            "flag" => vec![(0..2000u64).filter(|k| k % 3 == 0 || k % 5 == 0).count() as u128],
            other => panic!("unexpected batch {other}"),
        };
        assert_eq!(n, 2000);
        assert_eq!(got, want, "{batch_id}");
        assert_eq!(
            expected["batches"][batch_id]["aggregate"],
            serde_json::json!(want)
        );
    }
    assert_eq!(expected["unknown_batches"]["bad-id"], 1000);
}

#[test]
fn generate_refuses_to_mix_dumps_and_replaces_only_an_earlier_dump() {
    let dir = tempfile::tempdir().unwrap();
    let keys = [generate_keypair(), generate_keypair()];
    let generate = |output: &Path, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_prio-processor"))
            .args(["generate", "--config", CONFIG, "--pings", "24"])
            .args(extra)
            .arg("--output")
            .arg(output)
            .env("PUBLIC_KEY_HEX_A", keys[0].public_key().to_hex())
            .env("PUBLIC_KEY_HEX_B", keys[1].public_key().to_hex())
            .output()
            .unwrap()
    };
    let dump = dir.path().join("dump");
    assert!(generate(&dump, &[]).status.success());
    let stray = dump.join("sink/2019-06-26/00/telemetry/prio/4/part-00099.ndjson");
    std::fs::write(&stray, b"from an earlier, larger dump\n").unwrap();

    let out = generate(&dump, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--replace"));
    assert!(stray.exists(), "a refused run leaves the directory alone");

    assert!(generate(&dump, &["--replace"]).status.success());
    assert!(!stray.exists(), "nothing of the earlier dump is left");
    assert!(dump.join("expected.json").exists());

    // A directory that is not a dump is never removed.
    let other = dir.path().join("notes");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("keep.txt"), b"mine").unwrap();
    let out = generate(&other, &["--replace"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no expected.json"));
    assert!(other.join("keep.txt").exists());
}
