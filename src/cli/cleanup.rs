//! `cleanup`: resets a server's private bucket and inbox for a date (or all
//! dates), as the seed's `bin/cleanup` did. Only objects below the configured
//! bucket URLs are touched.

use anyhow::{bail, Context};
use clap::Args;

use super::{exit, parse_date};
use crate::storage::location::Location;

/// Delete a server's data for a date from its private bucket and its inbox.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    prio-processor cleanup --date 2019-06-26 --dry-run   # list what would go\n  \
    prio-processor cleanup --date 2019-06-26\n  \
    prio-processor cleanup --date 2019-06-26 --keep-raw   # rerun without staging again\n  \
    prio-processor cleanup --all                          # every date\n\n\
    By default everything of the date goes: the staged shares (raw/), the messages,\n\
    verification states and anti-replay's nonce history (intermediate/), and the results\n\
    (processed/). --keep-raw keeps raw/. The outbox (BUCKET_EXTERNAL_SHARED) belongs to the\n\
    peer and is never touched. To rerun a date, clean it up on both servers (each inbox holds\n\
    the other's messages), then stage again with the same STAGING_SECRET, or keep raw/ on both.")]
pub struct CleanupArgs {
    /// The date to delete (YYYY-MM-DD).
    #[arg(long, value_parser = parse_date, required_unless_present = "all", conflicts_with = "all")]
    pub date: Option<chrono::NaiveDate>,
    /// Delete every date under the buckets.
    #[arg(long)]
    pub all: bool,
    /// List what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep the staged shares (`DATE/raw/` in the private bucket), so that
    /// a rerun needs no staging.
    #[arg(long)]
    pub keep_raw: bool,
    /// This server's own bucket.
    #[arg(long, env = "BUCKET_INTERNAL_PRIVATE", value_name = "URL")]
    pub bucket_internal_private: String,
    /// This server's inbox.
    #[arg(long, env = "BUCKET_INTERNAL_SHARED", value_name = "URL")]
    pub bucket_internal_shared: String,
}

pub fn run(args: CleanupArgs) -> anyhow::Result<u8> {
    let prefix = match (&args.date, args.all) {
        (Some(date), false) => date.format("%Y-%m-%d").to_string(),
        (None, true) => String::new(),
        _ => bail!("give --date or --all"),
    };
    for (name, url) in [
        ("BUCKET_INTERNAL_PRIVATE", &args.bucket_internal_private),
        ("BUCKET_INTERNAL_SHARED", &args.bucket_internal_shared),
    ] {
        let bucket = Location::parse(url).context(name)?;
        let target = bucket.child(&prefix);
        let mut objects = target.list()?;
        let all = objects.len();
        if args.keep_raw {
            objects.retain(|(object, _)| !is_staged(object, args.all));
        }
        let kept = match all - objects.len() {
            0 => String::new(),
            n => format!(" ({n} staged objects in raw/ kept)"),
        };
        if args.dry_run {
            for (object, size) in &objects {
                println!("would delete {}/{object} ({size} bytes)", target.url());
            }
            println!(
                "{name}: {} objects would be deleted under {}{kept}",
                objects.len(),
                target.url()
            );
            continue;
        }
        let deleted = if args.keep_raw {
            for (object, _) in &objects {
                target.delete(object)?;
            }
            objects.len()
        } else {
            bucket.delete_all(&prefix)?
        };
        println!(
            "{name}: deleted {deleted} objects under {}{kept}",
            target.url()
        );
    }
    Ok(exit::OK)
}

/// Whether an object (relative to the date, or with `all` to the bucket)
/// is a staged share under `DATE/raw/`.
fn is_staged(object: &str, all: bool) -> bool {
    let mut segments = object.split('/');
    if all {
        segments.next();
    }
    segments.next() == Some("raw")
}
