//! `integrate`: the whole system on one machine, as the README's first
//! command. Keys, a simulated dump with a known answer, staging into both
//! servers' private buckets, then server A and server B as two separate OS
//! processes that share nothing but their inboxes; the published aggregates
//! are checked against the plaintext totals. The buckets live under the work
//! directory, or under any storage URL (`--storage s3://...`), which is how
//! the backend tests run the whole system against real storage servers.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use base64::Engine;
use clap::Args;

use super::generate::encoding_bar;
use super::report::write_report;
use super::{exit, parse_date, ConfigArg};
use crate::simulate::{generate_dump, DumpOptions, Expected, Pattern};
use crate::storage::location::Location;
use crate::storage::server::ServerBuckets;
use crate::wire::client::ServerPublicKeys;
use crate::wire::config::BatchConfig;
use crate::wire::envelope::{generate_keypair, KeyError, PrivateKey};
use crate::wire::signing::SigningPrivateKey;
use crate::wire::Role;

/// Run the whole system locally and check the result against the known answer.
#[derive(Args, Debug)]
#[command(after_help = "Example:\n  prio-processor integrate\n  \
    prio-processor integrate --pings 2000 --workers 2 \\\n    \
    --config '{\"clicks\": {\"vdaf\": \"sumvec\", \"length\": 64, \"bits\": 4}}'\n  \
    AWS_ENDPOINT_URL=http://127.0.0.1:9000 AWS_ALLOW_HTTP=true prio-processor integrate \\\n    \
    --storage s3://test-bucket/integrate\n\n\
    Keys and secrets are fresh for each run unless PRIVATE_KEY_HEX_A, PRIVATE_KEY_HEX_B,\n\
    PRIVATE_SIGNING_KEY_HEX_A, PRIVATE_SIGNING_KEY_HEX_B, SHARED_SECRET or STAGING_SECRET are set.\n\n\
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
    /// Put the dump and both servers' buckets under this storage URL instead of the work
    /// directory (s3://, gs://, az://, file://; credentials from the environment).
    #[arg(long)]
    pub storage: Option<String>,
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

/// A secret from the environment, or a fresh random one.
fn secret_from_env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    })
}

/// A server's key from `<VAR>_<A|B>` (hex), or a fresh one.
fn key_from_env<K>(
    var: &str,
    role: Role,
    parse: fn(&str) -> Result<K, KeyError>,
    fresh: fn() -> K,
) -> anyhow::Result<K> {
    let var = format!("{var}_{}", role.as_str().to_uppercase());
    match std::env::var(&var) {
        Ok(hex) => parse(&hex).with_context(|| format!("{var} is not a private key")),
        Err(_) => Ok(fresh()),
    }
}

