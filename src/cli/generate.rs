//! `generate`: a client simulator that writes a realistic ingestion dump
//! (sink NDJSON, plus the same pings as Parquet and Avro decoded-table
//! exports) and, beside it, the plaintext expected totals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{NaiveDate, NaiveTime, TimeDelta};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::ChaCha20Rng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use super::keys::ClientKeyArgs;
use super::{exit, parse_date, ConfigArg};
use crate::storage::dump::{gzip, write_avro, write_ndjson, write_parquet, DecodedRow};
use crate::wire::client::{encode_entry, ServerPublicKeys};
use crate::wire::config::BatchConfig;
use crate::wire::ping::{build_ping, SinkMessage};
use crate::wire::vdaf::{Measurement, Vdaf, VdafSpec};

/// Write a simulated ingestion dump with a known answer.
#[derive(Args, Debug)]
#[command(
    after_help = "Example:\n  eval $(prio-processor keygen | jq -r '\"export PUBLIC_KEY_HEX_A=\" + .public_key')\n  \
    eval $(prio-processor keygen | jq -r '\"export PUBLIC_KEY_HEX_B=\" + .public_key')\n  \
    prio-processor generate --config data/content.json --output /tmp/dump --pings 1000 \\\n    \
    --duplicate-rate 0.05 --malformed-rate 0.02\n\n\
    Writes OUTPUT/sink/DATE/HH/telemetry/prio/4/part-00000.ndjson (the telemetry sink layout),\n\
    OUTPUT/parquet/submission_date=DATE/part-HH.parquet and OUTPUT/avro/... (the decoded table),\n\
    and OUTPUT/expected.json with the plaintext totals."
)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub keys: ClientKeyArgs,
    /// Directory to write the dump into.
    #[arg(long, short, value_name = "DIR")]
    pub output: PathBuf,
    #[command(flatten)]
    pub dump: DumpOptions,
}

/// What the simulated clients send.
#[derive(Args, Debug, Clone)]
pub struct DumpOptions {
    /// Number of distinct pings (clients).
    #[arg(long, default_value_t = 1000)]
    pub pings: usize,
    /// Submission date of the dump.
    #[arg(long, default_value = "2019-06-26", value_parser = parse_date)]
    pub date: NaiveDate,
    /// Fraction of pings delivered twice (same ping id).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub duplicate_rate: f64,
    /// Fraction of extra malformed records (bad JSON, bad base64, not prio, no prioData).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub malformed_rate: f64,
    /// prioData entries per batch id in each ping (Firefox 69 sent 3).
    #[arg(long, default_value_t = 1)]
    pub entries_per_batch: usize,
    /// Measurement pattern: `seed` is the seed's known answer (element i is 1
    /// when i % 3 == 0 or i % 5 == 0); `random` draws values from --seed.
    #[arg(long, value_enum, default_value_t = Pattern::Seed)]
    pub pattern: Pattern,
    /// Seed for every random choice except the cryptographic ones.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also send an entry per ping for this batch id, which is not in the config.
    #[arg(long, value_name = "BATCH_ID")]
    pub unknown_batch_id: Option<String>,
    /// Records per dump file: a new file starts after this many, as the
    /// sink rotates its files by size. Default: one file per hour.
    #[arg(long, value_name = "N")]
    pub records_per_file: Option<std::num::NonZeroUsize>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    Seed,
    Random,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("expected a fraction between 0 and 1, got {text:?}")),
    }
}

