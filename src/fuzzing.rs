//! One entry point per decoder of outside bytes, for the fuzz targets in
//! `fuzz/` and for `tests/fuzz_regressions.rs`, which replays every input
//! the fuzzers kept (`fuzz/regressions/TARGET/`) in `cargo test`. Each takes
//! arbitrary bytes; errors are the expected outcome, a panic or an
//! unbounded allocation is a bug. Where a decoder needs a context (keys, a
//! batch, a verification state), the first byte of the input picks one of a
//! fixed set, so one target covers every VDAF.

use std::sync::OnceLock;

use bytes::Bytes;

use crate::storage::input::{read_records, InputBytes, InputFormat};
use crate::storage::location::Location;
use crate::storage::messages::{decode_message, AggregateMessage, HelloMessage};
use crate::storage::published::decode_published;
use crate::storage::staged::{decode_staged, StagedFormat};
use crate::wire::client::{encode_entry, ServerPublicKeys};
use crate::wire::config::BatchConfig;
use crate::wire::envelope::{self, derive_keypair, KeySet};
use crate::wire::ping::{decode_base64, parse_ping, parse_sink_line};
use crate::wire::server::{open_and_verify_init, ServerSecrets};
use crate::wire::vdaf::{Measurement, Vdaf, VerifyState};
use crate::wire::Role;

/// A decoder's entry point: takes any bytes, must not panic.
pub type Target = fn(&[u8]);

/// Every target, by the name its fuzz target in `fuzz/` has.
pub const TARGETS: [(&str, Target); 8] = [
    ("sink_line", sink_line),
    ("ping", ping),
    ("batch_config", batch_config),
    ("envelope", share_envelope),
    ("report_share", report_share),
    ("peer_message", peer_message),
    ("staged_part", staged_part),
    ("input_file", input_file),
];

/// Runs target `name` on `data`. The first call puts back Rust's default
/// panic hook: libFuzzer's aborts on every panic, even one that
/// [`crate::storage::contain_decoder_panic`] catches (a third-party decoder's
/// bug, which the caller already turns into an error); a panic nobody
/// catches still reaches libFuzzer.
pub fn run(name: &str, data: &[u8]) {
    static DEFAULT_HOOK: std::sync::Once = std::sync::Once::new();
    DEFAULT_HOOK.call_once(|| drop(std::panic::take_hook()));
    let (_, target) = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target {name:?}"));
    target(data)
}

/// A line of the telemetry sink's NDJSON.
pub fn sink_line(data: &[u8]) {
    let _ = parse_sink_line(data);
}

/// A prio ping's JSON.
pub fn ping(data: &[u8]) {
    let _ = parse_ping(data);
}

/// `DATA_CONFIG`, and every VDAF it builds asked for its share sizes (what
/// `stage` bounds shares with).
pub fn batch_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = BatchConfig::from_json(text) {
        for (batch_id, spec) in config.iter() {
            let _ = spec.vdaf.report_share_lens(batch_id);
        }
    }
}

/// A share as it comes out of a ping entry's base64: an envelope (or a
/// libprio packet) opened by server A.
pub fn share_envelope(data: &[u8]) {
    let (selector, rest) = split(data);
    let fixture = fixture();
    let (batch_id, vdaf) = fixture.batch(selector);
    let _ = open_and_verify_init(vdaf, &fixture.secrets[0], batch_id, rest);
    let _ = envelope::open(&fixture.secrets[0].private_keys, Role::A, batch_id, rest);
}

/// What is inside a share that opens: the plaintext, sealed here for
/// server A, so that the report share decoder and `verify_init` of every
/// VDAF (prio1's packet decoder among them) see the fuzzer's bytes.
pub fn report_share(data: &[u8]) {
    let (selector, rest) = split(data);
    let fixture = fixture();
    let (batch_id, vdaf) = fixture.batch(selector);
    let sealed = match vdaf.prio1() {
        Some(_) => crate::wire::prio1::seal::seal(&fixture.public.a.x25519(), rest),
        None => match envelope::seal(&fixture.public.a, Role::A, batch_id, rest) {
            Ok(sealed) => sealed,
            Err(_) => return,
        },
    };
    let _ = open_and_verify_init(vdaf, &fixture.secrets[0], batch_id, &sealed);
}

