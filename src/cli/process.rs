//! `process` and its steps (`verify1`, `verify2`, `aggregate`, `publish`):
//! one server's side of the two-server pipeline.

use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::keys::parse_shared_secret;
use super::metrics::{failed_run, process_metrics, record, MetricsArg};
use super::progress::{Display, Unit};
use super::{exit, parse_date, parse_rate, ClusterArgs, ConfigArg};
use crate::dataflow::process::{run, Retry, RunReport, ServerJob};
use crate::storage::location::Location;
use crate::storage::server::{ServerBuckets, Signatures};
use crate::wire::config::DEFAULT_REPLAY_WINDOW_DAYS;
use crate::wire::envelope::{KeySet, PublicKey};
use crate::wire::protocol::{AlarmRule, BatchOutcome, BatchStatus, Step};
use crate::wire::server::ServerSecrets;
use crate::wire::signing::{SigningPrivateKey, SigningPublicKey};
use crate::wire::Role;

/// One server's configuration; every flag can also come from the environment (names from the seed).
#[derive(Args, Debug)]
#[command(
    after_help = "Example (server A; server B swaps the buckets and keys):\n  \
    export SERVER_ID=A PRIVATE_KEY_HEX=... SHARED_SECRET=... DATA_CONFIG=data/content.json\n  \
    export PRIVATE_SIGNING_KEY_HEX=... PUBLIC_SIGNING_KEY_HEX_EXTERNAL=...   # B's signing_public_key\n  \
    export BUCKET_INTERNAL_PRIVATE=s3://a-private BUCKET_INTERNAL_SHARED=s3://a-inbox \\\n         \
    BUCKET_EXTERNAL_SHARED=gs://b-inbox\n  \
    prio-processor process --date 2019-06-26 --workers 4\n\n\
    Layout under BUCKET/DATE/: raw/ (from stage), intermediate/{internal,external}/STEP/,\n\
    processed/batch_id=X/aggregate.{json,parquet}. Exit codes: 0 published (or withheld below\n\
    min_batch_size), 1 failure or a batch refused because the servers disagree, 4 a batch\n\
    most of whose reports one reason rejected (MAX_REJECTED_FRACTION; stderr names the\n\
    likely cause: a wrong key, a swapped server, another config). Everything\n\
    sent to the peer is signed (NAME.sig beside NAME); anything in the inbox that the peer did\n\
    not sign for this date, step and object stops the run."
)]
pub struct ServerArgs {
    /// Which server this is: A or B.
    #[arg(long, env = "SERVER_ID")]
    pub server_id: Role,
    /// This server's X25519 private key (hex), from `keygen`. To rotate keys,
    /// a comma-separated list: the current key first, then the older ones
    /// that clients may still seal to (each envelope names its key).
    #[arg(long, env = "PRIVATE_KEY_HEX", hide_env_values = true)]
    pub private_key_hex: String,
    /// This server's current public key; when given, checked against the first private key.
    #[arg(long, env = "PUBLIC_KEY_HEX_INTERNAL")]
    pub public_key_hex_internal: Option<String>,
    /// The peer's public key; when given, checked for form only (clients seal to it).
    #[arg(long, env = "PUBLIC_KEY_HEX_EXTERNAL")]
    pub public_key_hex_external: Option<String>,
    /// This server's Ed25519 signing key (hex), from `keygen`: it signs what the peer reads.
    #[arg(long, env = "PRIVATE_SIGNING_KEY_HEX", hide_env_values = true)]
    pub private_signing_key_hex: String,
    /// This server's signing public key; when given, checked against the private one.
    #[arg(long, env = "PUBLIC_SIGNING_KEY_HEX_INTERNAL")]
    pub public_signing_key_hex_internal: Option<String>,
    /// The peer's signing public key: nothing in the inbox is read unless it signed it.
    #[arg(long, env = "PUBLIC_SIGNING_KEY_HEX_EXTERNAL")]
    pub public_signing_key_hex_external: String,
    /// VDAF verify key shared by both servers (base64 of 32 bytes), from `shared-seed`.
    #[arg(long, env = "SHARED_SECRET", hide_env_values = true)]
    pub shared_secret: String,
    #[command(flatten)]
    pub config: ConfigArg,
    /// This server's own bucket (raw shares, its own messages, results).
    #[arg(long, env = "BUCKET_INTERNAL_PRIVATE", value_name = "URL")]
    pub bucket_internal_private: String,
    /// This server's inbox: the peer writes its messages here.
    #[arg(long, env = "BUCKET_INTERNAL_SHARED", value_name = "URL")]
    pub bucket_internal_shared: String,
    /// The peer's inbox: this server writes its messages there.
    #[arg(long, env = "BUCKET_EXTERNAL_SHARED", value_name = "URL")]
    pub bucket_external_shared: String,
    /// How many times to poll for the peer's message before giving up.
    #[arg(long, env = "RETRY_LIMIT", default_value_t = 8)]
    pub retry_limit: u32,
    /// Seconds before the first retry.
    #[arg(long, env = "RETRY_DELAY", default_value_t = 2.0)]
    pub retry_delay: f64,
    /// Each wait is this many times the previous one.
    #[arg(long, env = "RETRY_BACKOFF_EXPONENT", default_value_t = 2.0)]
    pub retry_backoff_exponent: f64,
    /// Submission date to process (YYYY-MM-DD).
    #[arg(long, value_parser = parse_date)]
    pub date: chrono::NaiveDate,
    /// Anti-replay: a report whose nonce this server aggregated on one of
    /// this many dates before `--date` is not counted again (0: within the
    /// date only). Both servers must use the same window.
    #[arg(long, env = "REPLAY_WINDOW_DAYS", default_value_t = DEFAULT_REPLAY_WINDOW_DAYS)]
    pub replay_window_days: u32,
    /// Alarm (exit 4) when one rejection reason takes more than this share
    /// of a batch's reports: the sign of a wrong key or config.
    #[arg(long, env = "MAX_REJECTED_FRACTION", default_value_t = 0.5, value_parser = parse_rate)]
    pub max_rejected_fraction: f64,
    /// Batches with fewer reports never raise the alarm.
    #[arg(long, env = "ALARM_MIN_REPORTS", default_value_t = 10)]
    pub alarm_min_reports: u64,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub metrics: MetricsArg,
}