/// The plaintext answer written beside a dump, for tests and `integrate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Expected {
    pub date: String,
    /// Distinct valid pings.
    pub pings: u64,
    /// Extra copies of pings (same id) in the dump.
    pub duplicates: u64,
    /// Malformed records by reason, per input format (`ndjson` and `table`).
    pub malformed: BTreeMap<String, BTreeMap<String, u64>>,
    pub batches: BTreeMap<String, ExpectedBatch>,
    /// Entries per batch id that is not in the config.
    pub unknown_batches: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExpectedBatch {
    pub vdaf: String,
    pub reports: u64,
    pub aggregate: Vec<u128>,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<u8> {
    let config = args.config.load()?;
    let keys = args.keys.load()?;
    let expected = generate_dump(&config, &keys, &args.dump, &args.output)?;
    eprintln!(
        "wrote {} pings ({} duplicates) to {}",
        expected.pings,
        expected.duplicates,
        args.output.display()
    );
    for (batch_id, batch) in &expected.batches {
        eprintln!(
            "  {batch_id:<50} {:>8} reports  {}",
            batch.reports, batch.vdaf
        );
    }
    Ok(exit::OK)
}

/// Kinds of malformed record, each with the reason it is counted under per format.
const MALFORMED: [(&str, &str); 4] = [
    ("bad_json", "bad_json"),
    ("bad_base64", "bad_json"),
    ("not_prio", "not_prio"),
    ("missing_prio_data", "missing_prio_data"),
];

/// One record of the dump, in order.
enum Record {
    /// Index into the hour's pings; a duplicate repeats an earlier index.
    Ping(usize),
    Malformed(usize),
}

/// A ping planned before any cryptography, so that the structure of the dump
/// depends only on the seed.
struct PlannedPing {
    id: String,
    timestamp: chrono::NaiveDateTime,
    /// (batch id, measurement) per entry.
    entries: Vec<(String, Measurement)>,
}

/// Generates the dump under `output` and returns (and writes) the expected totals.
pub fn generate_dump(
    config: &BatchConfig,
    keys: &ServerPublicKeys,
    opts: &DumpOptions,
    output: &Path,
) -> anyhow::Result<Expected> {
    let mut rng = ChaCha20Rng::seed_from_u64(opts.seed);
    let date = opts.date.format("%Y-%m-%d").to_string();
    let mut expected = Expected {
        date: date.clone(),
        ..Default::default()
    };
    for (batch_id, spec) in config.iter() {
        expected.batches.insert(
            batch_id.to_string(),
            ExpectedBatch {
                vdaf: spec.spec().name().to_string(),
                reports: 0,
                aggregate: vec![0; spec.spec().output_len()],
            },
        );
    }
    let (first_batch, first_spec) = config.iter().next().context("config has no batches")?;
    let progress = ProgressBar::new(opts.pings as u64).with_style(
        ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} pings, {per_sec}, eta {eta}")
            .expect("template is valid"),
    );
    progress.set_message("encoding");

    for hour in 0..24usize {
        let range = opts.pings * hour / 24..opts.pings * (hour + 1) / 24;
        let mut planned = Vec::with_capacity(range.len());
        let mut records = Vec::new();
        let mut duplicates = Vec::new();
        for n in range {
            let mut entries = Vec::new();
            for (batch_id, spec) in config.iter() {
                for _ in 0..opts.entries_per_batch {
                    let batch = expected.batches.get_mut(batch_id).expect("inserted above");
                    let m = measurement(spec.spec(), opts.pattern, batch.reports, &mut rng);
                    batch.reports += 1;
                    add_plain(spec.spec(), &m, &mut batch.aggregate);
                    entries.push((batch_id.to_string(), m));
                }
            }
            if let Some(unknown) = &opts.unknown_batch_id {
                let sent = expected.unknown_batches.entry(unknown.clone()).or_default();
                let m = measurement(first_spec.spec(), opts.pattern, *sent, &mut rng);
                entries.push((unknown.clone(), m));
                *sent += 1;
            }
            let second = (n * 3600 / opts.pings.max(1) * 24) % 3600;
            planned.push(PlannedPing {
                id: uuid::Builder::from_random_bytes(rng.random())
                    .into_uuid()
                    .to_string(),
                timestamp: opts.date.and_time(NaiveTime::MIN)
                    + TimeDelta::hours(hour as i64)
                    + TimeDelta::seconds(second as i64),
                entries,
            });
            let index = planned.len() - 1;
            records.push(Record::Ping(index));
            if rng.random_bool(opts.duplicate_rate) {
                duplicates.push(Record::Ping(index));
                expected.duplicates += 1;
            }
            if rng.random_bool(opts.malformed_rate) {
                let kind = rng.random_range(0..MALFORMED.len());
                records.push(Record::Malformed(kind));
                let (ndjson, table) = MALFORMED[kind];
                for (format, reason) in [("ndjson", ndjson), ("table", table)] {
                    *expected
                        .malformed
                        .entry(format.into())
                        .or_default()
                        .entry(reason.into())
                        .or_default() += 1;
                }
            }
        }
        expected.pings += planned.len() as u64;
        // Redelivered copies arrive later in the same hour, as at-least-once delivery does.
        records.extend(duplicates);
        let pings = encode_pings(config, first_batch, keys, &planned, &progress)?;
        let per_file = opts
            .records_per_file
            .map_or(records.len(), std::num::NonZeroUsize::get);
        for (file, chunk) in records.chunks(per_file.max(1)).enumerate() {
            let files = DumpFiles::new(&date, hour, file);
            write_records(output, &files, &date, &planned, &pings, chunk)?;
        }
    }
    progress.finish_and_clear();
    let path = output.join("expected.json");
    crate::storage::write_atomic(&path, |f| {
        serde_json::to_writer_pretty(std::io::BufWriter::new(f), &expected)
            .map_err(std::io::Error::other)
    })
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(expected)
}

