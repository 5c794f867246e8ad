//! `stage`: an ingestion dump becomes per-server, per-batch-id partitions.

use std::path::PathBuf;

use super::metrics::{failed_run, record, stage_metrics, MetricsArg};
use super::progress::{Display, Unit};
use super::{exit, one_of, parse_date, ClusterArgs, ConfigArg};
use crate::dataflow::stage::{run as run_stage, StageCounts, StageJob};
use crate::storage::input::InputFormat;
use crate::storage::location::Location;
use crate::storage::staged::{StagedFormat, StagedLayout};
use crate::wire::report_id::MIN_SECRET_LEN;
use anyhow::{bail, Context};
use clap::Args;

/// Stage an ingestion dump into per-server, per-batch-id partitions.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    # one output for both servers: OUT/submission_date=D/server_id={a,b}/batch_id=X/part-NNNNN.parquet\n  \
    export DATA_CONFIG=data/content.json STAGING_SECRET=...\n  \
    prio-processor stage --date 2019-06-26 --input gs://ingest/prio/ --output gs://staging/prio/\n\n  \
    # straight into each server's private bucket, in the raw/ layout `process` reads\n  \
    prio-processor stage --date 2019-06-26 --input /data/dump/sink \\\n    \
    --output-a s3://server-a-private --output-b gs://server-b-private --workers 4\n\n  \
    # a two-process cluster on one machine (run both):\n  \
    prio-processor stage ... --processes 2 --process 0\n  \
    prio-processor stage ... --processes 2 --process 1\n\n\
    STAGING_SECRET (base64, at least 16 bytes) keys the report ids: keep it, and keep it\n\
    secret; a rerun with the same secret and input writes identical output. DATA_CONFIG is\n\
    the servers' batch config: entries of other batch ids are counted as unknown_batch_id and\n\
    dropped. Batch ids become object names by escaping (batch_id=X, see docs/FORMAT.md).")]
pub struct StageArgs {
    /// Submission date to stage (YYYY-MM-DD).
    #[arg(long, value_parser = parse_date)]
    pub date: chrono::NaiveDate,
    /// Only entries of the configured batch ids are staged (the servers' config).
    #[command(flatten)]
    pub config: ConfigArg,
    /// The dump: a URL or local path holding the sink layout DATE/HOUR/.../*.ndjson[.gz]
    /// or Parquet/Avro exports of the decoded-payload table.
    #[arg(long, value_name = "URL")]
    pub input: String,
    /// Read only files of this format (default: every .ndjson[.gz], .parquet and .avro file).
    #[arg(long, value_parser = one_of(InputFormat::ALL.map(InputFormat::name), InputFormat::from_name))]
    pub input_format: Option<InputFormat>,
    /// Output for both servers.
    #[arg(long, value_name = "URL", required_unless_present_all = ["output_a", "output_b"], conflicts_with_all = ["output_a", "output_b"])]
    pub output: Option<String>,
    /// Server A's private bucket (with --output-b instead of --output).
    #[arg(long, value_name = "URL", requires = "output_b")]
    pub output_a: Option<String>,
    /// Server B's private bucket (with --output-a instead of --output).
    #[arg(long, value_name = "URL", requires = "output_a")]
    pub output_b: Option<String>,
    /// File format of the staged parts.
    #[arg(long, default_value = "parquet",
        value_parser = one_of(StagedFormat::ALL.map(StagedFormat::extension), StagedFormat::of_extension))]
    pub output_format: StagedFormat,
    /// Target size of a part, in share bytes (e.g. 250MB, 64MiB, 1GB).
    #[arg(long, default_value = "250MB", value_parser = parse_size)]
    pub partition_size: u64,
    /// Key for report ids (base64, at least 16 bytes).
    #[arg(long, env = "STAGING_SECRET", hide_env_values = true)]
    pub staging_secret: String,
    /// Count files that cannot be read at all (corrupt Parquet, truncated gzip, a local file
    /// this user may not read, a file deleted since the listing) and go on.
    #[arg(long)]
    pub skip_unreadable: bool,
    /// Mark the date staged (_SUCCESS) even when no report was staged; without it,
    /// such a run fails, since it usually means a wrong --date, input or DATA_CONFIG.
    #[arg(long)]
    pub allow_empty: bool,
    /// Local directory for spill files (default: the system temp dir). Spill
    /// directories that killed runs on this machine left there are removed.
    #[arg(long, value_name = "DIR")]
    pub spill_dir: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub metrics: MetricsArg,
}

/// Parses sizes like `250MB`, `64MiB`, `1GB` or a plain byte count.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("expected a size like 250MB, got {text:?}"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}; use B, KB, MB, GB, KiB, MiB or GiB"
            ))
        }
    };
    let bytes = number * scale;
    if bytes < 1.0 {
        return Err(format!("size must be at least 1 byte, got {text:?}"));
    }
    Ok(bytes as u64)
}