/// Runs `steps` and writes the metrics file (on process 0), also when the
/// run fails, so that monitoring never reads an earlier run's success.
pub fn run_steps(args: ServerArgs, steps: &[Step]) -> anyhow::Result<u8> {
    let started = std::time::Instant::now();
    let metrics_file = (args.metrics.metrics_file.clone()).filter(|_| args.cluster.process == 0);
    let server = args.server_id;
    let command = match steps {
        [step] => step.name(),
        _ => "process",
    };
    record(
        metrics_file.as_deref(),
        run_server(args, steps),
        |(code, done)| process_metrics(command, server, done, started.elapsed(), *code == exit::OK),
        || failed_run(command, Some(server), started.elapsed()),
    )
    .map(|(code, _)| code)
}

/// The run itself: its exit code and what it did.
fn run_server(args: ServerArgs, steps: &[Step]) -> anyhow::Result<(u8, RunReport)> {
    let private_keys = KeySet::from_hex_list(&args.private_key_hex).context("PRIVATE_KEY_HEX")?;
    if let Some(own) = &args.public_key_hex_internal {
        let own = PublicKey::from_hex(own).context("PUBLIC_KEY_HEX_INTERNAL")?;
        anyhow::ensure!(
            own == private_keys.current().public_key(),
            "PUBLIC_KEY_HEX_INTERNAL is not the public key of PRIVATE_KEY_HEX (its first key); check that both belong to server {}",
            args.server_id
        );
    }
    if let Some(peer) = &args.public_key_hex_external {
        PublicKey::from_hex(peer).context("PUBLIC_KEY_HEX_EXTERNAL")?;
    }
    let signing_key = SigningPrivateKey::from_hex(&args.private_signing_key_hex)
        .context("PRIVATE_SIGNING_KEY_HEX")?;
    if let Some(own) = &args.public_signing_key_hex_internal {
        let own = SigningPublicKey::from_hex(own).context("PUBLIC_SIGNING_KEY_HEX_INTERNAL")?;
        anyhow::ensure!(
            own == signing_key.public_key(),
            "PUBLIC_SIGNING_KEY_HEX_INTERNAL is not the public key of PRIVATE_SIGNING_KEY_HEX; check that both belong to server {}",
            args.server_id
        );
    }
    let peer_signing_key = SigningPublicKey::from_hex(&args.public_signing_key_hex_external)
        .context("PUBLIC_SIGNING_KEY_HEX_EXTERNAL")?;
    anyhow::ensure!(
        peer_signing_key != signing_key.public_key(),
        "PUBLIC_SIGNING_KEY_HEX_EXTERNAL is this server's own signing key; set it to the peer's"
    );
    anyhow::ensure!(
        args.retry_delay >= 0.0 && args.retry_backoff_exponent >= 1.0,
        "RETRY_DELAY must be >= 0 and RETRY_BACKOFF_EXPONENT >= 1"
    );
    let progress = std::sync::Arc::new(Display::new(
        format!("server {}", args.server_id.as_str().to_uppercase()),
        Unit::Parts,
        "reports",
        args.cluster.workers,
    ));
    let job = ServerJob {
        secrets: ServerSecrets {
            role: args.server_id,
            private_keys,
            verify_key: parse_shared_secret(&args.shared_secret)?,
        },
        config: args.config.load()?,
        buckets: ServerBuckets::new(
            &args.date.format("%Y-%m-%d").to_string(),
            Location::parse(&args.bucket_internal_private).context("BUCKET_INTERNAL_PRIVATE")?,
            Location::parse(&args.bucket_internal_shared).context("BUCKET_INTERNAL_SHARED")?,
            Location::parse(&args.bucket_external_shared).context("BUCKET_EXTERNAL_SHARED")?,
        )
        .signed(Signatures {
            role: args.server_id,
            own: signing_key,
            peer: peer_signing_key,
        }),
        retry: Retry {
            limit: args.retry_limit,
            delay: Duration::from_secs_f64(args.retry_delay),
            exponent: args.retry_backoff_exponent,
        },
        steps: steps.to_vec(),
        replay_window_days: args.replay_window_days,
        alarm: AlarmRule {
            max_rejected_fraction: args.max_rejected_fraction,
            min_reports: args.alarm_min_reports,
        },
        progress: progress.clone(),
    };
    job.buckets.claim()?;
    let buckets = job.buckets.clone();
    let done = run(job, &args.cluster.cluster())?;
    progress.finish();
    if args.cluster.process != 0 {
        return Ok((exit::OK, done));
    }
    let took: Vec<String> = done
        .passes
        .iter()
        .map(|(steps, d)| format!("{steps} {:.2}s", d.as_secs_f64()))
        .collect();
    tracing::info!("server {}: took {}", args.server_id, took.join(", "));
    if !done.passes.is_empty() {
        buckets.record_timings(&done.passes)?;
    }
    let code = if steps.contains(&Step::Publish) {
        // The date is done: nothing of this server writes there any more. A
        // failure to tidy up is worth a warning, not a failed run.
        match buckets.remove_debris() {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} half-written files that killed runs left"),
            Err(e) => tracing::warn!("could not remove what killed runs left: {e}"),
        }
        let code = report(args.server_id, &done.outcomes);
        println!("output: {}", buckets.processed().url());
        code
    } else {
        exit::OK
    };
    Ok((code, done))
}