/// Starts this binary with `args` and `envs`; its stderr is shown.
fn run_self(
    what: &str,
    args: &[&str],
    envs: &[(&str, String)],
) -> anyhow::Result<std::process::Child> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut cmd = Command::new(exe);
    // Their summaries are not needed (the checks read the buckets); their logs are shown.
    cmd.args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for var in [
        "SERVER_ID",
        "PRIVATE_KEY_HEX",
        "PRIVATE_SIGNING_KEY_HEX",
        "PUBLIC_SIGNING_KEY_HEX_INTERNAL",
        "PUBLIC_KEY_HEX_INTERNAL",
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
    let root = Location::parse(&args.storage.clone().unwrap_or(work.display().to_string()))?;
    for dir in ["dump", "server-a", "server-b"] {
        root.delete_all(dir)?;
    }
    let local_dump = work.join("dump");
    if local_dump.exists() {
        std::fs::remove_dir_all(&local_dump)
            .with_context(|| format!("clearing {}", local_dump.display()))?;
    }
    let date = args.date.format("%Y-%m-%d").to_string();
    let keys = Role::BOTH.map(|role| {
        key_from_env(
            "PRIVATE_KEY_HEX",
            role,
            PrivateKey::from_hex,
            generate_keypair,
        )
    });
    let [key_a, key_b] = keys;
    let keys = [key_a?, key_b?];
    let signing = Role::BOTH.map(|role| {
        key_from_env(
            "PRIVATE_SIGNING_KEY_HEX",
            role,
            SigningPrivateKey::from_hex,
            SigningPrivateKey::generate,
        )
    });
    let [signing_a, signing_b] = signing;
    let signing = [signing_a?, signing_b?];
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
        records_per_file: None,
    };
    eprintln!(
        "[1/4] generating {} pings into {}",
        args.pings,
        local_dump.display()
    );
    let bar = encoding_bar(args.pings);
    let expected = generate_dump(&config, &public, &options, &local_dump, &|| bar.inc(1))?;
    bar.finish_and_clear();
    let input = root.child("dump/sink");
    if args.storage.is_some() {
        copy_all(
            &Location::parse(&local_dump.join("sink").display().to_string())?,
            &input,
        )?;
    }

    let buckets = Role::BOTH.map(|role| ServerBuckets::under_root(&root, role, &date));
    let workers = args.workers.to_string();
    eprintln!("[2/4] staging into each server's private bucket");
    let mut stage = run_self(
        "stage",
        &[
            "stage",
            "--date",
            &date,
            "--input",
            input.url(),
            "--workers",
            &workers,
            "--output-a",
            buckets[0].private().url(),
            "--output-b",
            buckets[1].private().url(),
        ],
        &[
            ("STAGING_SECRET", secret_from_env("STAGING_SECRET")),
            ("DATA_CONFIG", args.config.clone()),
        ],
    )?;
    let staged = stage.wait()?;
    if !staged.success() {
        bail!("stage failed (exit {:?})", staged.code());
    }

    eprintln!("[3/4] running server A and server B as separate processes");
    let shared_secret = secret_from_env("SHARED_SECRET");
    let servers: Vec<_> = Role::BOTH
        .iter()
        .map(|&role| {
            let i = role.agg_id();
            let url = |l: &Location| l.url().to_string();
            run_self(
                &format!("server {role}"),
                &["process", "--date", &date, "--workers", &workers],
                &[
                    ("SERVER_ID", role.as_str().to_string()),
                    ("PRIVATE_KEY_HEX", keys[i].to_hex()),
                    ("PRIVATE_SIGNING_KEY_HEX", signing[i].to_hex()),
                    (
                        "PUBLIC_SIGNING_KEY_HEX_EXTERNAL",
                        signing[1 - i].public_key().to_hex(),
                    ),
                    ("SHARED_SECRET", shared_secret.clone()),
                    ("DATA_CONFIG", args.config.clone()),
                    ("BUCKET_INTERNAL_PRIVATE", url(buckets[i].private())),
                    ("BUCKET_INTERNAL_SHARED", url(buckets[i].inbox())),
                    ("BUCKET_EXTERNAL_SHARED", url(buckets[i].outbox())),
                    ("RETRY_DELAY", "0.2".into()),
                    ("RETRY_LIMIT", "12".into()),
                ],
            )
        })
        .collect::<anyhow::Result<_>>()?;
    wait_for_servers(servers)?;

    eprintln!("[4/4] checking the published aggregates against the plaintext totals");
    let code = print_summary(&config, &expected, &buckets)?;
    let servers: Vec<(Role, Location)> = Role::BOTH
        .iter()
        .zip(&buckets)
        .map(|(role, b)| (*role, b.private().clone()))
        .collect();
    write_report(&servers, &[date], &work.join("report.html"))?;
    Ok(code)
}

