//! `integrate`: the main job on the embedded default (local files).
//!
//! Today it makes keys, generates a dump with a known answer, and checks the
//! dump by opening, verifying and aggregating every report in-process with
//! both servers' keys. Staging and the two-server timely pipeline join it as
//! `stage` and `process` land.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use super::generate::{generate_dump, DumpOptions, Expected, Pattern};
use super::keys::parse_shared_secret;
use super::{exit, parse_date, ConfigArg};
use crate::wire::client::ServerPublicKeys;
use crate::wire::config::BatchConfig;
use crate::wire::envelope::generate_keypair;
use crate::wire::ping::{decode_base64, parse_ping, parse_sink_line};
use crate::wire::server::{verify_locally, ServerSecrets};
use crate::wire::{Rejection, Role};

/// Run the whole system locally and check the result against the known answer.
#[derive(Args, Debug)]
#[command(after_help = "Example:\n  prio-processor integrate\n  \
    prio-processor integrate --pings 2000 --config '{\"clicks\": {\"vdaf\": \"sumvec\", \"length\": 64, \"bits\": 4}}'\n\n\
    Exit code 0 when every batch's aggregate matches the expected totals, 3 when one does not.")]
pub struct IntegrateArgs {
    /// Batch config (default: the seed's four batch ids in data/content.json).
    #[arg(
        long = "config",
        env = "DATA_CONFIG",
        default_value = "data/content.json"
    )]
    pub config: String,
    /// Work directory for the dump and results.
    #[arg(long, default_value = "data/work")]
    pub work_dir: PathBuf,
    /// Number of simulated clients.
    #[arg(long, default_value_t = 200)]
    pub pings: usize,
    /// VDAF verify key shared by the servers (base64); a fresh one when unset.
    #[arg(long, env = "SHARED_SECRET", hide_env_values = true)]
    pub shared_secret: Option<String>,
    /// Submission date.
    #[arg(long, default_value = "2019-06-26", value_parser = parse_date)]
    pub date: chrono::NaiveDate,
}

/// What happened to one batch in the local check.
#[derive(Debug, Default)]
struct BatchOutcome {
    reports: u64,
    aggregated: u64,
    rejected: BTreeMap<&'static str, u64>,
    aggregate: Option<Vec<u128>>,
}

pub fn run(args: IntegrateArgs) -> anyhow::Result<u8> {
    let config = ConfigArg {
        config: args.config.clone(),
    }
    .load()?;
    let dump_dir = args.work_dir.join("dump");
    if dump_dir.exists() {
        std::fs::remove_dir_all(&dump_dir)
            .with_context(|| format!("clearing {}", dump_dir.display()))?;
    }
    let (key_a, key_b) = (generate_keypair(), generate_keypair());
    let verify_key = match &args.shared_secret {
        Some(text) => parse_shared_secret(text)?,
        None => rand::random(),
    };
    let secrets = [
        ServerSecrets {
            role: Role::A,
            private_key: key_a.clone(),
            verify_key,
        },
        ServerSecrets {
            role: Role::B,
            private_key: key_b.clone(),
            verify_key,
        },
    ];
    let public = ServerPublicKeys {
        a: key_a.public_key(),
        b: key_b.public_key(),
    };
    let options = DumpOptions {
        pings: args.pings,
        date: args.date,
        duplicate_rate: 0.05,
        malformed_rate: 0.05,
        entries_per_batch: 1,
        pattern: Pattern::Seed,
        seed: 0,
        unknown_batch_id: Some("bad-id".into()),
    };
    eprintln!(
        "[1/3] generating {} pings into {}",
        args.pings,
        dump_dir.display()
    );
    let expected = generate_dump(&config, &public, &options, &dump_dir)?;
    eprintln!("[2/3] stage and process on timely: not yet available in this build (issues #4, #5)");
    eprintln!("[3/3] checking the dump in-process with both servers' keys");
    let outcomes = check_dump(&config, &secrets, &dump_dir.join("sink"))?;
    Ok(print_summary(&expected, &outcomes))
}