/// Prints the outcomes and what failed; the exit code they call for.
fn report(server: Role, outcomes: &[BatchOutcome]) -> u8 {
    print_summary(server, outcomes);
    for o in outcomes {
        if let Some(alarm) = &o.alarm {
            eprintln!("error: server {server}: batch {:?}: {alarm}", o.batch_id);
        }
    }
    let refused: Vec<_> = outcomes
        .iter()
        .filter(|o| o.status == BatchStatus::Refused)
        .collect();
    for o in &refused {
        eprintln!(
            "error: batch {:?} refused: {}",
            o.batch_id,
            o.message.as_deref().unwrap_or("")
        );
    }
    if !refused.is_empty() {
        exit::FAILURE
    } else if outcomes.iter().any(|o| o.alarm.is_some()) {
        exit::ALARM
    } else {
        exit::OK
    }
}

fn print_summary(role: Role, outcomes: &[BatchOutcome]) {
    println!("server {role}");
    println!(
        "{:<54} {:>8} {:>10} {:>8}  {:<9} rejected by reason",
        "batch id", "reports", "aggregated", "rejected", "status"
    );
    for o in outcomes {
        let rejected: u64 = o.rejected.values().sum();
        let reasons: Vec<String> = o
            .rejected
            .iter()
            .map(|(r, n)| format!("{}={n}", r.reason()))
            .collect();
        println!(
            "{:<54} {:>8} {:>10} {:>8}  {:<9} {}",
            o.batch_id,
            o.reports_total,
            o.reports_aggregated,
            rejected,
            o.status.name(),
            reasons.join(" ")
        );
    }
}
