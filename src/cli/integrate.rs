//! `integrate`: the whole system on the local filesystem, as the README's
//! first command. Keys, a simulated dump with a known answer, staging into
//! both servers' private buckets, then server A and server B as two separate
//! OS processes that share nothing but their inboxes; the published
//! aggregates are checked against the plaintext totals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use base64::Engine;
use clap::Args;

use super::generate::{generate_dump, DumpOptions, Expected, Pattern};
use super::{exit, parse_date, ConfigArg};
use crate::wire::client::ServerPublicKeys;
use crate::wire::envelope::generate_keypair;
use crate::wire::Role;

/// Run the whole system locally and check the result against the known answer.
#[derive(Args, Debug)]
#[command(after_help = "Example:\n  prio-processor integrate\n  \
    prio-processor integrate --pings 2000 --workers 2 \\\n    \
    --config '{\"clicks\": {\"vdaf\": \"sumvec\", \"length\": 64, \"bits\": 4}}'\n\n\
    Exit code 0 when every batch's published aggregate matches the expected totals, 3 when one\n\
    does not, 1 when a step fails.")]
pub struct IntegrateArgs {
    /// Batch config (default: the seed's four batch ids in data/content.json).
    #[arg(
        long = "config",
        env = "DATA_CONFIG",
        default_value = "data/content.json"
    )]
    pub config: String,
    /// Work directory for the dump, the buckets and the results (its previous run is replaced).
    #[arg(long, default_value = "data/work")]
    pub work_dir: PathBuf,
    /// Number of simulated clients.
    #[arg(long, default_value_t = 200)]
    pub pings: usize,
    /// Worker threads per server (and for staging).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Submission date.
    #[arg(long, default_value = "2019-06-26", value_parser = parse_date)]
    pub date: chrono::NaiveDate,
}

fn fresh_secret() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

/// Runs this binary with `args` and `envs`, failing with its stderr.
fn run_self(
    what: &str,
    args: &[&str],
    envs: &[(&str, String)],
) -> anyhow::Result<std::process::Child> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for var in [
        "SERVER_ID",
        "PRIVATE_KEY_HEX",
        "BUCKET_INTERNAL_PRIVATE",
        "BUCKET_INTERNAL_SHARED",
        "BUCKET_EXTERNAL_SHARED",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().with_context(|| format!("starting {what}"))
}

pub fn run(args: IntegrateArgs) -> anyhow::Result<u8> {
    let config_arg = ConfigArg {
        config: args.config.clone(),
    };
    let config = config_arg.load()?;
    let work = std::path::absolute(&args.work_dir)?;
    for dir in ["dump", "server-a", "server-b"] {
        let path = work.join(dir);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("clearing {}", path.display()))?;
        }
    }
    let date = args.date.format("%Y-%m-%d").to_string();
    let keys = [generate_keypair(), generate_keypair()];
    let public = ServerPublicKeys {
        a: keys[0].public_key(),
        b: keys[1].public_key(),
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
    let dump = work.join("dump");
    eprintln!(
        "[1/4] generating {} pings into {}",
        args.pings,
        dump.display()
    );
    let expected = generate_dump(&config, &public, &options, &dump)?;

    let bucket = |role: Role, name: &str| {
        work.join(format!("server-{role}/{name}"))
            .display()
            .to_string()
    };
    let workers = args.workers.to_string();
    eprintln!("[2/4] staging into each server's private bucket");
    let stage = run_self(
        "stage",
        &[
            "stage",
            "--date",
            &date,
            "--input",
            &dump.join("sink").display().to_string(),
            "--workers",
            &workers,
            "--output-a",
            &bucket(Role::A, "private"),
            "--output-b",
            &bucket(Role::B, "private"),
        ],
        &[("STAGING_SECRET", fresh_secret())],
    )?;
    let staged = stage.wait_with_output()?;
    if !staged.status.success() {
        bail!("stage failed (exit {:?})", staged.status.code());
    }

    eprintln!("[3/4] running server A and server B as separate processes");
    let shared_secret = fresh_secret();
    let servers: Vec<_> = Role::BOTH
        .iter()
        .map(|&role| {
            let i = role.agg_id();
            run_self(
                &format!("server {role}"),
                &["process", "--date", &date, "--workers", &workers],
                &[
                    ("SERVER_ID", role.as_str().to_string()),
                    ("PRIVATE_KEY_HEX", keys[i].to_hex()),
                    ("SHARED_SECRET", shared_secret.clone()),
                    ("DATA_CONFIG", args.config.clone()),
                    ("BUCKET_INTERNAL_PRIVATE", bucket(role, "private")),
                    ("BUCKET_INTERNAL_SHARED", bucket(role, "inbox")),
                    ("BUCKET_EXTERNAL_SHARED", bucket(role.peer(), "inbox")),
                    ("RETRY_DELAY", "0.2".into()),
                    ("RETRY_LIMIT", "12".into()),
                ],
            )
        })
        .collect::<anyhow::Result<_>>()?;
    for (role, server) in Role::BOTH.iter().zip(servers) {
        let out = server.wait_with_output()?;
        if !out.status.success() {
            bail!("server {role} failed (exit {:?})", out.status.code());
        }
    }

    eprintln!("[4/4] checking the published aggregates against the plaintext totals");
    Ok(print_summary(&expected, &work, &date))
}

