//! `report`: the published results of a date, or of a range of dates, as
//! one self-contained HTML page.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::{exit, parse_date};
use crate::storage::location::Location;
use crate::wire::Role;

/// The longest range one page covers.
const MAX_DAYS: i64 = 366;

/// Render the servers' published results as an HTML page.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    prio-processor report --date 2019-06-26 --server-a s3://a-private --server-b gs://b-private\n  \
    prio-processor report --date 2019-06-20 --to 2019-06-26 --server-a data/work/server-a/private \\\n    \
    --output week.html\n\n\
    Each server's bucket is its BUCKET_INTERNAL_PRIVATE; the page reads only what publish wrote\n\
    there (DATE/processed/). Per batch id: the aggregate as bars (the sum over the dates of a\n\
    range) with its largest buckets, every server's counts and rejections by reason, and over a\n\
    range the reports aggregated and rejected per date; then every run's step timings. The page\n\
    has no scripts and loads nothing: open it anywhere.")]
pub struct ReportArgs {
    /// The (first) submission date (YYYY-MM-DD).
    #[arg(long, value_parser = parse_date)]
    pub date: chrono::NaiveDate,
    /// The last date of a range (inclusive); without it, `--date` alone.
    #[arg(long, value_parser = parse_date)]
    pub to: Option<chrono::NaiveDate>,
    /// Server A's private bucket (its BUCKET_INTERNAL_PRIVATE).
    #[arg(long, value_name = "URL", required_unless_present = "server_b")]
    pub server_a: Option<String>,
    /// Server B's private bucket (its BUCKET_INTERNAL_PRIVATE).
    #[arg(long, value_name = "URL")]
    pub server_b: Option<String>,
    /// Where to write the page.
    #[arg(long, default_value = "report.html")]
    pub output: PathBuf,
}

pub fn run(args: ReportArgs) -> anyhow::Result<u8> {
    let last = args.to.unwrap_or(args.date);
    anyhow::ensure!(
        last >= args.date,
        "--to {last} is before --date {}; give the earlier date as --date",
        args.date
    );
    let days = (last - args.date).num_days() + 1;
    anyhow::ensure!(
        days <= MAX_DAYS,
        "the range has {days} dates; one page covers at most {MAX_DAYS}"
    );
    let dates: Vec<String> = args
        .date
        .iter_days()
        .take(days as usize)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .collect();
    let mut servers = Vec::new();
    for (role, url, flag) in [
        (Role::A, &args.server_a, "--server-a"),
        (Role::B, &args.server_b, "--server-b"),
    ] {
        if let Some(url) = url {
            servers.push((role, Location::parse(url).context(flag)?));
        }
    }
    write_report(&servers, &dates, &args.output)?;
    Ok(exit::OK)
}

/// Renders the page and writes it to `output`; `integrate` uses it too.
pub fn write_report(
    servers: &[(Role, Location)],
    dates: &[String],
    output: &std::path::Path,
) -> anyhow::Result<()> {
    let page = crate::report::render(servers, dates)?;
    std::fs::write(output, page).with_context(|| format!("writing {}", output.display()))?;
    println!("report: {}", output.display());
    Ok(())
}
