//! The bare crypto cost of one server's work on staged reports: open +
//! verify_init + verify_finish per report, single thread, nothing else.
//! `scripts/bench-process` compares the pipeline with it. Environment:
//! PRIO_BENCH_RAW_A / PRIO_BENCH_RAW_B (the servers' `DATE/raw` dirs),
//! PRIO_BENCH_KEY_A / PRIO_BENCH_KEY_B (private keys, hex), SHARED_SECRET,
//! DATA_CONFIG (inline JSON).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::Engine;
use prio_processor::storage::staged::decode_staged;
use prio_processor::storage::staged::StagedFormat;
use prio_processor::wire::config::BatchConfig;
use prio_processor::wire::envelope::KeySet;
use prio_processor::wire::server::{open_and_verify_init, ServerSecrets};
use prio_processor::wire::Role;

fn parts(raw: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(raw).expect("raw dir") {
        let dir = dir.expect("entry").path();
        let Some(batch) = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("batch_id="))
        else {
            continue;
        };
        for f in std::fs::read_dir(&dir).expect("batch dir") {
            out.push((batch.to_string(), f.expect("entry").path()));
        }
    }
    out.sort();
    out
}

fn main() {
    let Ok(raw_a) = std::env::var("PRIO_BENCH_RAW_A") else {
        eprintln!(
            "process_floor: set PRIO_BENCH_RAW_A and friends (see scripts/bench-process); skipping"
        );
        return;
    };
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is required"));
    let config = BatchConfig::from_json(&env("DATA_CONFIG")).expect("config");
    let verify_key: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(env("SHARED_SECRET"))
        .expect("base64")
        .try_into()
        .expect("32 bytes");
    let secrets =
        [("PRIO_BENCH_KEY_A", Role::A), ("PRIO_BENCH_KEY_B", Role::B)].map(|(k, role)| {
            ServerSecrets {
                role,
                private_keys: KeySet::from_hex_list(&env(k)).expect("key"),
                verify_key,
            }
        });
    let read = |raw: &str, role: Role| -> Vec<(String, String, bytes::Bytes)> {
        parts(Path::new(raw))
            .into_iter()
            .flat_map(|(batch, path)| {
                decode_staged(
                    "part",
                    StagedFormat::Parquet,
                    std::fs::read(&path).expect("part").into(),
                    role,
                )
                .expect("part")
                .into_iter()
                .map(move |r| (batch.clone(), r.id, r.payload))
            })
            .collect()
    };
    let (reports_a, reports_b) = (
        read(&raw_a, Role::A),
        read(&env("PRIO_BENCH_RAW_B"), Role::B),
    );
    // Server b's verifier shares, untimed: server a receives them from its peer.
    let peer: HashMap<String, Vec<u8>> = reports_b
        .iter()
        .filter_map(|(batch, id, payload)| {
            let vdaf = &config.get(batch)?.vdaf;
            Some((
                id.clone(),
                open_and_verify_init(vdaf, &secrets[1], batch, payload)
                    .ok()?
                    .verifier_share,
            ))
        })
        .collect();
    let started = Instant::now();
    let mut verified = 0u64;
    for (batch, id, payload) in &reports_a {
        let Some(spec) = config.get(batch) else {
            continue;
        };
        let Ok(init) = open_and_verify_init(&spec.vdaf, &secrets[0], batch, payload) else {
            continue;
        };
        if let Some(share) = peer.get(id) {
            if spec
                .vdaf
                .verify_finish(batch, Role::A, &init.state, share)
                .is_ok()
            {
                verified += 1;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "floor reports={verified} seconds={secs:.3} reports_per_s={:.0}",
        verified as f64 / secs
    );
}
