//! `encode-shares`: encode measurements (one JSON value per line) into pings.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use super::keys::ClientKeyArgs;
use super::{exit, ConfigArg};
use crate::wire::client::encode_entry;
use crate::wire::ping::{build_ping, SinkMessage};
use crate::wire::vdaf::Measurement;

/// Encode measurements into prio pings, one ping per input line.
#[derive(Args, Debug)]
#[command(
    after_help = "Each input line is a JSON array of integers for vector VDAFs\n\
    (prio1, prio2, sumvec, multihotcountvec) or an integer for count, sum and histogram (the bucket).\n\n\
    Example:\n  printf '[1,0,1]\\n[0,0,1]\\n' | prio-processor encode-shares \\\n    \
    --config '{\"demo\": 3}' --batch-id demo --input - --output pings.ndjson"
)]
pub struct EncodeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub keys: ClientKeyArgs,
    /// Batch id (the ping's `encoding`) to encode for; must be in the config.
    #[arg(long)]
    pub batch_id: String,
    /// Measurements, one JSON value per line; `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Where to write; `-` writes stdout.
    #[arg(long, value_name = "FILE", default_value = "-")]
    pub output: PathBuf,
    /// `sink`: the telemetry sink's NDJSON (stageable); `ping`: bare ping JSON per line.
    #[arg(long, value_enum, default_value_t = OutputFormat::Sink)]
    pub format: OutputFormat,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Sink,
    Ping,
}

pub fn run(args: EncodeArgs) -> anyhow::Result<u8> {
    let config = args.config.load()?;
    let keys = args.keys.load()?;
    let Some(batch) = config.get(&args.batch_id) else {
        let known: Vec<_> = config.batch_ids().collect();
        bail!(
            "batch id {:?} is not in the config; known: {}",
            args.batch_id,
            known.join(", ")
        );
    };
    let input: Box<dyn BufRead> = if args.input.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&args.input)
                .with_context(|| format!("opening {}", args.input.display()))?,
        ))
    };
    let mut output: Box<dyn Write> = if args.output.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(&args.output)
                .with_context(|| format!("creating {}", args.output.display()))?,
        ))
    };
    let mut count = 0u64;
    for (n, line) in input.lines().enumerate() {
        let line = line.context("reading measurements")?;
        if line.trim().is_empty() {
            continue;
        }
        let measurement: Measurement = serde_json::from_str(&line)
            .with_context(|| format!("line {}: not an integer or an array of integers", n + 1))?;
        let entry = encode_entry(&batch.vdaf, &args.batch_id, &measurement, &keys)
            .with_context(|| format!("line {}", n + 1))?;
        let id = uuid::Uuid::new_v4().to_string();
        let now = chrono::Utc::now();
        let ping = build_ping(
            &id,
            &now.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            &[entry],
        );
        let ping = serde_json::to_vec(&ping)?;
        match args.format {
            OutputFormat::Ping => output.write_all(&ping)?,
            OutputFormat::Sink => {
                let ts = now.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
                serde_json::to_writer(&mut output, &SinkMessage::wrap(&ping, &id, &ts))?
            }
        }
        output.write_all(b"\n")?;
        count += 1;
    }
    output.flush()?;
    eprintln!("encoded {count} measurements for {}", args.batch_id);
    Ok(exit::OK)
}
