//! Command line: clap commands, environment variables, exit codes, progress
//! output. Errors here are `anyhow` with context; layers below use typed errors.

mod cleanup;
mod encode;
mod generate;
mod integrate;
mod keys;
mod metrics;
mod process;
mod progress;
mod report;
mod stage;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::dataflow::Cluster;
use crate::wire::config::{BatchConfig, DEFAULT_MIN_BATCH_SIZE};
use crate::wire::protocol::Step;

pub use crate::exit;

#[derive(Parser, Debug)]
#[command(
    name = "prio-processor",
    version,
    about = "Batch runtime for Prio two-server private aggregation",
    long_about = "Batch runtime for Prio two-server private aggregation.\n\n\
        Clients send one HPKE-sealed secret share per server; the two servers verify every \
        client's proof together and publish only the sum.",
    after_help = "Exit codes: 0 success, 1 failure, 2 usage error, 3 results did not match, 4 most of a batch's reports rejected for one reason.\n\
        Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more, --log-format json for \
        one JSON object a line.\n\
        Cloud requests are retried with backoff up to STORAGE_RETRY_LIMIT times (30) within \
        STORAGE_RETRY_TIMEOUT seconds (180).\n\n\
        Quick start:\n  prio-processor integrate        # the whole system on ./data/work\n  \
        prio-processor keygen           # a server key pair"
)]
struct Cli {
    /// Log lines as text (coloured on a terminal, unless NO_COLOR) or one
    /// JSON object each, for log collectors.
    #[arg(long, global = true, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Seconds between progress lines when stderr is not a terminal (on a
    /// terminal, a bar); every phase also logs a closing line.
    #[arg(long, global = true, env = "PROGRESS_INTERVAL", default_value_t = 10.0, value_parser = parse_seconds)]
    progress_interval: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// The `--help` epilogue of one step of `process`.
macro_rules! step_help {
    ($step:literal, $when:literal) => {
        concat!(
            "Example (the environment of `process --help`):\n  prio-processor ",
            $step,
            " --date 2019-06-26 --workers 4    # ",
            $when,
            "\n\nA step whose _SUCCESS is in the private bucket is skipped (publish excepted). \
             Exit codes as for process: 0 done, 1 failure, 4 (publish) a batch most of whose \
             reports one reason rejected."
        )
    };
}

#[derive(Subcommand, Debug)]
enum Command {
    Keygen(keys::KeygenArgs),
    SharedSeed(keys::SharedSeedArgs),
    EncodeShares(encode::EncodeArgs),
    Generate(generate::GenerateArgs),
    Stage(stage::StageArgs),
    /// One server's whole pipeline: verify1, verify2, aggregate, publish.
    Process(process::ServerArgs),
    /// Step 1: open and verify-init own shares; send verifier shares to the peer.
    #[command(
        long_about = "Step 1 of process: opens this server's shares (BUCKET_INTERNAL_PRIVATE/DATE/raw/, \
            from stage) with PRIVATE_KEY_HEX, runs verify_init on each report, sends the \
            verifier shares to the peer's inbox and keeps the verification states in the private \
            bucket. It sends only, so it runs without the peer.",
        after_help = step_help!("verify1", "then verify2 once the peer ran its verify1")
    )]
    Verify1(process::ServerArgs),
    /// Step 2: combine with the peer's verifier shares; send verdicts.
    #[command(
        long_about = "Step 2 of process: waits for the peer's verifier shares (its verify1), \
            combines them with this server's verification states, and sends each report's \
            verdict to the peer, keeping a sum of the accepted output shares per part.",
        after_help = step_help!("verify2", "after verify1 here; waits for the peer's verify1")
    )]
    Verify2(process::ServerArgs),
    /// Step 3: sum reports both servers accepted; send the aggregate share.
    #[command(
        long_about = "Step 3 of process: waits for the peer's verdicts (its verify2), sums the \
            reports both servers accepted (one per VDAF nonce: copies are counted as replayed), \
            and sends the aggregate share with the count and a digest of the report ids; below \
            the batch's min_batch_size it sends the count and digest only.",
        after_help = step_help!("aggregate", "after verify2; waits for the peer's verify2")
    )]
    Aggregate(process::ServerArgs),
    /// Step 4: check the peer's aggregate covers the same reports; publish.
    #[command(
        long_about = "Step 4 of process: waits for the peer's aggregate message, refuses a batch \
            whose count or digest differs, withholds one below min_batch_size, and writes the \
            others' sums to BUCKET_INTERNAL_PRIVATE/DATE/processed/batch_id=X/aggregate.{json,parquet}. \
            Always redone, so a rerun rewrites the results.",
        after_help = step_help!("publish", "after aggregate; waits for the peer's aggregate")
    )]
    Publish(process::ServerArgs),
    Integrate(integrate::IntegrateArgs),
    Report(report::ReportArgs),
    Cleanup(cleanup::CleanupArgs),
}

