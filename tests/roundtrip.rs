//! Every VDAF end to end through the public API: client encode -> both
//! servers open and verify -> aggregate -> unshard, compared with a plain
//! integer sum computed here, independently of the code under test.

use prio_processor::wire::client::{encode_entry, ServerPublicKeys};
use prio_processor::wire::config::BatchConfig;
use prio_processor::wire::envelope::{generate_keypair, seal};
use prio_processor::wire::ping::decode_base64;
use prio_processor::wire::server::{verify_locally, ServerSecrets};
use prio_processor::wire::vdaf::{Measurement, Vdaf};
use prio_processor::wire::{Rejection, Role};
use rand::rngs::ChaCha20Rng;
use rand::{RngExt, SeedableRng};

const CONFIG: &str = r#"{
    "prio2": {"vdaf": "prio2", "length": 441},
    "count": {"vdaf": "count"},
    "sum": {"vdaf": "sum", "max_measurement": 1000},
    "sumvec": {"vdaf": "sumvec", "length": 50, "bits": 3},
    "histogram": {"vdaf": "histogram", "length": 12},
    "multihot": {"vdaf": "multihotcountvec", "length": 30, "max_weight": 5}
}"#;

struct Servers {
    secrets: [ServerSecrets; 2],
    public: ServerPublicKeys,
}

fn servers() -> Servers {
    let (a, b) = (generate_keypair(), generate_keypair());
    let verify_key = rand::random();
    Servers {
        public: ServerPublicKeys {
            a: a.public_key(),
            b: b.public_key(),
        },
        secrets: [
            ServerSecrets {
                role: Role::A,
                private_keys: a.into(),
                verify_key,
            },
            ServerSecrets {
                role: Role::B,
                private_keys: b.into(),
                verify_key,
            },
        ],
    }
}

/// A random valid measurement and its plain contribution to the total.
fn random_measurement(batch_id: &str, rng: &mut ChaCha20Rng) -> (Measurement, Vec<u128>) {
    match batch_id {
        "prio2" | "prio1" | "prio1-later" => bits(441, 441, rng),
        "count" => {
            let x = rng.random_range(0..=1u64);
            (Measurement::Scalar(x), vec![x.into()])
        }
        "sum" => {
            let x = rng.random_range(0..=1000u64);
            (Measurement::Scalar(x), vec![x.into()])
        }
        "sumvec" => {
            let v: Vec<u64> = (0..50).map(|_| rng.random_range(0..=7)).collect();
            let total = v.iter().map(|&x| u128::from(x)).collect();
            (Measurement::Vector(v), total)
        }
        "histogram" => {
            let bucket = rng.random_range(0..12usize);
            let mut total = vec![0u128; 12];
            total[bucket] = 1;
            (Measurement::Scalar(bucket as u64), total)
        }
        "multihot" => bits(30, 5, rng),
        other => panic!("no generator for {other}"),
    }
}

fn bits(len: usize, max_weight: usize, rng: &mut ChaCha20Rng) -> (Measurement, Vec<u128>) {
    let mut v = vec![0u64; len];
    let weight = rng.random_range(0..=max_weight);
    for i in rand::seq::index::sample(rng, len, weight) {
        v[i] = 1;
    }
    let total = v.iter().map(|&x| u128::from(x)).collect();
    (Measurement::Vector(v), total)
}

fn envelopes(entry: &prio_processor::wire::ping::PrioEntry) -> [Vec<u8>; 2] {
    [&entry.share_a, &entry.share_b].map(|s| decode_base64(s).expect("client writes base64"))
}

#[test]
fn every_vdaf_aggregates_to_the_plain_sum() {
    // The envelope VDAFs, and prio1 of both generations (a bare length is prio1).
    let mut all: serde_json::Map<String, serde_json::Value> = serde_json::from_str(CONFIG).unwrap();
    all.insert("prio1".into(), serde_json::json!(441));
    all.insert(
        "prio1-later".into(),
        serde_json::json!({"vdaf": "prio1", "length": 441, "prg_key": "seed_and_batch_id"}),
    );
    let config = BatchConfig::from_json(&serde_json::Value::Object(all).to_string()).unwrap();
    let servers = servers();
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    for (batch_id, spec) in config.iter() {
        let vdaf = &spec.vdaf;
        let mut want = vec![0u128; spec.spec().output_len()];
        let mut aggregates = [vdaf.aggregate_init(), vdaf.aggregate_init()];
        let reports = 25;
        for _ in 0..reports {
            let (m, contribution) = random_measurement(batch_id, &mut rng);
            for (w, c) in want.iter_mut().zip(contribution) {
                *w += c;
            }
            let entry = encode_entry(vdaf, batch_id, &m, &servers.public).unwrap();
            let [a, b] = envelopes(&entry);
            let outs = verify_locally(vdaf, &servers.secrets, batch_id, [&a, &b])
                .unwrap_or_else(|r| panic!("{batch_id}: valid report rejected: {r}"));
            for (agg, out) in aggregates.iter_mut().zip(&outs) {
                vdaf.accumulate(agg, out).unwrap();
            }
        }
        // Aggregate shares travel between servers as bytes.
        let [a, b] =
            aggregates.map(|agg| vdaf.decode_aggregate(&vdaf.encode_aggregate(&agg)).unwrap());
        let got = vdaf.unshard(&a, &b, reports).unwrap();
        assert_eq!(got, want, "{batch_id}");
    }
}

