//! The "crypto limit": per-report client encode cost and per-server open +
//! verify cost for the configurations the pipeline benchmarks compare with.
//!
//! `cargo bench --bench crypto` (add `-- --quick` for a fast pass).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use prio_processor::wire::client::{encode_entry, ServerPublicKeys};
use prio_processor::wire::config::BatchConfig;
use prio_processor::wire::envelope::{generate_keypair, open};
use prio_processor::wire::ping::decode_base64;
use prio_processor::wire::server::{open_and_verify_init, ServerSecrets};
use prio_processor::wire::vdaf::Measurement;
use prio_processor::wire::Role;

const CONFIGS: &[(&str, &str)] = &[
    ("prio2-441", "441"),
    ("prio2-2046", "2046"),
    (
        "sumvec-2046",
        r#"{"vdaf": "sumvec", "length": 2046, "bits": 1}"#,
    ),
    ("count", r#"{"vdaf": "count"}"#),
];

fn seed_measurement(len: usize, vector: bool) -> Measurement {
    if vector {
        Measurement::Vector(
            (0..len as u64)
                .map(|i| u64::from(i % 3 == 0 || i % 5 == 0))
                .collect(),
        )
    } else {
        Measurement::Scalar(1)
    }
}

fn crypto(c: &mut Criterion) {
    let (key_a, key_b) = (generate_keypair(), generate_keypair());
    let verify_key = rand::random();
    let public = ServerPublicKeys {
        a: key_a.public_key(),
        b: key_b.public_key(),
    };
    let secrets = [
        ServerSecrets {
            role: Role::A,
            private_keys: key_a.clone().into(),
            verify_key,
        },
        ServerSecrets {
            role: Role::B,
            private_keys: key_b.clone().into(),
            verify_key,
        },
    ];
    for (name, spec) in CONFIGS {
        let config = BatchConfig::from_json(&format!(r#"{{"{name}": {spec}}}"#)).unwrap();
        let batch = config.get(name).unwrap();
        let vdaf = &batch.vdaf;
        let len = batch.spec().output_len();
        let m = seed_measurement(
            len,
            !matches!(batch.spec(), prio_processor::wire::vdaf::VdafSpec::Count),
        );
        let mut group = c.benchmark_group(*name);
        group.bench_function("client_encode", |b| {
            b.iter(|| encode_entry(vdaf, name, black_box(&m), &public).unwrap())
        });
        let entry = encode_entry(vdaf, name, &m, &public).unwrap();
        let envelopes = [&entry.share_a, &entry.share_b].map(|s| decode_base64(s).unwrap());
        let peer_shares = [1, 0].map(|i| {
            open_and_verify_init(vdaf, &secrets[i], name, &envelopes[i])
                .unwrap()
                .verifier_share
        });
        for role in Role::BOTH {
            let i = role.agg_id();
            group.bench_function(format!("server_{role}_hpke_open"), |b| {
                b.iter(|| {
                    open(
                        &secrets[i].private_keys,
                        role,
                        name,
                        black_box(&envelopes[i]),
                    )
                    .unwrap()
                })
            });
            group.bench_function(format!("server_{role}_open_verify"), |b| {
                b.iter(|| {
                    let init =
                        open_and_verify_init(vdaf, &secrets[i], name, black_box(&envelopes[i]))
                            .unwrap();
                    vdaf.verify_finish(name, role, &init.state, &peer_shares[i])
                        .unwrap()
                })
            });
        }
        group.finish();
    }
}

/// Prio v1 (libprio's format) at Firefox's length: the client, and each
/// server's open (decrypt, decode, B's PRG expansion) and evaluation at the
/// check point, with the batch's check computed once as the pipeline does.
fn prio1(c: &mut Criterion) {
    use prio_processor::wire::prio1::{is_valid, PrgKey, Prio1};
    use x25519_dalek::{PublicKey, StaticSecret};
    let secrets = [(); 2].map(|_| StaticSecret::from(rand::random::<[u8; 32]>()));
    let public = [PublicKey::from(&secrets[0]), PublicKey::from(&secrets[1])];
    let prio = Prio1::new(2046, PrgKey::Seed).unwrap();
    let bits: Vec<bool> = (0..2046).map(|i| i % 3 == 0 || i % 5 == 0).collect();
    let batch = b"content.blocking_blocked_TESTONLY-0";
    let checker = prio.checker(&rand::random(), batch);
    let mut group = c.benchmark_group("prio1-2046");
    group.bench_function("client_encode", |b| {
        b.iter(|| {
            prio.seal(batch, black_box(&bits), [&public[0], &public[1]])
                .unwrap()
        })
    });
    let sealed = prio.seal(batch, &bits, [&public[0], &public[1]]).unwrap();
    let opened = Role::BOTH.map(|role| {
        let i = role.agg_id();
        checker.open(role, &secrets[i..=i], &sealed[i]).unwrap()
    });
    assert!(is_valid(&opened[0].share, &opened[1].share));
    for role in Role::BOTH {
        let i = role.agg_id();
        group.bench_function(format!("server_{role}_open_verify"), |b| {
            b.iter(|| {
                let own = checker
                    .open(role, &secrets[i..=i], black_box(&sealed[i]))
                    .unwrap();
                is_valid(&own.share, &opened[1 - i].share)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, crypto, prio1);
criterion_main!(benches);