/// One server's published result for a batch, if any.
fn published(work: &Path, role: Role, date: &str, batch: &str) -> Option<serde_json::Value> {
    let path = work.join(format!(
        "server-{role}/private/{date}/processed/batch_id={batch}/aggregate.json"
    ));
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn print_summary(expected: &Expected, work: &Path, date: &str) -> u8 {
    let mut all_match = true;
    println!(
        "{:<54} {:>8} {:>10} {:>8}  match  rejected by reason",
        "batch id", "reports", "aggregated", "rejected"
    );
    for (batch_id, want) in &expected.batches {
        let [a, b] = [Role::A, Role::B].map(|r| published(work, r, date, batch_id));
        let matches = match (&a, &b) {
            (Some(a), Some(b)) => {
                a["aggregate"] == b["aggregate"]
                    && a["aggregate"] == serde_json::json!(want.aggregate)
                    && a["reports_aggregated"] == want.reports
            }
            _ => false,
        };
        all_match &= matches;
        let field = |k: &str| a.as_ref().and_then(|a| a[k].as_u64()).unwrap_or(0);
        let rejected: BTreeMap<String, u64> = a
            .as_ref()
            .and_then(|a| serde_json::from_value(a["rejected"].clone()).ok())
            .unwrap_or_default();
        let reasons: Vec<String> = rejected.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{batch_id:<54} {:>8} {:>10} {:>8}  {:<5}  {}",
            field("reports_total"),
            field("reports_aggregated"),
            rejected.values().sum::<u64>(),
            if matches { "yes" } else { "NO" },
            reasons.join(" ")
        );
    }
    for (batch_id, count) in &expected.unknown_batches {
        let published = published(work, Role::A, date, batch_id).is_some();
        all_match &= !published;
        println!(
            "{batch_id:<54} {count:>8} {:>10} {:>8}  {:<5}  not in the config: skipped",
            0,
            0,
            if published { "NO" } else { "yes" }
        );
    }
    println!(
        "pings: {} distinct, {} duplicates, {} malformed records",
        expected.pings,
        expected.duplicates,
        expected
            .malformed
            .get("ndjson")
            .map_or(0, |m| m.values().sum::<u64>())
    );
    for role in Role::BOTH {
        println!(
            "results of server {role}: {}",
            work.join(format!("server-{role}/private/{date}/processed"))
                .display()
        );
    }
    if all_match {
        println!("result: every published aggregate matches the expected totals");
        exit::OK
    } else {
        println!("result: MISMATCH against the expected totals");
        exit::MISMATCH
    }
}