#[test]
fn merged_partial_aggregates_equal_one_aggregate() {
    let config =
        BatchConfig::from_json(r#"{"v": {"vdaf": "sumvec", "length": 8, "bits": 2}}"#).unwrap();
    let vdaf = &config.get("v").unwrap().vdaf;
    let servers = servers();
    let mut parts = [vdaf.aggregate_init(), vdaf.aggregate_init()];
    let mut whole = vdaf.aggregate_init();
    let mut others = vdaf.aggregate_init();
    for i in 0..6u64 {
        let m = Measurement::Vector((0..8).map(|j| (i + j) % 4).collect());
        let entry = encode_entry(vdaf, "v", &m, &servers.public).unwrap();
        let [a, b] = envelopes(&entry);
        let [out_a, out_b] = verify_locally(vdaf, &servers.secrets, "v", [&a, &b]).unwrap();
        vdaf.accumulate(&mut parts[(i % 2) as usize], &out_a)
            .unwrap();
        vdaf.accumulate(&mut whole, &out_a).unwrap();
        vdaf.accumulate(&mut others, &out_b).unwrap();
    }
    let [mut merged, second] = parts;
    vdaf.merge(&mut merged, &second).unwrap();
    assert_eq!(
        vdaf.encode_aggregate(&merged),
        vdaf.encode_aggregate(&whole)
    );
    let want: Vec<u128> = (0..8u64)
        .map(|j| (0..6u64).map(|i| u128::from((i + j) % 4)).sum())
        .collect();
    assert_eq!(vdaf.unshard(&merged, &others, 6).unwrap(), want);
}

/// Flips the lowest bit of the first byte of a leader input share: still a
/// well-formed field element, but no longer a share of a valid proof.
#[test]
fn tampered_input_share_is_rejected_as_invalid_proof() {
    let config = BatchConfig::from_json(CONFIG).unwrap();
    let servers = servers();
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    for (batch_id, spec) in config.iter() {
        let (m, _) = random_measurement(batch_id, &mut rng);
        let [mut share_a, share_b] = spec.vdaf.shard(batch_id, &m, &rand::random()).unwrap();
        share_a.input_share[0] ^= 1;
        let seal_for = |role: Role, plain: Vec<u8>| {
            seal(servers.public.get(role), role, batch_id, &plain).unwrap()
        };
        let a = seal_for(Role::A, share_a.encode());
        let b = seal_for(Role::B, share_b.encode());
        let result = verify_locally(&spec.vdaf, &servers.secrets, batch_id, [&a, &b]);
        assert_eq!(result.err(), Some(Rejection::InvalidProof), "{batch_id}");
    }
}

#[test]
fn out_of_range_measurement_from_a_cheating_client_is_rejected() {
    use prio::codec::Encode;
    use prio::vdaf::Client;
    let config = BatchConfig::from_json(r#"{"p": {"vdaf": "prio2", "length": 16}}"#).unwrap();
    let vdaf: &Vdaf = &config.get("p").unwrap().vdaf;
    let servers = servers();
    // Our client refuses a 2 in a bit vector; prio's Prio2 shards it anyway.
    let mut cheat = vec![0u32; 16];
    cheat[3] = 2;
    assert!(vdaf
        .shard(
            "p",
            &Measurement::Vector(cheat.iter().map(|&x| x.into()).collect()),
            &[0; 16]
        )
        .is_err());
    let nonce: [u8; 16] = rand::random();
    let (_, inputs) = prio::vdaf::prio2::Prio2::new(16)
        .unwrap()
        .shard(b"", &cheat, &nonce)
        .unwrap();
    let sealed: Vec<Vec<u8>> = Role::BOTH
        .iter()
        .map(|&role| {
            let share = prio_processor::wire::vdaf::ReportShare {
                nonce,
                public_share: vec![],
                input_share: inputs[role.agg_id()].get_encoded().unwrap(),
            };
            seal(servers.public.get(role), role, "p", &share.encode()).unwrap()
        })
        .collect();
    let result = verify_locally(vdaf, &servers.secrets, "p", [&sealed[0], &sealed[1]]);
    assert_eq!(result.err(), Some(Rejection::InvalidProof));
}

#[test]
fn truncated_and_wrong_length_shares_are_undecodable() {
    let config = BatchConfig::from_json(CONFIG).unwrap();
    let servers = servers();
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    for (batch_id, spec) in config.iter() {
        let (m, _) = random_measurement(batch_id, &mut rng);
        let [share_a, share_b] = spec.vdaf.shard(batch_id, &m, &rand::random()).unwrap();
        let b = seal(&servers.public.b, Role::B, batch_id, &share_b.encode()).unwrap();
        let mut short = share_a.encode();
        short.pop();
        let mut long = share_a.encode();
        long.push(0);
        for plain in [short, long, share_a.encode()[..10].to_vec()] {
            let a = seal(&servers.public.a, Role::A, batch_id, &plain).unwrap();
            let result = verify_locally(&spec.vdaf, &servers.secrets, batch_id, [&a, &b]);
            assert_eq!(result.err(), Some(Rejection::Undecodable), "{batch_id}");
        }
    }
}

#[test]
fn a_share_for_one_batch_is_refused_in_another() {
    // Our envelope names the server; a libprio packet is sealed to its key alone.
    for (spec, swapped) in [
        (r#"{"vdaf": "prio2", "length": 8}"#, Rejection::WrongBinding),
        ("8", Rejection::Undecryptable),
    ] {
        let config = BatchConfig::from_json(&format!(r#"{{"x": {spec}, "y": {spec}}}"#)).unwrap();
        let vdaf = &config.get("x").unwrap().vdaf;
        let servers = servers();
        let entry =
            encode_entry(vdaf, "x", &Measurement::Vector(vec![1; 8]), &servers.public).unwrap();
        let [a, b] = envelopes(&entry);
        let result = verify_locally(vdaf, &servers.secrets, "y", [&a, &b]);
        assert_eq!(result.err(), Some(Rejection::WrongBinding), "{spec}");
        let result = verify_locally(vdaf, &servers.secrets, "x", [&b, &a]);
        assert_eq!(result.err(), Some(swapped), "{spec}");
    }
}

/// The real Firefox 69 ping carries libprio v1 ciphertexts sealed to
/// Mozilla's old keys: under a prio1 config every share is counted as
/// undecryptable (not undecodable or misbound), nothing panics; under a
/// Prio2 config, the same.
#[test]
fn firefox_69_shares_are_undecryptable() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/fixtures/fx-69.0a1.json");
    let ping = prio_processor::wire::ping::parse_ping(&std::fs::read(path).unwrap()).unwrap();
    let servers = servers();
    for config in [
        r#"{"content.blocking_blocked_TESTONLY-0": {"vdaf": "prio1", "length": 2046}, "content.blocking_blocked_TESTONLY-1": {"vdaf": "prio1", "length": 441}}"#,
        r#"{"content.blocking_blocked_TESTONLY-0": {"vdaf": "prio2", "length": 2046}, "content.blocking_blocked_TESTONLY-1": {"vdaf": "prio2", "length": 441}}"#,
    ] {
        let config = BatchConfig::from_json(config).unwrap();
        for entry in &ping.entries {
            let vdaf = &config.get(&entry.batch_id).unwrap().vdaf;
            let [a, b] = envelopes(entry);
            let result = verify_locally(vdaf, &servers.secrets, &entry.batch_id, [&a, &b]);
            assert_eq!(result.err(), Some(Rejection::Undecryptable));
        }
    }
}

/// The Firefox packets have the layout of ours, byte for byte in length:
/// server B's is the batch id (msgpack str8), six 11-byte elements, the
/// server id and the 16-byte seed; server A's has 2046 data shares and
/// 2048 h points (array16 headers), each element 11 bytes unless its top
/// byte is zero (1 in 128), all sealed with 60 bytes of overhead.
#[test]
fn firefox_69_packets_have_the_length_of_prio1_packets() {
    use prio_processor::wire::prio1::field::Fp;
    use prio_processor::wire::prio1::packet::{Packet, Shares, Triple};
    use prio_processor::wire::prio1::seal::OVERHEAD;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/fixtures/fx-69.0a1.json");
    let ping = prio_processor::wire::ping::parse_ping(&std::fs::read(path).unwrap()).unwrap();
    let long = Fp::new(1 << 86).unwrap();
    for entry in &ping.entries {
        let length = if entry.batch_id.ends_with("-0") {
            2046
        } else {
            441
        };
        let points = (length + 1usize).next_power_of_two();
        let packet = |shares| Packet {
            batch_id: entry.batch_id.as_bytes().to_vec(),
            triple: Triple {
                a: long,
                b: long,
                c: long,
            },
            f0: long,
            g0: long,
            h0: long,
            shares,
        };
        let [a, b] = envelopes(entry);
        let b_len = packet(Shares::B { seed: [0; 16] }).encode().len();
        assert_eq!(b.len(), OVERHEAD + b_len, "{}", entry.batch_id);
        let a_max = packet(Shares::A {
            data: vec![long; length],
            h_points: vec![long; points],
        })
        .encode()
        .len();
        // About 32 (of 4100) elements are a byte shorter; 200 would be a 10-sigma event.
        assert!(
            (OVERHEAD + a_max - 200..=OVERHEAD + a_max).contains(&a.len()),
            "{}: {} of at most {}",
            entry.batch_id,
            a.len(),
            OVERHEAD + a_max
        );
    }
}
