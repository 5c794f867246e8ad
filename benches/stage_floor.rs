//! The staging floor: the time to read a sink dump and base64/JSON-decode
//! every ping, down to the binary shares (which any staging job must decode
//! to write them), writing nothing. `scripts/bench-staging` compares `stage`
//! with it. Run: `PRIO_BENCH_DUMP=DIR [PRIO_BENCH_THREADS=N] cargo bench --bench stage_floor`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use prio_processor::dataflow::spread_by_size;
use prio_processor::storage::input::{read_records, InputBytes, InputFormat};
use prio_processor::wire::ping::{decode_base64, parse_ping};

fn ndjson_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("dump directory") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            ndjson_files(&p, out);
        } else if InputFormat::of_path(&p.to_string_lossy()) == Some(InputFormat::Ndjson) {
            out.push(p);
        }
    }
}

/// Reads and decodes the files, returning (pings, entries, bytes read).
fn decode(files: &[PathBuf]) -> (u64, u64, u64) {
    let (mut pings, mut entries, mut bytes) = (0, 0, 0);
    // One buffer for every file, as `stage` does.
    let mut data = Vec::new();
    for f in files {
        data.clear();
        std::fs::File::open(f)
            .and_then(|mut file| file.read_to_end(&mut data))
            .expect("readable file");
        bytes += data.len() as u64;
        read_records(
            &f.to_string_lossy(),
            InputFormat::Ndjson,
            InputBytes::Whole(&mut data),
            |r| {
                if let Ok(ping) = r.and_then(|raw| parse_ping(&raw.body)) {
                    pings += 1;
                    for e in &ping.entries {
                        let shares = (decode_base64(&e.share_a), decode_base64(&e.share_b));
                        entries += u64::from(shares.0.is_some() && shares.1.is_some());
                    }
                }
            },
        )
        .expect("readable dump");
    }
    (pings, entries, bytes)
}

fn main() {
    let Some(dir) = std::env::var_os("PRIO_BENCH_DUMP") else {
        eprintln!("stage_floor: set PRIO_BENCH_DUMP to a sink dump directory (see scripts/bench-staging); skipping");
        return;
    };
    let threads: usize = std::env::var("PRIO_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    let mut files = Vec::new();
    ndjson_files(Path::new(&dir), &mut files);
    files.sort();
    // Files spread over threads as `stage` spreads them over workers.
    let sizes: Vec<u64> = files
        .iter()
        .map(|f| std::fs::metadata(f).expect("dump file").len())
        .collect();
    let readers = spread_by_size(&sizes, threads);
    let started = Instant::now();
    let (pings, entries, bytes) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let mine: Vec<PathBuf> = (0..files.len())
                    .filter(|&i| readers[i] == t)
                    .map(|i| files[i].clone())
                    .collect();
                s.spawn(move || decode(&mine))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("decoder thread"))
            .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
    });
    let secs = started.elapsed().as_secs_f64();
    println!(
        "floor threads={threads} files={} pings={pings} entries={entries} bytes={bytes} seconds={secs:.3} pings_per_s={:.0} mb_per_s={:.1}",
        files.len(),
        pings as f64 / secs,
        bytes as f64 / secs / 1e6
    );
}