/// Parses arguments, runs the command, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tune_process();
    init_logging(cli.log_format);
    progress::set_interval(std::time::Duration::from_secs_f64(cli.progress_interval));
    let result = match cli.command {
        Command::Keygen(args) => keys::keygen(args),
        Command::SharedSeed(args) => keys::shared_seed(args),
        Command::EncodeShares(args) => encode::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Stage(args) => stage::run(args),
        Command::Process(args) => process::run_steps(args, &Step::ALL),
        Command::Verify1(args) => process::run_steps(args, &[Step::Verify1]),
        Command::Verify2(args) => process::run_steps(args, &[Step::Verify2]),
        Command::Aggregate(args) => process::run_steps(args, &[Step::Aggregate]),
        Command::Publish(args) => process::run_steps(args, &[Step::Publish]),
        Command::Integrate(args) => integrate::run(args),
        Command::Report(args) => report::run(args),
        Command::Cleanup(args) => cleanup::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {}", error_text(&err));
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// An error and its causes, each cause once: many errors (ours, object_store's)
/// already show their cause, which the chain would repeat.
fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

/// Process settings that staging and the servers need on Linux with glibc;
/// set before any worker starts.
///
/// Staging and the servers allocate and free buffers of megabytes per input
/// file and part (file contents, a part's decoded shares). By default glibc's malloc
/// serves such buffers with fresh `mmap`s and hands freed memory back to the
/// kernel, so every file and part pays a page fault per 4 KiB again, which
/// costs more than the copies themselves and grows with worker threads. A
/// fixed 32 MiB mmap threshold and a 64 MiB trim threshold make worker
/// arenas reuse that memory instead; peak RSS is unchanged (it is bounded
/// by what is live anyway).
///
/// A staging worker merges its sort runs with all of them open, one file per ~130k
/// entries, which passes the usual soft limit of 1024 open files at about
/// 130M entries per worker; the soft limit is raised to the hard one, which
/// needs no privilege.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_process() {
    // SAFETY: mallopt only sets allocator parameters; getrlimit and setrlimit
    // only read and write the struct passed.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        let mut files = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut files) == 0 && files.rlim_cur < files.rlim_max
        {
            files.rlim_cur = files.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &files);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_process() {}

/// Logs go to stderr. A server's lines carry its id and steps as spans
/// (`server{id=a}:pass{steps=verify1}`), in JSON as `"spans"`.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| progress::LogWriter)
        .with_target(false);
    match format {
        LogFormat::Text => {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            logs.with_ansi(std::io::stderr().is_terminal() && !no_color)
                .init()
        }
        LogFormat::Json => logs.json().with_span_list(true).init(),
    }
}

/// `--config` / `DATA_CONFIG`: a path to the batch config JSON, or the JSON itself.
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArg {
    /// Batch config: a JSON file mapping batch id to spec, or inline JSON.
    /// A bare number means Prio v1 (libprio, as Firefox sent it) over a bit
    /// vector of that length, as in the seed system.
    #[arg(long = "config", env = "DATA_CONFIG", value_name = "FILE|JSON")]
    pub config: String,
}

impl ConfigArg {
    pub fn load(&self) -> anyhow::Result<BatchConfig> {
        let text = if self.config.trim_start().starts_with('{') {
            self.config.clone()
        } else {
            std::fs::read_to_string(&self.config).with_context(|| {
                format!(
                    "reading batch config {} (set --config or DATA_CONFIG)",
                    self.config
                )
            })?
        };
        let config = BatchConfig::from_json(&text)
            .with_context(|| format!("loading batch config {}", self.display()))?;
        for (batch_id, spec) in config.iter() {
            if spec.min_batch_size < DEFAULT_MIN_BATCH_SIZE {
                tracing::warn!(
                    "batch {batch_id:?}: min_batch_size {} is below the privacy-safe default \
                     {DEFAULT_MIN_BATCH_SIZE}; sums of so few reports may reveal a client's value",
                    spec.min_batch_size
                );
            }
        }
        Ok(config)
    }

    fn display(&self) -> String {
        if self.config.trim_start().starts_with('{') {
            "(inline JSON)".into()
        } else {
            PathBuf::from(&self.config).display().to_string()
        }
    }
}

/// How a job is spread: `--workers` threads per process, and optionally
/// several processes (on one or many machines) that find each other
/// through a hostfile.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Worker threads per process.
    #[arg(long, short = 'w', default_value_t = 1, env = "WORKERS")]
    pub workers: usize,
    /// Number of processes in the cluster.
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// This process's index, from 0 to --processes - 1.
    #[arg(long, default_value_t = 0)]
    pub process: usize,
    /// File with one `host:port` per line, in process order. Without it,
    /// processes listen on 127.0.0.1:2101, 2102, ...
    #[arg(long, value_name = "FILE")]
    pub hostfile: Option<PathBuf>,
}

impl ClusterArgs {
    pub fn cluster(&self) -> Cluster {
        Cluster {
            workers: self.workers,
            processes: self.processes,
            process: self.process,
            hostfile: self.hostfile.clone(),
        }
    }
}

/// A flag that takes one of `names`, read by `from_name` (the layers below
/// name their own formats; clap stays up here).
pub fn one_of<T: Clone + Send + Sync + 'static>(
    names: impl IntoIterator<Item = &'static str>,
    from_name: fn(&str) -> Option<T>,
) -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(names)
        .map(move |name| from_name(&name).expect("clap passes only listed names"))
}

/// Parses a fraction between 0 and 1.
pub(crate) fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("expected a fraction between 0 and 1, got {text:?}")),
    }
}

/// Parses a number of seconds, 0 or more.
fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Ok(s),
        _ => Err(format!(
            "expected a number of seconds, 0 or more, got {text:?}"
        )),
    }
}

/// Parses a `YYYY-MM-DD` submission date.
pub(crate) fn parse_date(text: &str) -> Result<chrono::NaiveDate, String> {
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| format!("expected a date as YYYY-MM-DD, got {text:?}"))
}