/// Encodes the planned pings' entries on all cores; returns each ping's JSON.
fn encode_pings(
    config: &BatchConfig,
    fallback_batch: &str,
    keys: &ServerPublicKeys,
    planned: &[PlannedPing],
    progress: &ProgressBar,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = planned.len().div_ceil(threads).max(1);
    let encode_one = |p: &PlannedPing| -> anyhow::Result<Vec<u8>> {
        let mut entries = Vec::with_capacity(p.entries.len());
        for (batch_id, m) in &p.entries {
            // An unknown batch id is sealed with the first configured batch's VDAF.
            let vdaf: &Vdaf = &config
                .get(batch_id)
                .or_else(|| config.get(fallback_batch))
                .expect("fallback batch exists")
                .vdaf;
            entries.push(
                encode_entry(vdaf, batch_id, m, keys)
                    .with_context(|| format!("encoding a measurement for {batch_id}"))?,
            );
        }
        progress.inc(1);
        let created = p.timestamp.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        Ok(serde_json::to_vec(&build_ping(&p.id, &created, &entries))?)
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = planned
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(encode_one)
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(planned.len());
        for h in handles {
            out.extend(h.join().expect("encoder thread panicked")?);
        }
        Ok(out)
    })
}

fn micros(t: chrono::NaiveDateTime) -> i64 {
    t.and_utc().timestamp_micros()
}

/// Where one dump file of an hour goes, in each format; names sort in record order.
struct DumpFiles {
    sink: String,
    parquet: String,
    avro: String,
    hour: usize,
    /// Prefix of malformed records' ids, unique per file.
    id_prefix: String,
}

impl DumpFiles {
    fn new(date: &str, hour: usize, file: usize) -> Self {
        DumpFiles {
            sink: format!("sink/{date}/{hour:02}/telemetry/prio/4/part-{file:05}.ndjson"),
            parquet: format!("parquet/submission_date={date}/part-{hour:02}-{file:05}.parquet"),
            avro: format!("avro/submission_date={date}/part-{hour:02}-{file:05}.avro"),
            hour,
            id_prefix: format!("malformed-{hour:02}-{file:05}"),
        }
    }
}

fn write_records(
    output: &Path,
    files: &DumpFiles,
    date: &str,
    planned: &[PlannedPing],
    pings: &[Vec<u8>],
    records: &[Record],
) -> anyhow::Result<()> {
    let mut lines = Vec::with_capacity(records.len());
    let mut rows = Vec::with_capacity(records.len());
    for (n, record) in records.iter().enumerate() {
        match record {
            Record::Ping(i) => {
                let p = &planned[*i];
                // The sink receives the ping a few seconds after it was created.
                let received = p.timestamp + TimeDelta::seconds(2);
                let ts = received.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
                lines.push(serde_json::to_vec(&SinkMessage::wrap(
                    &pings[*i], &p.id, &ts,
                ))?);
                rows.push(DecodedRow {
                    document_id: p.id.clone(),
                    submission_timestamp: micros(received),
                    payload: gzip(&pings[*i]),
                });
            }
            Record::Malformed(kind) => {
                let id = format!("{}-{n:06}", files.id_prefix);
                let at = NaiveDate::parse_from_str(date, "%Y-%m-%d")?.and_time(NaiveTime::MIN)
                    + TimeDelta::hours(files.hour as i64);
                let (line, payload) = malformed_record(*kind, &id, at);
                lines.push(line);
                rows.push(DecodedRow {
                    document_id: id,
                    submission_timestamp: micros(at),
                    payload,
                });
            }
        }
    }
    write_ndjson(&output.join(&files.sink), &lines)?;
    write_parquet(&output.join(&files.parquet), &rows)?;
    write_avro(&output.join(&files.avro), &rows)?;
    Ok(())
}