/// Stages the date and writes the metrics file (on process 0), also when
/// staging fails.
pub fn run(args: StageArgs) -> anyhow::Result<u8> {
    let started = std::time::Instant::now();
    let metrics_file = (args.metrics.metrics_file.clone()).filter(|_| args.cluster.process == 0);
    record(
        metrics_file.as_deref(),
        stage_date(args),
        |counts| stage_metrics(counts, started.elapsed()),
        || failed_run("stage", None, started.elapsed()),
    )
    .map(|_| exit::OK)
}

fn stage_date(args: StageArgs) -> anyhow::Result<StageCounts> {
    let secret = crate::wire::ping::decode_base64(&args.staging_secret)
        .filter(|s| s.len() >= MIN_SECRET_LEN)
        .with_context(|| {
            format!("STAGING_SECRET must be base64 of at least {MIN_SECRET_LEN} bytes; make one with `prio-processor shared-seed`")
        })?;
    let date = args.date.format("%Y-%m-%d").to_string();
    let input = Location::parse(&args.input)?;
    let layout = match (&args.output, &args.output_a, &args.output_b) {
        (Some(out), _, _) => StagedLayout::combined(&Location::parse(out)?, &date),
        (None, Some(a), Some(b)) => {
            StagedLayout::per_server(&Location::parse(a)?, &Location::parse(b)?, &date)
        }
        _ => bail!("give --output, or both --output-a and --output-b"),
    };
    let spill_root = args.spill_dir.clone().unwrap_or_else(std::env::temp_dir);
    remove_dead_spills(&spill_root);
    let spill_dir = spill_root.join(format!(
        "{SPILL_PREFIX}{}-{}",
        std::process::id(),
        args.cluster.process
    ));
    let progress = std::sync::Arc::new(Display::new(
        String::new(),
        Unit::Bytes,
        "pings",
        args.cluster.workers,
    ));
    let job = StageJob {
        config: args.config.load()?,
        date: date.clone(),
        input,
        input_format: args.input_format,
        layout: layout.clone(),
        output_format: args.output_format,
        partition_size: args.partition_size,
        secret,
        skip_unreadable: args.skip_unreadable,
        allow_empty: args.allow_empty,
        spill_dir: spill_dir.clone(),
        progress: progress.clone(),
    };
    let started = std::time::Instant::now();
    let result = run_stage(job, &args.cluster.cluster());
    progress.finish();
    // Also after a fault: spill files can be as large as the input.
    let _ = std::fs::remove_dir_all(&spill_dir);
    let counters = result?;
    if args.cluster.process == 0 {
        print_summary(&counters, &layout, started.elapsed());
    }
    Ok(counters)
}

/// A spill directory's name: this prefix, then the staging process's pid.
const SPILL_PREFIX: &str = "prio-processor-stage-";

/// Removes the spill directories of stage runs whose process is gone
/// (killed: a run that ends removes its own), which can be as large as
/// their input. Where there is no `/proc` to tell, nothing is removed.
fn remove_dead_spills(root: &std::path::Path) {
    let alive = |pid: u32| {
        !std::path::Path::new("/proc/self").exists()
            || std::path::Path::new(&format!("/proc/{pid}")).exists()
    };
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(SPILL_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !alive(pid)) && std::fs::remove_dir_all(entry.path()).is_ok() {
            tracing::info!(
                "removed {} (a killed run's spill files)",
                entry.path().display()
            );
        }
    }
}

fn print_summary(c: &StageCounts, layout: &StagedLayout, elapsed: std::time::Duration) {
    println!(
        "staged {} pings from {} files ({} bytes) in {:.1}s; {} duplicates dropped, {} files unreadable",
        c.pings_read,
        c.files_read,
        c.bytes_read,
        elapsed.as_secs_f64(),
        c.duplicates_dropped,
        c.files_unreadable,
    );
    println!("{:<56} {:>10} {:>6}", "batch id", "reports", "parts");
    for (batch_id, counts) in c.batches.iter().filter(|(_, b)| b.parts > 0) {
        println!("{batch_id:<56} {:>10} {:>6}", counts.entries, counts.parts);
    }
    if !c.rejected.is_empty() {
        println!("{:<56} {:>10}", "rejected", "records");
        for (reason, n) in &c.rejected {
            println!("{:<56} {n:>10}", reason.reason());
        }
    }
    for m in layout.markers() {
        println!("output: {}", m.url());
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("250MB"), Ok(250_000_000));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1.5 GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("0").is_err());
    }
}
