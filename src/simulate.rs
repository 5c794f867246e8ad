//! The client simulator: many Firefox-like clients encode measurements for
//! every configured batch id and a sink delivers their pings, with
//! redelivered duplicates and malformed records, as a dump in three formats
//! (sink NDJSON, and the same pings as Parquet and Avro decoded-table
//! exports); beside it, the plaintext answer computed without any VDAF code.
//! Below the cli: it uses `wire` (the client side) and `storage` (dump writers).

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{NaiveDate, NaiveTime, TimeDelta};
use rand::rngs::ChaCha20Rng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::storage::dump::{gzip, write_avro, write_ndjson, write_parquet, DecodedRow, DumpError};
use crate::wire::client::{encode_entry, ClientError, ServerPublicKeys};
use crate::wire::config::BatchConfig;
use crate::wire::ping::{build_ping, SinkMessage};
use crate::wire::vdaf::{Measurement, Vdaf, VdafSpec};

/// What the simulated clients send.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Number of distinct pings (clients).
    pub pings: usize,
    /// Submission date of the dump.
    pub date: NaiveDate,
    /// Fraction of pings delivered twice (same ping id).
    pub duplicate_rate: f64,
    /// Fraction of extra malformed records (bad JSON, bad base64, not prio, no prioData).
    pub malformed_rate: f64,
    /// prioData entries per batch id in each ping (Firefox 69 sent 3).
    pub entries_per_batch: usize,
    pub pattern: Pattern,
    /// Seed for every random choice except the cryptographic ones.
    pub seed: u64,
    /// Also send an entry per ping for this batch id, which is not in the config.
    pub unknown_batch_id: Option<String>,
    /// Records per dump file, as the sink rotates its files by size; `None`: one file per hour.
    pub records_per_file: Option<std::num::NonZeroUsize>,
}

/// How measurements are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// The seed's known answer: element i is 1 when i % 3 == 0 or i % 5 == 0.
    Seed,
    /// Values drawn from the options' seed.
    Random,
}

/// Why a dump could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("encoding a measurement for {batch_id}: {source}")]
    Encode {
        batch_id: String,
        source: ClientError,
    },
    #[error(transparent)]
    Dump(#[from] DumpError),
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

/// Generates the dump under `output` and returns (and writes) the expected
/// totals; `progress` is told of every ping encoded.
pub fn generate_dump(
    config: &BatchConfig,
    keys: &ServerPublicKeys,
    opts: &DumpOptions,
    output: &Path,
    progress: &(dyn Fn() + Sync),
) -> Result<Expected, SimulateError> {
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
    let (first_batch, first_spec) = config.iter().next().expect("a batch config has batch ids");

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
        let pings = encode_pings(config, first_batch, keys, &planned, progress)?;
        let per_file = opts
            .records_per_file
            .map_or(records.len(), std::num::NonZeroUsize::get);
        for (file, chunk) in records.chunks(per_file.max(1)).enumerate() {
            let files = DumpFiles::new(&date, hour, file);
            write_records(output, &files, opts.date, &planned, &pings, chunk)?;
        }
    }
    let path = output.join("expected.json");
    crate::storage::write_atomic(&path, |f| {
        serde_json::to_writer_pretty(std::io::BufWriter::new(f), &expected)
            .map_err(std::io::Error::other)
    })
    .map_err(|source| DumpError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(expected)
}

/// Encodes the planned pings' entries on all cores; returns each ping's JSON.
fn encode_pings(
    config: &BatchConfig,
    fallback_batch: &str,
    keys: &ServerPublicKeys,
    planned: &[PlannedPing],
    progress: &(dyn Fn() + Sync),
) -> Result<Vec<Vec<u8>>, SimulateError> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = planned.len().div_ceil(threads).max(1);
    let encode_one = |p: &PlannedPing| -> Result<Vec<u8>, SimulateError> {
        let mut entries = Vec::with_capacity(p.entries.len());
        for (batch_id, m) in &p.entries {
            // An unknown batch id is sealed with the first configured batch's VDAF.
            let vdaf: &Vdaf = &config
                .get(batch_id)
                .or_else(|| config.get(fallback_batch))
                .expect("fallback batch exists")
                .vdaf;
            entries.push(encode_entry(vdaf, batch_id, m, keys).map_err(|source| {
                SimulateError::Encode {
                    batch_id: batch_id.clone(),
                    source,
                }
            })?);
        }
        progress();
        let created = p.timestamp.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        Ok(serde_json::to_vec(&build_ping(&p.id, &created, &entries))
            .expect("JSON values serialize"))
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = planned
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || part.iter().map(encode_one).collect::<Result<Vec<_>, _>>())
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
    date: NaiveDate,
    planned: &[PlannedPing],
    pings: &[Vec<u8>],
    records: &[Record],
) -> Result<(), DumpError> {
    let mut lines = Vec::with_capacity(records.len());
    let mut rows = Vec::with_capacity(records.len());
    for (n, record) in records.iter().enumerate() {
        match record {
            Record::Ping(i) => {
                let p = &planned[*i];
                // The sink receives the ping a few seconds after it was created.
                let received = p.timestamp + TimeDelta::seconds(2);
                let ts = received.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
                lines.push(
                    serde_json::to_vec(&SinkMessage::wrap(&pings[*i], &p.id, &ts))
                        .expect("sink messages serialize"),
                );
                rows.push(DecodedRow {
                    document_id: p.id.clone(),
                    submission_timestamp: micros(received),
                    payload: gzip(&pings[*i]),
                });
            }
            Record::Malformed(kind) => {
                let id = format!("{}-{n:06}", files.id_prefix);
                let at = date.and_time(NaiveTime::MIN) + TimeDelta::hours(files.hour as i64);
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
        (
            VdafSpec::Prio2 { .. } | VdafSpec::Prio1 { .. } | VdafSpec::SumVec { .. },
            Pattern::Seed,
        ) => Measurement::Vector((0..len as u64).map(seed_bit).collect()),
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
        (VdafSpec::Prio2 { .. } | VdafSpec::Prio1 { .. }, Pattern::Random) => {
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
