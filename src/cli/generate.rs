//! `generate`: runs the client simulator ([`crate::simulate`]) into a
//! directory, with a progress bar.

use std::path::{Path, PathBuf};

use anyhow::Context;

use chrono::NaiveDate;
use clap::{Args, ValueEnum};
use indicatif::ProgressBar;

use super::progress;

use super::keys::ClientKeyArgs;
use super::{exit, parse_date, parse_rate, ConfigArg};
use crate::simulate::{generate_dump, DumpOptions, Pattern};

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
    /// Directory to write the dump into: empty or new, or with --replace an earlier dump.
    #[arg(long, short, value_name = "DIR")]
    pub output: PathBuf,
    /// Replace the earlier dump in --output (a directory with an expected.json).
    #[arg(long)]
    pub replace: bool,
    #[command(flatten)]
    pub dump: DumpArgs,
}

/// A dump written over another would mix their files and break the known
/// answer: `output` must be empty, or an earlier dump that `replace` removes.
fn prepare_output(output: &Path, replace: bool) -> anyhow::Result<()> {
    let Ok(mut entries) = std::fs::read_dir(output) else {
        return Ok(());
    };
    if entries.next().is_none() {
        return Ok(());
    }
    let shown = output.display();
    anyhow::ensure!(
        replace,
        "{shown} is not empty: a dump written over another mixes their files; choose an empty \
         directory, or pass --replace to replace an earlier dump there"
    );
    anyhow::ensure!(
        output.join("expected.json").is_file(),
        "{shown} is not empty and holds no earlier dump (no expected.json), so --replace leaves \
         it alone: choose an empty directory"
    );
    std::fs::remove_dir_all(output).with_context(|| format!("removing the earlier dump in {shown}"))
}

/// What the simulated clients send.
#[derive(Args, Debug, Clone)]
pub struct DumpArgs {
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
    #[arg(long, value_enum, default_value_t = PatternArg::Seed)]
    pub pattern: PatternArg,
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
pub enum PatternArg {
    Seed,
    Random,
}

impl DumpArgs {
    fn options(&self) -> DumpOptions {
        DumpOptions {
            pings: self.pings,
            date: self.date,
            duplicate_rate: self.duplicate_rate,
            malformed_rate: self.malformed_rate,
            entries_per_batch: self.entries_per_batch,
            pattern: match self.pattern {
                PatternArg::Seed => Pattern::Seed,
                PatternArg::Random => Pattern::Random,
            },
            seed: self.seed,
            unknown_batch_id: self.unknown_batch_id.clone(),
            records_per_file: self.records_per_file,
        }
    }
}

/// The bar shown while pings are encoded.
pub fn encoding_bar(pings: usize) -> ProgressBar {
    progress::bar(
        pings as u64,
        "encoding {bar:40} {pos}/{len} pings, {per_sec}, eta {eta}",
    )
}

pub fn run(args: GenerateArgs) -> anyhow::Result<u8> {
    let config = args.config.load()?;
    let keys = args.keys.load()?;
    prepare_output(&args.output, args.replace)?;
    let bar = encoding_bar(args.dump.pings);
    let expected = generate_dump(&config, &keys, &args.dump.options(), &args.output, &|| {
        bar.inc(1)
    })?;
    bar.finish_and_clear();
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