/// What the peer writes: each step's message rows, the aggregate message,
/// the hello, a published result; and, for a batch of each VDAF, a
/// verifier share finishing a real report's verification, a stored state,
/// and an aggregate share summed and unsharded.
pub fn peer_message(data: &[u8]) {
    let (kind, rest) = split(data);
    let fixture = fixture();
    match kind % 6 {
        0 => {
            let _ = decode_message("fuzz", Bytes::copy_from_slice(rest));
        }
        1 => {
            let _ = AggregateMessage::decode("fuzz", rest);
        }
        2 => {
            let _ = HelloMessage::decode("fuzz", rest);
        }
        3 => {
            let _ = decode_published("fuzz", rest);
        }
        _ => {
            let (selector, rest) = split(rest);
            let index = selector as usize % fixture.states.len();
            let (batch_id, vdaf) = fixture.batch(index as u8);
            if kind % 6 == 4 {
                let _ = vdaf.verify_finish(batch_id, Role::A, &fixture.states[index], rest);
                let _ = vdaf.decode_state(Role::A, rest);
            } else if let Ok(share) = vdaf.decode_aggregate(rest) {
                let mut sum = vdaf.aggregate_init();
                if vdaf.merge(&mut sum, &share).is_ok() {
                    let _ = vdaf.unshard(&sum, &share, usize::MAX);
                }
                let _ = vdaf.unshard(&share, &share, 1);
            }
        }
    }
}

/// A staged part, in either format.
pub fn staged_part(data: &[u8]) {
    let (selector, rest) = split(data);
    let format = StagedFormat::ALL[selector as usize % StagedFormat::ALL.len()];
    let _ = decode_staged("fuzz", format, Bytes::copy_from_slice(rest), Role::A);
}

/// An input file of `stage`, in each format (NDJSON possibly gzipped), read
/// whole or, as `stage` reads it, in ranges from a store (the selector's
/// quotient by the number of formats picks which).
pub fn input_file(data: &[u8]) {
    let (selector, rest) = split(data);
    let formats = InputFormat::ALL.len();
    let format = InputFormat::ALL[selector as usize % formats];
    let each = |record: Result<crate::storage::input::RawPing, _>| {
        if let Ok(record) = record {
            let _ = parse_ping(&record.body);
        }
    };
    if (selector as usize / formats).is_multiple_of(2) {
        let mut buffer = rest.to_vec();
        let _ = read_records("fuzz", format, InputBytes::Whole(&mut buffer), each);
        return;
    }
    let store = Location::parse("memory://").expect("an in-memory store");
    store
        .put("input", Bytes::copy_from_slice(rest))
        .expect("an in-memory put");
    let ranges = store.ranges("input", rest.len() as u64);
    let _ = read_records("fuzz", format, InputBytes::Ranges(ranges), each);
}

fn split(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&first, rest)) => (first, rest),
        None => (0, &[]),
    }
}

/// Keys, a batch of every VDAF, and for each batch server A's state of one
/// valid report (for the peer's verifier shares to finish).
struct Fixture {
    config: Vec<(String, Vdaf)>,
    secrets: [ServerSecrets; 2],
    public: ServerPublicKeys,
    states: Vec<VerifyState>,
}

impl Fixture {
    fn batch(&self, selector: u8) -> (&str, &Vdaf) {
        let (batch_id, vdaf) = &self.config[selector as usize % self.config.len()];
        (batch_id, vdaf)
    }
}

/// Small parameters of every VDAF, so that valid inputs are short.
const FIXTURE_CONFIG: &str = r#"{
    "prio1": 5,
    "prio1-later": {"vdaf": "prio1", "length": 3, "prg_key": "seed_and_batch_id"},
    "prio2": {"vdaf": "prio2", "length": 5},
    "count": {"vdaf": "count"},
    "sum": {"vdaf": "sum", "bits": 8},
    "sumvec": {"vdaf": "sumvec", "length": 3, "bits": 64},
    "histogram": {"vdaf": "histogram", "length": 4},
    "multihot": {"vdaf": "multihotcountvec", "length": 4, "max_weight": 2}
}"#;

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let config = BatchConfig::from_json(FIXTURE_CONFIG).expect("the fixture's config");
        let keys = [b"fuzz server a", b"fuzz server b"].map(|ikm| derive_keypair(ikm));
        let public = ServerPublicKeys {
            a: keys[0].public_key(),
            b: keys[1].public_key(),
        };
        let verify_key = [7; 32];
        let secrets = [(Role::A, &keys[0]), (Role::B, &keys[1])].map(|(role, key)| ServerSecrets {
            role,
            private_keys: KeySet::new(vec![key.clone()]).expect("one key"),
            verify_key,
        });
        let config: Vec<(String, Vdaf)> = config
            .iter()
            .map(|(id, spec)| (id.to_string(), spec.vdaf.clone()))
            .collect();
        let states = config
            .iter()
            .map(|(batch_id, vdaf)| {
                let zero: Measurement = vdaf.spec().zero_measurement();
                let entry = encode_entry(vdaf, batch_id, &zero, &public).expect("a report");
                let share = decode_base64(&entry.share_a).expect("base64");
                open_and_verify_init(vdaf, &secrets[0], batch_id, &share)
                    .expect("a valid report opens")
                    .state
            })
            .collect();
        Fixture {
            config,
            secrets,
            public,
            states,
        }
    })
}
