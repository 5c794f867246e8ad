//! Committed test vectors (`data/vectors/*.json`): fixed keys, fixed
//! randomness, expected bytes for every VDAF, and negative cases with the
//! expected rejection. `PRIO_REGENERATE_VECTORS=1 cargo test --test vectors`
//! rewrites them (only do that for a deliberate format change).

use std::path::PathBuf;

use prio::codec::Encode;
use prio::vdaf::prio3::{Prio3Count, Prio3Histogram, Prio3MultihotCountVec, Prio3Sum, Prio3SumVec};
use prio::vdaf::test_utils::TestVectorClient;
use prio_processor::wire::config::BatchConfig;
use prio_processor::wire::envelope::{
    derive_keypair, generate_keypair, open, seal_with_rng, KeySet,
};
use prio_processor::wire::ping::{decode_base64, encode_base64};
use prio_processor::wire::server::{open_and_verify_init, verify_locally, ServerSecrets};
use prio_processor::wire::vdaf::{context, Measurement, ReportShare, Vdaf, VdafSpec};
use prio_processor::wire::Role;
use rand::rngs::ChaCha20Rng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct VectorFile {
    description: String,
    batch_id: String,
    /// The batch spec, as it appears in a `DATA_CONFIG`.
    spec: serde_json::Value,
    /// RFC 9180 DeriveKeyPair input keying material per server (hex).
    ikm_a: String,
    ikm_b: String,
    public_key_a: String,
    public_key_b: String,
    verify_key: String,
    reports: Vec<ReportVector>,
    aggregate_share_a: String,
    aggregate_share_b: String,
    aggregate_result: Vec<u128>,
    negative: Vec<NegativeVector>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct ReportVector {
    measurement: Measurement,
    nonce: String,
    /// Prio3 sharding randomness (hex); Prio2 draws its own, so its shares are given as is.
    rand: Option<String>,
    plaintext_a: String,
    plaintext_b: String,
    /// Seed of the ChaCha20 RNG that HPKE draws its ephemeral key from (hex).
    hpke_seed_a: String,
    hpke_seed_b: String,
    envelope_a: String,
    envelope_b: String,
    verifier_share_a: String,
    verifier_share_b: String,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct NegativeVector {
    name: String,
    /// The batch id the servers open the envelopes under.
    batch_id: String,
    envelope_a: String,
    envelope_b: String,
    rejection: String,
}

/// The vector definitions: name, spec, measurements.
fn definitions() -> Vec<(&'static str, &'static str, Vec<Measurement>)> {
    use Measurement::{Scalar, Vector};
    vec![
        (
            "prio2",
            r#"{"vdaf": "prio2", "length": 16}"#,
            vec![
                Vector(vec![1, 0, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1]),
                Vector(vec![1; 16]),
                Vector(vec![0; 16]),
            ],
        ),
        (
            "count",
            r#"{"vdaf": "count"}"#,
            vec![Scalar(1), Scalar(0), Scalar(1)],
        ),
        (
            "sum",
            r#"{"vdaf": "sum", "max_measurement": 255}"#,
            vec![Scalar(255), Scalar(0), Scalar(17)],
        ),
        (
            "sumvec",
            r#"{"vdaf": "sumvec", "length": 8, "bits": 2}"#,
            vec![
                Vector(vec![0, 1, 2, 3, 3, 2, 1, 0]),
                Vector(vec![3; 8]),
                Vector(vec![1, 0, 1, 0, 1, 0, 1, 0]),
            ],
        ),
        (
            "histogram",
            r#"{"vdaf": "histogram", "length": 6}"#,
            vec![Scalar(0), Scalar(5), Scalar(5)],
        ),
        (
            "multihotcountvec",
            r#"{"vdaf": "multihotcountvec", "length": 10, "max_weight": 3}"#,
            vec![
                Vector(vec![1, 0, 0, 0, 0, 0, 0, 0, 1, 1]),
                Vector(vec![0; 10]),
                Vector(vec![0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
            ],
        ),
    ]
}

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("data/vectors/{name}.json"))
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("vector hex")
}

fn array<const N: usize>(s: &str) -> [u8; N] {
    unhex(s).try_into().expect("vector length")
}

fn load_vdaf(batch_id: &str, spec: &serde_json::Value) -> Vdaf {
    let config =
        BatchConfig::from_json(&serde_json::json!({ batch_id: spec }).to_string()).unwrap();
    config.get(batch_id).unwrap().vdaf.clone()
}

/// Prio3 sharding with fixed randomness, through prio's test-util API.
fn prio3_shard(
    spec: &VdafSpec,
    ctx: &[u8],
    m: &Measurement,
    nonce: &[u8; 16],
    rand: &[u8],
) -> Option<[Vec<u8>; 2]> {
    fn go<V: TestVectorClient<16>>(
        v: V,
        ctx: &[u8],
        m: V::Measurement,
        nonce: &[u8; 16],
        rand: &[u8],
    ) -> Option<[Vec<u8>; 2]> {
        let (public, inputs) = v.shard_with_random(ctx, &m, nonce, rand).ok()?;
        let public_share = public.get_encoded().unwrap();
        Some([0, 1].map(|i| {
            ReportShare {
                nonce: *nonce,
                public_share: public_share.clone(),
                input_share: inputs[i].get_encoded().unwrap(),
            }
            .encode()
        }))
    }
    let (scalar, vector) = match m {
        Measurement::Scalar(x) => (*x, vec![]),
        Measurement::Vector(v) => (0, v.clone()),
    };
    match spec {
        VdafSpec::Prio2 { .. } | VdafSpec::Prio1 { .. } => None,
        VdafSpec::Count => go(
            Prio3Count::new_count(2).unwrap(),
            ctx,
            scalar == 1,
            nonce,
            rand,
        ),
        VdafSpec::Sum { max_measurement } => go(
            Prio3Sum::new_sum(2, *max_measurement).unwrap(),
            ctx,
            scalar,
            nonce,
            rand,
        ),
        VdafSpec::SumVec {
            length,
            max_measurement,
            chunk_length,
        } => go(
            Prio3SumVec::new_sum_vec(2, *max_measurement, *length, *chunk_length).unwrap(),
            ctx,
            vector.iter().map(|&x| x.into()).collect(),
            nonce,
            rand,
        ),
        VdafSpec::Histogram {
            length,
            chunk_length,
        } => go(
            Prio3Histogram::new_histogram(2, *length, *chunk_length).unwrap(),
            ctx,
            scalar as usize,
            nonce,
            rand,
        ),
        VdafSpec::MultihotCountVec {
            length,
            max_weight,
            chunk_length,
        } => go(
            Prio3MultihotCountVec::new_multihot_count_vec(2, *length, *max_weight, *chunk_length)
                .unwrap(),
            ctx,
            vector.iter().map(|&x| x == 1).collect(),
            nonce,
            rand,
        ),
    }
}

fn secrets(ikm_a: &str, ikm_b: &str, verify_key: &str) -> [ServerSecrets; 2] {
    let verify_key = array(verify_key);
    [(Role::A, ikm_a), (Role::B, ikm_b)].map(|(role, ikm)| ServerSecrets {
        role,
        private_keys: derive_keypair(&unhex(ikm)).into(),
        verify_key,
    })
}

fn seal_seeded(
    secrets: &[ServerSecrets; 2],
    role: Role,
    batch_id: &str,
    plain: &[u8],
    seed: &str,
) -> String {
    let mut rng = ChaCha20Rng::from_seed(array(seed));
    let key = secrets[role.agg_id()].private_keys.current().public_key();
    encode_base64(&seal_with_rng(&key, role, batch_id, plain, &mut rng).unwrap())
}

/// Builds a vector file from its definition with fixed randomness.
fn build(name: &str, spec_text: &str, measurements: &[Measurement]) -> VectorFile {
    let batch_id = format!("vector-{name}");
    let spec: serde_json::Value = serde_json::from_str(spec_text).unwrap();
    let vdaf = load_vdaf(&batch_id, &spec);
    let mut rng = ChaCha20Rng::seed_from_u64(name.len() as u64 * 1000 + 42);
    let mut hex_bytes = |n: usize| {
        let mut b = vec![0u8; n];
        rng.fill_bytes(&mut b);
        hex::encode(b)
    };
    let (ikm_a, ikm_b, verify_key) = (hex_bytes(32), hex_bytes(32), hex_bytes(32));
    let servers = secrets(&ikm_a, &ikm_b, &verify_key);
    let mut reports = Vec::new();
    let mut aggregates = [vdaf.aggregate_init(), vdaf.aggregate_init()];
    for m in measurements {
        let nonce: [u8; 16] = array(&hex_bytes(16));
        let (rand, plain) = if matches!(vdaf.spec(), VdafSpec::Prio2 { .. }) {
            (
                None,
                vdaf.shard(&batch_id, m, &nonce)
                    .unwrap()
                    .map(|s| s.encode()),
            )
        } else {
            // Prio3 needs 2 seeds per aggregator, or 4 with joint randomness.
            let (r, p) = [64, 128]
                .into_iter()
                .find_map(|n| {
                    let r = hex_bytes(n);
                    prio3_shard(vdaf.spec(), &context(&batch_id), m, &nonce, &unhex(&r))
                        .map(|p| (r, p))
                })
                .unwrap();
            (Some(r), p)
        };
        let seeds = [hex_bytes(32), hex_bytes(32)];
        let envelopes = Role::BOTH.map(|role| {
            seal_seeded(
                &servers,
                role,
                &batch_id,
                &plain[role.agg_id()],
                &seeds[role.agg_id()],
            )
        });
        let shares = Role::BOTH.map(|role| {
            let env = decode_base64(&envelopes[role.agg_id()]).unwrap();
            hex::encode(
                open_and_verify_init(&vdaf, &servers[role.agg_id()], &batch_id, &env)
                    .unwrap()
                    .verifier_share,
            )
        });
        let raw = envelopes.clone().map(|e| decode_base64(&e).unwrap());
        let outs = verify_locally(&vdaf, &servers, &batch_id, [&raw[0], &raw[1]]).unwrap();
        for (agg, out) in aggregates.iter_mut().zip(&outs) {
            vdaf.accumulate(agg, out).unwrap();
        }
        let [plaintext_a, plaintext_b] = plain.map(hex::encode);
        let [hpke_seed_a, hpke_seed_b] = seeds;
        let [envelope_a, envelope_b] = envelopes;
        let [verifier_share_a, verifier_share_b] = shares;
        reports.push(ReportVector {
            measurement: m.clone(),
            nonce: hex::encode(nonce),
            rand,
            plaintext_a,
            plaintext_b,
            hpke_seed_a,
            hpke_seed_b,
            envelope_a,
            envelope_b,
            verifier_share_a,
            verifier_share_b,
        });
    }
    let aggregate_result = vdaf
        .unshard(&aggregates[0], &aggregates[1], measurements.len())
        .unwrap();
    let negative = negatives(&servers, &batch_id, &reports[0], &mut hex_bytes);
    VectorFile {
        description: format!(
            "prio-processor share envelope and VDAF vectors for {name}; see docs/FORMAT.md"
        ),
        batch_id,
        spec,
        public_key_a: servers[0].private_keys.current().public_key().to_hex(),
        public_key_b: servers[1].private_keys.current().public_key().to_hex(),
        ikm_a,
        ikm_b,
        verify_key,
        reports,
        aggregate_share_a: hex::encode(vdaf.encode_aggregate(&aggregates[0])),
        aggregate_share_b: hex::encode(vdaf.encode_aggregate(&aggregates[1])),
        aggregate_result,
        negative,
    }
}

fn negatives(
    servers: &[ServerSecrets; 2],
    batch_id: &str,
    r: &ReportVector,
    hex_bytes: &mut impl FnMut(usize) -> String,
) -> Vec<NegativeVector> {
    let case = |name: &str, batch: &str, a: String, b: String, rejection: &str| NegativeVector {
        name: name.into(),
        batch_id: batch.into(),
        envelope_a: a,
        envelope_b: b,
        rejection: rejection.into(),
    };
    let raw_a = decode_base64(&r.envelope_a).unwrap();
    let mut flipped = raw_a.clone();
    *flipped.last_mut().unwrap() ^= 0x01;
    let mut long_plain = unhex(&r.plaintext_a);
    long_plain.push(0);
    let short_plain = unhex(&r.plaintext_a)[..20].to_vec();
    let report = ReportShare::decode(&unhex(&r.plaintext_a)).unwrap();
    let mut tampered = report.clone();
    tampered.input_share[0] ^= 0x01;
    let b = || r.envelope_b.clone();
    vec![
        case(
            "tampered ciphertext",
            batch_id,
            encode_base64(&flipped),
            b(),
            "undecryptable",
        ),
        case(
            "truncated envelope",
            batch_id,
            encode_base64(&raw_a[..raw_a.len() / 2]),
            b(),
            "undecryptable",
        ),
        case(
            "wrong batch id binding",
            &format!("{batch_id}-other"),
            r.envelope_a.clone(),
            b(),
            "wrong_binding",
        ),
        case(
            "envelopes swapped between servers",
            batch_id,
            b(),
            r.envelope_a.clone(),
            "wrong_binding",
        ),
        case(
            "report share one byte too long",
            batch_id,
            seal_seeded(servers, Role::A, batch_id, &long_plain, &hex_bytes(32)),
            b(),
            "undecodable",
        ),
        case(
            "truncated report share",
            batch_id,
            seal_seeded(servers, Role::A, batch_id, &short_plain, &hex_bytes(32)),
            b(),
            "undecodable",
        ),
        case(
            "tampered input share",
            batch_id,
            seal_seeded(
                servers,
                Role::A,
                batch_id,
                &tampered.encode(),
                &hex_bytes(32),
            ),
            b(),
            "invalid_proof",
        ),
        case("not base64", batch_id, "%%%".into(), b(), "bad_base64"),
        case(
            "sealed to a key the server does not hold",
            batch_id,
            {
                let stranger = derive_keypair(b"prio-processor vectors: a key no server holds");
                let mut rng = ChaCha20Rng::from_seed(array(&hex_bytes(32)));
                let plain = unhex(&r.plaintext_a);
                let sealed =
                    seal_with_rng(&stranger.public_key(), Role::A, batch_id, &plain, &mut rng);
                encode_base64(&sealed.unwrap())
            },
            b(),
            "unknown_key",
        ),
    ]
}

/// Checks one vector file against the code, independently of how it was built.
fn check(v: &VectorFile, envelopes: Envelopes) {
    let vdaf = load_vdaf(&v.batch_id, &v.spec);
    let mut servers = secrets(&v.ikm_a, &v.ikm_b, &v.verify_key);
    assert_eq!(
        servers[0].private_keys.current().public_key().to_hex(),
        v.public_key_a
    );
    assert_eq!(
        servers[1].private_keys.current().public_key().to_hex(),
        v.public_key_b
    );
    if envelopes == Envelopes::V1 {
        // As after a rotation: the key they were sealed to is the older one.
        for server in &mut servers {
            let sealed_to = server.private_keys.current().clone();
            server.private_keys = KeySet::new(vec![generate_keypair(), sealed_to]).unwrap();
        }
    }
    let mut aggregates = [vdaf.aggregate_init(), vdaf.aggregate_init()];
    let mut plain_total = vec![0u128; vdaf.spec().output_len()];
    for r in &v.reports {
        match (&r.measurement, vdaf.spec()) {
            (Measurement::Scalar(b), VdafSpec::Histogram { .. }) => plain_total[*b as usize] += 1,
            (Measurement::Scalar(x), _) => plain_total[0] += u128::from(*x),
            (Measurement::Vector(xs), _) => plain_total
                .iter_mut()
                .zip(xs)
                .for_each(|(t, x)| *t += u128::from(*x)),
        }
        let plain = [&r.plaintext_a, &r.plaintext_b].map(|p| unhex(p));
        if let Some(rand) = &r.rand {
            let nonce = array(&r.nonce);
            let sharded = prio3_shard(
                vdaf.spec(),
                &context(&v.batch_id),
                &r.measurement,
                &nonce,
                &unhex(rand),
            )
            .unwrap();
            assert_eq!(
                sharded, plain,
                "{}: sharding with fixed randomness",
                v.batch_id
            );
        }
        let sealed_now = envelopes;
        let envelopes = [
            (&r.envelope_a, &r.hpke_seed_a),
            (&r.envelope_b, &r.hpke_seed_b),
        ];
        for (role, (envelope, seed)) in Role::BOTH.into_iter().zip(envelopes) {
            let i = role.agg_id();
            if sealed_now == Envelopes::Current {
                assert_eq!(
                    &seal_seeded(&servers, role, &v.batch_id, &plain[i], seed),
                    envelope,
                    "{}: sealing",
                    v.batch_id
                );
            }
            let raw = decode_base64(envelope).unwrap();
            assert_eq!(
                open(&servers[i].private_keys, role, &v.batch_id, &raw).unwrap(),
                plain[i]
            );
            let share = open_and_verify_init(&vdaf, &servers[i], &v.batch_id, &raw)
                .unwrap()
                .verifier_share;
            let want = [&r.verifier_share_a, &r.verifier_share_b][i];
            assert_eq!(&hex::encode(share), want, "{}: verifier share", v.batch_id);
        }
        let raw = [&r.envelope_a, &r.envelope_b].map(|e| decode_base64(e).unwrap());
        let outs = verify_locally(&vdaf, &servers, &v.batch_id, [&raw[0], &raw[1]]).unwrap();
        for (agg, out) in aggregates.iter_mut().zip(&outs) {
            vdaf.accumulate(agg, out).unwrap();
        }
    }
    assert_eq!(
        hex::encode(vdaf.encode_aggregate(&aggregates[0])),
        v.aggregate_share_a
    );
    assert_eq!(
        hex::encode(vdaf.encode_aggregate(&aggregates[1])),
        v.aggregate_share_b
    );
    assert_eq!(
        plain_total, v.aggregate_result,
        "{}: expected result is the plain sum",
        v.batch_id
    );
    assert_eq!(
        vdaf.unshard(&aggregates[0], &aggregates[1], v.reports.len())
            .unwrap(),
        v.aggregate_result
    );
    for n in &v.negative {
        let raw = [&n.envelope_a, &n.envelope_b].map(|e| decode_base64(e));
        let reason = match raw {
            [Some(a), Some(b)] => verify_locally(&vdaf, &servers, &n.batch_id, [&a, &b])
                .err()
                .map(|r| r.reason()),
            _ => Some("bad_base64"),
        };
        assert_eq!(
            reason,
            Some(n.rejection.as_str()),
            "{}: {}",
            v.batch_id,
            n.name
        );
    }
}

#[test]
fn committed_vectors_match_the_code() {
    let regenerate = std::env::var_os("PRIO_REGENERATE_VECTORS").is_some();
    for (name, spec, measurements) in definitions() {
        if regenerate {
            let v = build(name, spec, &measurements);
            std::fs::write(path(name), serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
        }
        let text = std::fs::read_to_string(path(name))
            .unwrap_or_else(|e| panic!("{}: {e}", path(name).display()));
        let v: VectorFile = serde_json::from_str(&text).unwrap();
        assert_eq!(v.reports.len(), measurements.len());
        assert!(v.negative.len() >= 8, "{name}: negative cases present");
        check(&v, Envelopes::Current);
    }
}

/// Which envelopes a vector file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Envelopes {
    /// What clients seal now: the file is checked byte for byte.
    Current,
    /// Version 1 envelopes (no key id), from before key rotation: they
    /// must still open, verify and aggregate to the same answers.
    V1,
}

#[test]
fn version_1_envelopes_still_open_verify_and_aggregate() {
    let dir = path("v1/prio2").parent().unwrap().to_path_buf();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        definitions().len(),
        "one v1 file per VDAF in {}",
        dir.display()
    );
    for file in files {
        let v: VectorFile = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for r in &v.reports {
            assert_eq!(
                decode_base64(&r.envelope_a).unwrap()[0],
                1,
                "{}",
                file.display()
            );
        }
        check(&v, Envelopes::V1);
    }
}