/// Waits for both servers. When one fails, the other is stopped: it would
/// wait for its peer's messages until its retry limit.
fn wait_for_servers(mut servers: Vec<std::process::Child>) -> anyhow::Result<()> {
    let mut running = [true, true];
    while running.contains(&true) {
        for (i, server) in servers.iter_mut().enumerate() {
            if !running[i] {
                continue;
            }
            let Some(status) = server.try_wait()? else {
                continue;
            };
            running[i] = false;
            if !status.success() {
                let other = &mut servers[1 - i];
                if running[1 - i] {
                    let _ = other.kill();
                    let _ = other.wait();
                }
                bail!("server {} failed (exit {:?})", Role::BOTH[i], status.code());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// An aggregate as the summary shows it: whole when short, else its first
/// elements, its length and the total of its elements.
fn sum_summary(aggregate: &[u128]) -> String {
    const SHOWN: usize = 8;
    let head: Vec<String> = aggregate.iter().take(SHOWN).map(u128::to_string).collect();
    if aggregate.len() <= SHOWN {
        return format!("[{}]", head.join(", "));
    }
    let total: u128 = aggregate.iter().sum();
    format!(
        "[{}, ...] ({} elements, adding up to {total})",
        head.join(", "),
        aggregate.len()
    )
}

/// Copies every object below `from` to the same place below `to`.
fn copy_all(from: &Location, to: &Location) -> anyhow::Result<()> {
    for (rel, _) in from.list()? {
        to.put(&rel, from.get(&rel)?)?;
    }
    Ok(())
}

fn print_summary(
    config: &BatchConfig,
    expected: &Expected,
    buckets: &[ServerBuckets; 2],
) -> anyhow::Result<u8> {
    let mut all_match = true;
    println!(
        "{:<54} {:>8} {:>10} {:>8}  match  rejected by reason",
        "batch id", "reports", "aggregated", "rejected"
    );
    for (batch_id, want) in &expected.batches {
        let a = buckets[0].published(batch_id)?;
        let b = buckets[1].published(batch_id)?;
        // A batch below its threshold must be withheld by both servers.
        let withheld = config
            .get(batch_id)
            .is_some_and(|spec| want.reports < spec.min_batch_size);
        let matches = match (&a, &b) {
            (Some(a), Some(b)) => {
                !withheld
                    && a.aggregate == b.aggregate
                    && a.aggregate == want.aggregate
                    && a.reports_aggregated == want.reports
            }
            (None, None) => withheld,
            _ => false,
        };
        all_match &= matches;
        let (total, aggregated) = a
            .as_ref()
            .map_or((0, 0), |a| (a.reports_total, a.reports_aggregated));
        let rejected = a.as_ref().map(|a| a.rejected.clone()).unwrap_or_default();
        let mut reasons: Vec<String> = rejected
            .iter()
            .map(|(r, n)| format!("{}={n}", r.reason()))
            .collect();
        if withheld {
            reasons.insert(
                0,
                format!("withheld: {} reports, below min_batch_size", want.reports),
            );
        }
        println!(
            "{batch_id:<54} {total:>8} {aggregated:>10} {:>8}  {:<5}  {}",
            rejected.values().sum::<u64>(),
            if matches { "yes" } else { "NO" },
            reasons.join(" ")
        );
        if let Some(a) = &a {
            println!("    published sum {}", sum_summary(&a.aggregate));
        }
        if !matches && !withheld {
            println!("    expected sum  {}", sum_summary(&want.aggregate));
        }
    }
    for (batch_id, count) in &expected.unknown_batches {
        let published = buckets[0].published(batch_id)?.is_some();
        all_match &= !published;
        println!(
            "{batch_id:<54} {count:>8} {:>10} {:>8}  {:<5}  not in the config: skipped",
            0,
            0,
            if published { "NO" } else { "skip" }
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
    for (role, buckets) in Role::BOTH.iter().zip(buckets) {
        println!("results of server {role}: {}", buckets.processed().url());
    }
    if all_match {
        println!("result: every published aggregate matches the expected totals");
        Ok(exit::OK)
    } else {
        println!("result: MISMATCH against the expected totals");
        Ok(exit::MISMATCH)
    }
}