/// The NDJSON line and the decoded-table payload of one malformed record.
fn malformed_record(kind: usize, id: &str, at: chrono::NaiveDateTime) -> (Vec<u8>, Vec<u8>) {
    let ts = at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let wrap =
        |ping: &[u8]| serde_json::to_vec(&SinkMessage::wrap(ping, id, &ts)).expect("serializable");
    match MALFORMED[kind].0 {
        "bad_json" => (
            format!("{{\"attributeMap\": {{\"document_id\": \"{id}\"").into_bytes(),
            gzip(b"{\"type\": \"prio\", \"payload\": "),
        ),
        "bad_base64" => {
            let line = serde_json::json!({"attributeMap": {"document_id": id}, "payload": "%%not base64%%"});
            (
                serde_json::to_vec(&line).expect("serializable"),
                b"\x00not gzip, not json".to_vec(),
            )
        }
        "not_prio" => {
            let ping = serde_json::to_vec(&serde_json::json!({"type": "main", "id": id}))
                .expect("serializable");
            (wrap(&ping), gzip(&ping))
        }
        _ => {
            let ping =
                serde_json::to_vec(&serde_json::json!({"type": "prio", "id": id, "payload": {}}))
                    .expect("serializable");
            (wrap(&ping), gzip(&ping))
        }
    }
}

/// The seed's known-answer bit: element i is set when i % 3 == 0 or i % 5 == 0.
fn seed_bit(i: u64) -> u64 {
    u64::from(i.is_multiple_of(3) || i.is_multiple_of(5))
}

/// The measurement of a batch's report number `k` under `pattern`.
fn measurement(spec: &VdafSpec, pattern: Pattern, k: u64, rng: &mut ChaCha20Rng) -> Measurement {
    let len = spec.output_len();
    match (spec, pattern) {
        (VdafSpec::Prio2 { .. } | VdafSpec::SumVec { .. }, Pattern::Seed) => {
            Measurement::Vector((0..len as u64).map(seed_bit).collect())
        }
        (VdafSpec::MultihotCountVec { max_weight, .. }, Pattern::Seed) => {
            let mut left = *max_weight;
            Measurement::Vector(
                (0..len as u64)
                    .map(|i| {
                        let bit = seed_bit(i) * u64::from(left > 0);
                        left -= bit as usize;
                        bit
                    })
                    .collect(),
            )
        }
        (VdafSpec::Count, Pattern::Seed) => Measurement::Scalar(seed_bit(k)),
        (VdafSpec::Sum { max_measurement }, Pattern::Seed) => {
            Measurement::Scalar(k % (max_measurement.saturating_add(1)))
        }
        (VdafSpec::Histogram { .. }, Pattern::Seed) => Measurement::Scalar(k % len as u64),
        (VdafSpec::Prio2 { .. }, Pattern::Random) => {
            Measurement::Vector((0..len).map(|_| rng.random_range(0..=1)).collect())
        }
        (
            VdafSpec::SumVec {
                max_measurement, ..
            },
            Pattern::Random,
        ) => {
            let max = u64::try_from(*max_measurement).unwrap_or(u64::MAX);
            Measurement::Vector((0..len).map(|_| rng.random_range(0..=max)).collect())
        }
        (VdafSpec::MultihotCountVec { max_weight, .. }, Pattern::Random) => {
            let weight = rng.random_range(0..=*max_weight);
            let mut bits = vec![0u64; len];
            for i in rand::seq::index::sample(rng, len, weight) {
                bits[i] = 1;
            }
            Measurement::Vector(bits)
        }
        (VdafSpec::Count, Pattern::Random) => Measurement::Scalar(rng.random_range(0..=1)),
        (VdafSpec::Sum { max_measurement }, Pattern::Random) => {
            Measurement::Scalar(rng.random_range(0..=*max_measurement))
        }
        (VdafSpec::Histogram { .. }, Pattern::Random) => {
            Measurement::Scalar(rng.random_range(0..len as u64))
        }
    }
}

/// Adds a measurement to a plaintext total, independently of any VDAF code.
fn add_plain(spec: &VdafSpec, m: &Measurement, total: &mut [u128]) {
    match (spec, m) {
        (VdafSpec::Histogram { .. }, Measurement::Scalar(bucket)) => total[*bucket as usize] += 1,
        (_, Measurement::Scalar(x)) => total[0] += u128::from(*x),
        (_, Measurement::Vector(v)) => {
            for (t, x) in total.iter_mut().zip(v) {
                *t += u128::from(*x);
            }
        }
    }
}
