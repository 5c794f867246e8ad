//! Prio v1 against the real libprio: the vectors its servers made
//! (`data/vectors/prio1/`, one file per generation) are reproduced byte for
//! byte, from the check point its PRG drew to the verification messages
//! its servers sent, and our verdicts and sums are libprio's.

mod common;

use base64::Engine;
use common::libprio::{LibprioFile, GENERATIONS};
use prio_processor::wire::prio1::field::{Fp, P};
use prio_processor::wire::prio1::packet::encode_elements;
use prio_processor::wire::prio1::prg::Prg;
use prio_processor::wire::prio1::{is_valid, Opened, PrgKey, Prio1, Seed};
use prio_processor::wire::{Rejection, Role};
use x25519_dalek::{PublicKey, StaticSecret};

fn unbase64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

fn prg_key(generation: &str) -> PrgKey {
    serde_json::from_value(generation.into()).unwrap()
}

/// A server's key from libprio's export, checked against its public key.
fn secret(keys: &common::libprio::Keys) -> StaticSecret {
    let private: [u8; 32] = hex::decode(&keys.private_key_hex)
        .unwrap()
        .try_into()
        .unwrap();
    let secret = StaticSecret::from(private);
    let public = hex::encode_upper(PublicKey::from(&secret).as_bytes());
    assert_eq!(
        public, keys.public_key_hex,
        "X25519 of libprio's private key"
    );
    secret
}

/// libprio's verify1 (`d = f(r) - a`, `e = g(r) - b`) and verify2
/// (`de/2 + db + ea + c - h(r)`, with `d` and `e` summed over both
/// servers) as it writes them, from our evaluations of the two packets.
fn libprio_messages(opened: [&Opened; 2]) -> [[Vec<u8>; 2]; 2] {
    let de = opened.map(|o| (o.share.f - o.share.triple.a, o.share.g - o.share.triple.b));
    let (d, e) = (de[0].0 + de[1].0, de[0].1 + de[1].1);
    let half = Fp::new(2).unwrap().inv();
    let verify2 = opened.map(|o| {
        let t = o.share.triple;
        encode_elements(&[d * e * half + d * t.b + e * t.a + t.c - o.share.h])
    });
    let verify1 = de.map(|(d, e)| encode_elements(&[d, e]));
    [verify1, verify2]
}

#[test]
fn libprio_s_vectors_are_reproduced_byte_for_byte_for_both_generations() {
    for generation in GENERATIONS {
        let file = LibprioFile::load(generation);
        let secrets = [secret(&file.server_a), secret(&file.server_b)];
        let seed: Seed = unbase64(&file.shared_seed_base64).try_into().unwrap();
        let (mut reports, mut compared) = (0, 0);
        for batch in &file.batches {
            let id = batch.batch_id.as_bytes();
            let prio = Prio1::new(batch.length, prg_key(generation)).unwrap();
            // The check point libprio's fresh server drew from its PRG.
            let mut prg = Prg::new(&prg_key(generation).key(&seed, id));
            let r = match file.check_point_rule.as_str() {
                "full" => Fp::new(prg.below(P)).unwrap(),
                "range" => prg.element_from(batch.length as u128 + 2),
                rule => panic!("unknown rule {rule}"),
            };
            assert_eq!(
                r.value().to_string(),
                batch.check_point,
                "{}",
                batch.batch_id
            );
            if file.check_point_rule == "range" {
                assert_eq!(
                    prio.checker(&seed, id).check_point(),
                    r,
                    "our rule is libprio's"
                );
            }
            let checker = prio.checker_at(r, id);
            let mut total = vec![0u64; batch.length];
            let mut accepted = 0;
            for report in &batch.reports {
                let what = format!(
                    "{} {:?} {:?}",
                    file.library, batch.batch_id, report.tampered
                );
                let opened = [(Role::A, &report.a), (Role::B, &report.b)].map(|(role, sealed)| {
                    let keys = &secrets[role.agg_id()..role.agg_id() + 1];
                    checker.open(role, keys, &unbase64(sealed))
                });
                for (role, o) in Role::BOTH.iter().zip(&opened) {
                    assert_eq!(
                        o.is_ok(),
                        report.opened[role.as_str()],
                        "{what}: opened {role}"
                    );
                }
                match report.tampered.as_deref() {
                    Some("a_ciphertext_byte") => {
                        assert_eq!(opened[0].as_ref().unwrap_err(), &Rejection::Undecryptable)
                    }
                    Some("a_other_batch_id") => {
                        assert_eq!(opened[0].as_ref().unwrap_err(), &Rejection::WrongBinding)
                    }
                    _ => {}
                }
                reports += 1;
                let [Ok(a), Ok(b)] = &opened else {
                    assert!(!report.valid, "{what}");
                    continue;
                };
                let [verify1, verify2] = libprio_messages([a, b]);
                for (i, role) in ["a", "b"].iter().enumerate() {
                    let want1 = unbase64(&report.verify1.as_ref().unwrap()[*role]);
                    let want2 = unbase64(&report.verify2.as_ref().unwrap()[*role]);
                    assert_eq!(verify1[i], want1, "{what}: verify1 of {role}");
                    assert_eq!(verify2[i], want2, "{what}: verify2 of {role}");
                }
                compared += 1;
                assert_eq!(
                    is_valid(&a.share, &b.share),
                    report.valid,
                    "{what}: verdict"
                );
                if report.valid {
                    accepted += 1;
                    for ((sum, x), y) in total.iter_mut().zip(&a.data).zip(&b.data) {
                        *sum += u64::try_from((*x + *y).value()).unwrap();
                    }
                    let values: Vec<bool> = a
                        .data
                        .iter()
                        .zip(&b.data)
                        .map(|(x, y)| *x + *y == Fp::ONE)
                        .collect();
                    assert_eq!(values, report.measurement, "{what}: the client's values");
                }
            }
            assert_eq!(total, batch.total, "{}: libprio's sum", batch.batch_id);
            assert_eq!(accepted, batch.accepted, "{}", batch.batch_id);
        }
        assert!(
            reports >= 30 && compared >= 25,
            "{generation}: {reports} reports, {compared} compared"
        );
    }
}

#[test]
fn each_generation_rejects_the_other_s_honest_reports_at_the_proof() {
    for (generation, other) in [
        (GENERATIONS[0], GENERATIONS[1]),
        (GENERATIONS[1], GENERATIONS[0]),
    ] {
        let file = LibprioFile::load(generation);
        let secrets = [secret(&file.server_a), secret(&file.server_b)];
        let seed: Seed = unbase64(&file.shared_seed_base64).try_into().unwrap();
        let mut honest = 0;
        for batch in &file.batches {
            let checker = Prio1::new(batch.length, prg_key(other))
                .unwrap()
                .checker(&seed, batch.batch_id.as_bytes());
            for report in batch.reports.iter().filter(|r| r.tampered.is_none()) {
                let a = checker
                    .open(Role::A, &secrets[..1], &unbase64(&report.a))
                    .unwrap();
                let b = checker
                    .open(Role::B, &secrets[1..], &unbase64(&report.b))
                    .unwrap();
                assert!(
                    !is_valid(&a.share, &b.share),
                    "{other} server, {generation} report"
                );
                honest += 1;
            }
        }
        assert!(honest >= 15, "{generation}: {honest} honest reports");
    }
}