/// Opens, verifies and aggregates every report of a sink dump in-process.
fn check_dump(
    config: &BatchConfig,
    secrets: &[ServerSecrets; 2],
    sink_dir: &Path,
) -> anyhow::Result<BTreeMap<String, BatchOutcome>> {
    let mut files = Vec::new();
    collect_files(sink_dir, &mut files)?;
    files.sort();
    let mut seen = HashSet::new();
    let mut outcomes: BTreeMap<String, BatchOutcome> = BTreeMap::new();
    let mut aggregates: BTreeMap<&str, [_; 2]> = config
        .iter()
        .map(|(id, spec)| (id, [spec.vdaf.aggregate_init(), spec.vdaf.aggregate_init()]))
        .collect();
    for file in files {
        let text = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(ping) = parse_sink_line(line).and_then(|(_, body)| parse_ping(&body)) else {
                continue;
            };
            if !seen.insert(ping.id.clone()) {
                continue;
            }
            for entry in ping.entries {
                let Some(spec) = config.get(&entry.batch_id) else {
                    continue;
                };
                let outcome = outcomes.entry(entry.batch_id.clone()).or_default();
                outcome.reports += 1;
                let result = match [&entry.share_a, &entry.share_b].map(|s| decode_base64(s)) {
                    [Some(a), Some(b)] => {
                        verify_locally(&spec.vdaf, secrets, &entry.batch_id, [&a, &b])
                    }
                    _ => Err(Rejection::BadBase64),
                };
                match result {
                    Ok(outs) => {
                        let aggs = aggregates
                            .get_mut(entry.batch_id.as_str())
                            .expect("config batch");
                        for (agg, out) in aggs.iter_mut().zip(&outs) {
                            spec.vdaf.accumulate(agg, out);
                        }
                        outcome.aggregated += 1;
                    }
                    Err(r) => *outcome.rejected.entry(r.reason()).or_default() += 1,
                }
            }
        }
    }
    for (batch_id, [a, b]) in &aggregates {
        let outcome = outcomes.entry(batch_id.to_string()).or_default();
        let vdaf = &config.get(batch_id).expect("config batch").vdaf;
        outcome.aggregate = Some(vdaf.unshard(a, b, outcome.aggregated as usize)?);
    }
    Ok(outcomes)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "ndjson") {
            out.push(path);
        }
    }
    Ok(())
}

fn print_summary(expected: &Expected, outcomes: &BTreeMap<String, BatchOutcome>) -> u8 {
    let mut all_match = true;
    println!(
        "{:<54} {:>8} {:>10} {:>8}  match",
        "batch id", "reports", "aggregated", "rejected"
    );
    for (batch_id, want) in &expected.batches {
        let got = outcomes.get(batch_id);
        let matches = got.is_some_and(|g| {
            g.aggregated == want.reports && g.aggregate.as_ref() == Some(&want.aggregate)
        });
        all_match &= matches;
        let (reports, aggregated, rejected) = got.map_or((0, 0, 0), |g| {
            (g.reports, g.aggregated, g.rejected.values().sum::<u64>())
        });
        println!(
            "{batch_id:<54} {reports:>8} {aggregated:>10} {rejected:>8}  {}",
            if matches { "yes" } else { "NO" }
        );
    }
    for (batch_id, count) in &expected.unknown_batches {
        println!(
            "{batch_id:<54} {count:>8} {:>10} {:>8}  skipped: not in config",
            0, 0
        );
    }
    println!(
        "pings: {} distinct, {} duplicates dropped, malformed records: {}",
        expected.pings,
        expected.duplicates,
        expected
            .malformed
            .get("ndjson")
            .map_or(0, |m| m.values().sum::<u64>())
    );
    if all_match {
        println!("result: every aggregate matches the expected totals");
        exit::OK
    } else {
        println!("result: MISMATCH against the expected totals");
        exit::MISMATCH
    }
}
