//! Prio v1: the format of Mozilla's libprio, which Firefox sent from
//! version 69. No crate implements it, so the protocol code is ours (the
//! field, the polynomials, the PRG, the packets) over well-kept crates for
//! the primitives (X25519, AES-GCM, AES-CTR, SHA-256, msgpack), and it is
//! checked against vectors made by libprio itself (`data/vectors/prio1/`).
//!
//! A client proves that every one of its `length` values is 0 or 1 with a
//! SNIP: polynomials `f` (its values) and `g` (its values minus one),
//! given with random values at the first root of unity, and `h = f * g`,
//! of which each server holds shares. Each server evaluates its shares of
//! `f`, `g` and `h` at the batch's check point `r`. libprio's servers then
//! multiply `f(r)` and `g(r)` with the client's Beaver triple `ab = c`
//! over two exchanges and accept when `f(r) g(r) - h(r) + c - ab = 0`. We
//! exchange the evaluations and the triple's shares in one message, as the
//! `prio` crate's Prio2 does with the same proof, and accept when both
//! `f(r) g(r) = h(r)` and `ab = c`: libprio's verdict on every report a
//! client made honestly or damaged, without its hole (libprio's one
//! equation lets a triple off by `d` cancel an `h` off by `d`, which for
//! lengths `2^k - 1` forges any value at every check point).
//! Nothing is revealed: `f(r)` and `g(r)` are masked by the client's random
//! values at the first root, `h(r)` of a valid report is their product,
//! and the triple is random, independent of the values.
//!
//! The check point is the first value of the PRG keyed (per [`PrgKey`]) by
//! a 16-byte seed only the servers know: libprio's servers draw one point
//! after another across reports, so a report one server could not open
//! would shift every later point; like the system this one replaces, each
//! report here is checked on its own, with that first point.

pub mod field;
pub mod packet;
mod poly;
pub mod prg;
pub mod seal;

use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::wire::{Rejection, Role};
use field::Fp;
use packet::{Packet, Shares, Triple};
use poly::{fft, Evaluator};
use prg::Prg;
pub use prg::{PrgKey, Seed, SEED_LEN};

/// The most values a libprio batch can have: half its 2^19 roots, less one.
pub const MAX_LENGTH: usize = (1 << 18) - 1;

/// A batch's libprio parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prio1 {
    length: usize,
    prg_key: PrgKey,
}

/// A uniformly random field element.
fn random_element() -> Fp {
    loop {
        if let Some(x) = Fp::new(rand::random::<u128>() >> 40) {
            return x;
        }
    }
}

/// `[share for A, share for B]` of `x`: A's is random.
fn share(x: Fp) -> [Fp; 2] {
    let a = random_element();
    [a, x - a]
}

/// A Prio v1 batch that cannot be, or a measurement that does not fit it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Prio1Error {
    #[error("length must be 1 to {MAX_LENGTH}, got {0}")]
    Length(usize),
    #[error("{values} values for a batch of length {length}")]
    Values { values: usize, length: usize },
}

impl Prio1 {
    pub fn new(length: usize, prg_key: PrgKey) -> Result<Prio1, Prio1Error> {
        if length == 0 || length > MAX_LENGTH {
            return Err(Prio1Error::Length(length));
        }
        Ok(Prio1 { length, prg_key })
    }

    pub fn length(&self) -> usize {
        self.length
    }

    pub fn prg_key(&self) -> PrgKey {
        self.prg_key
    }

    /// `N`: the points of `f` and `g` (values, plus the random one, rounded
    /// up to a power of two); `h` has `2N`, of which A gets the `N` odd ones.
    pub(crate) fn points(&self) -> usize {
        (self.length + 1).next_power_of_two()
    }

    /// Client: the two servers' packets for `bits`.
    pub fn encode(&self, batch_id: &[u8], bits: &[bool]) -> Result<[Packet; 2], Prio1Error> {
        if bits.len() != self.length {
            return Err(Prio1Error::Values {
                values: bits.len(),
                length: self.length,
            });
        }
        let data: Vec<Fp> = bits
            .iter()
            .map(|&b| if b { Fp::ONE } else { Fp::ZERO })
            .collect();
        Ok(self.encode_with(batch_id, &data, Fp::ZERO))
    }

    /// The packets of `data`, with `h` and the triple's `c` both off by
    /// `skew` (0 for an honest client; tests forge with another).
    fn encode_with(&self, batch_id: &[u8], data: &[Fp], skew: Fp) -> [Packet; 2] {
        let big_n = self.points();
        let seed: Seed = rand::random();
        let mut prg = Prg::new(&self.prg_key.key(&seed, batch_id));
        // Beaver triple: (a1 + a2)(b1 + b2) = c1 + c2.
        let (a, b) = (
            [random_element(), random_element()],
            [random_element(), random_element()],
        );
        let c2 = random_element();
        let c1 = (a[0] + a[1]) * (b[0] + b[1]) + skew - c2;
        // A's data shares; B's are the PRG's values.
        let data_a: Vec<Fp> = data.iter().map(|&x| x - prg.element()).collect();
        // f: a random value, then the data; g: another, then data - 1.
        let (f0, g0) = (random_element(), random_element());
        let evals = |first: Fp, shift: Fp| {
            let mut points = vec![Fp::ZERO; big_n];
            points[0] = first;
            for (p, &x) in points[1..].iter_mut().zip(data) {
                *p = x - shift;
            }
            let mut coeffs = fft(&points, true);
            coeffs.resize(2 * big_n, Fp::ZERO);
            fft(&coeffs, false)
        };
        let (f, g) = (evals(f0, Fp::ZERO), evals(g0, Fp::ONE));
        let [f0_a, f0_b] = share(f0);
        let [g0_a, g0_b] = share(g0);
        let [h0_a, h0_b] = share(f0 * g0 + skew);
        let h_points: Vec<Fp> = (1..2 * big_n)
            .step_by(2)
            .map(|i| f[i] * g[i] + skew - prg.element())
            .collect();
        let packet = |triple, f0, g0, h0, shares| Packet {
            batch_id: batch_id.to_vec(),
            triple,
            f0,
            g0,
            h0,
            shares,
        };
        [
            packet(
                Triple {
                    a: a[0],
                    b: b[0],
                    c: c1,
                },
                f0_a,
                g0_a,
                h0_a,
                Shares::A {
                    data: data_a,
                    h_points,
                },
            ),
            packet(
                Triple {
                    a: a[1],
                    b: b[1],
                    c: c2,
                },
                f0_b,
                g0_b,
                h0_b,
                Shares::B { seed },
            ),
        ]
    }

    /// Client: `bits` sealed for server A and server B.
    pub fn seal(
        &self,
        batch_id: &[u8],
        bits: &[bool],
        keys: [&PublicKey; 2],
    ) -> Result<[Vec<u8>; 2], Prio1Error> {
        let [a, b] = self.encode(batch_id, bits)?;
        Ok([
            seal::seal(keys[0], &a.encode()),
            seal::seal(keys[1], &b.encode()),
        ])
    }

    /// Server: what checks the batch's reports; computed once per batch.
    pub fn checker(&self, shared_secret: &Seed, batch_id: &[u8]) -> Checker {
        let mut prg = Prg::new(&self.prg_key.key(shared_secret, batch_id));
        // libprio draws r from [n + 1, p) with n = length + 1 (the values
        // and the random one); a root of unity, where the interpolation
        // would reveal a value, is drawn again (a chance of 2^-68).
        let big_n = self.points();
        let r = std::iter::repeat_with(|| prg.element_from(self.length as u128 + 2))
            .find(|r| r.pow(2 * big_n as u128) != Fp::ONE)
            .expect("an endless iterator");
        self.checker_at(r, batch_id)
    }

    /// The check at a given point: libprio's servers draw points in
    /// sequence, so the vectors they make name theirs.
    pub fn checker_at(&self, r: Fp, batch_id: &[u8]) -> Checker {
        let big_n = self.points();
        let f = Evaluator::new(big_n, r);
        let data_weights = (1..=self.length).fold(Fp::ZERO, |acc, i| acc + f.weight(i));
        Checker {
            prio: *self,
            batch_id: batch_id.to_vec(),
            r,
            h: Evaluator::new(2 * big_n, r),
            f,
            data_weights,
        }
    }
}

/// A batch's check: its point `r` and the weights that evaluate a
/// server's shares there.
#[derive(Debug, Clone)]
pub struct Checker {
    prio: Prio1,
    batch_id: Vec<u8>,
    r: Fp,
    f: Evaluator,
    h: Evaluator,
    /// The sum of the weights of the data points (A's shares of `g` are
    /// its shares of `f` less one there).
    data_weights: Fp,
}

/// One server's shares of `f(r)`, `g(r)`, `h(r)` and of the client's
/// Beaver triple: what it sends its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifierShare {
    pub f: Fp,
    pub g: Fp,
    pub h: Fp,
    pub triple: Triple,
}

/// Bytes of an encoded [`VerifierShare`]: six elements, fixed width.
pub const VERIFIER_SHARE_LEN: usize = 6 * field::FIXED_LEN;

impl VerifierShare {
    fn elements(&self) -> [Fp; 6] {
        let t = self.triple;
        [self.f, self.g, self.h, t.a, t.b, t.c]
    }

    pub fn encode(&self) -> Vec<u8> {
        field::encode_fixed(&self.elements())
    }

    pub fn decode(bytes: &[u8]) -> Option<VerifierShare> {
        let [f, g, h, a, b, c] = field::decode_fixed(bytes, 6)?.try_into().ok()?;
        Some(VerifierShare {
            f,
            g,
            h,
            triple: Triple { a, b, c },
        })
    }
}

/// The verdict on the two servers' shares: `f(r) g(r) = h(r)` and the
/// triple multiplies, `ab = c`. libprio checks only their sum,
/// `f(r) g(r) - h(r) + c - ab = 0`, which a client can meet with both off.
pub fn is_valid(x: &VerifierShare, y: &VerifierShare) -> bool {
    let [f, g, h, a, b, c] = {
        let (x, y) = (x.elements(), y.elements());
        [0, 1, 2, 3, 4, 5].map(|i| x[i] + y[i])
    };
    f * g == h && a * b == c
}

/// A report one server opened.
#[derive(Debug, Clone)]
pub struct Opened {
    /// This server's shares of the values: its output share if valid.
    pub data: Vec<Fp>,
    pub share: VerifierShare,
    /// SHA-256 of the packet's plaintext: the two servers' digests
    /// together name the report for anti-replay (packets carry no nonce).
    pub digest: [u8; 32],
}

impl Checker {
    pub fn check_point(&self) -> Fp {
        self.r
    }

    /// Decrypts a sealed packet with one of `keys` (libprio packets name no
    /// key), decodes it for this batch and server, and evaluates its shares.
    pub fn open(
        &self,
        role: Role,
        keys: &[StaticSecret],
        sealed: &[u8],
    ) -> Result<Opened, Rejection> {
        let plaintext = keys
            .iter()
            .find_map(|key| seal::open(key, sealed))
            .ok_or(Rejection::Undecryptable)?;
        let packet = Packet::decode(&plaintext, self.prio.length, self.prio.points())
            .ok_or(Rejection::Undecodable)?;
        if packet.batch_id != self.batch_id || packet.role() != role {
            return Err(Rejection::WrongBinding);
        }
        let (data, share) = self.evaluate(packet);
        Ok(Opened {
            data,
            share,
            digest: Sha256::digest(&plaintext).into(),
        })
    }

    /// A packet's data shares (B's expanded from its seed) and its shares
    /// of `f(r)`, `g(r)`, `h(r)`.
    pub fn evaluate(&self, packet: Packet) -> (Vec<Fp>, VerifierShare) {
        let length = self.prio.length;
        let role = packet.role();
        let (data, h_points) = match packet.shares {
            Shares::A { data, h_points } => (data, h_points),
            Shares::B { seed } => {
                let mut prg = Prg::new(&self.prio.prg_key.key(&seed, &self.batch_id));
                let data = (0..length).map(|_| prg.element()).collect();
                let h = (0..self.prio.points()).map(|_| prg.element()).collect();
                (data, h)
            }
        };
        let w0 = self.f.weight(0);
        let f = packet.f0 * w0
            + self
                .f
                .eval_sparse(data.iter().enumerate().map(|(i, &x)| (i + 1, x)));
        let mut g = f + (packet.g0 - packet.f0) * w0;
        if role == Role::A {
            g = g - self.data_weights;
        }
        let h = packet.h0 * self.h.weight(0)
            + self
                .h
                .eval_sparse(h_points.iter().enumerate().map(|(j, &y)| (2 * j + 1, y)));
        (
            data,
            VerifierShare {
                f,
                g,
                h,
                triple: packet.triple,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ([StaticSecret; 2], [PublicKey; 2]) {
        let secrets = [(); 2].map(|_| StaticSecret::from(rand::random::<[u8; 32]>()));
        let public = [PublicKey::from(&secrets[0]), PublicKey::from(&secrets[1])];
        (secrets, public)
    }

    /// Opens both packets and checks the report; the values if valid.
    fn verify(
        prio: &Prio1,
        seed: &Seed,
        batch: &[u8],
        secrets: &[StaticSecret; 2],
        sealed: &[Vec<u8>; 2],
    ) -> Option<Vec<u128>> {
        let checker = prio.checker(seed, batch);
        let a = checker.open(Role::A, &secrets[..1], &sealed[0]).ok()?;
        let b = checker.open(Role::B, &secrets[1..], &sealed[1]).ok()?;
        is_valid(&a.share, &b.share).then(|| {
            a.data
                .iter()
                .zip(&b.data)
                .map(|(x, y)| (*x + *y).value())
                .collect()
        })
    }

    #[test]
    fn honest_reports_verify_and_reconstruct_for_both_generations() {
        let (secrets, public) = keys();
        let seed: Seed = rand::random();
        for prg_key in [PrgKey::Seed, PrgKey::SeedAndBatchId] {
            for length in [1, 2, 3, 7, 64, 441] {
                let prio = Prio1::new(length, prg_key).unwrap();
                let bits: Vec<bool> = (0..length).map(|i| i % 3 == 1).collect();
                let sealed = prio
                    .seal(b"batch", &bits, [&public[0], &public[1]])
                    .unwrap();
                let values = verify(&prio, &seed, b"batch", &secrets, &sealed);
                let want: Vec<u128> = bits.iter().map(|&b| b as u128).collect();
                assert_eq!(values, Some(want), "{prg_key:?} length {length}");
            }
        }
    }

    #[test]
    fn a_value_other_than_0_or_1_and_altered_shares_are_invalid() {
        let (secrets, public) = keys();
        let seed: Seed = rand::random();
        let prio = Prio1::new(5, PrgKey::SeedAndBatchId).unwrap();
        let [a, b] = prio
            .encode(b"x", &[true, false, true, true, false])
            .unwrap();
        let checker = prio.checker(&seed, b"x");
        let (_, share_b) = checker.evaluate(b);
        let altered = |change: &dyn Fn(&mut Packet)| {
            let mut a = a.clone();
            change(&mut a);
            is_valid(&checker.evaluate(a).1, &share_b)
        };
        assert!(altered(&|_| {}), "unaltered");
        // A data share + 1 turns a 0 into 1 or a 1 into 2: h no longer fits.
        assert!(!altered(&|p| {
            if let Shares::A { data, .. } = &mut p.shares {
                data[0] += Fp::ONE;
            }
        }));
        assert!(!altered(&|p| {
            if let Shares::A { h_points, .. } = &mut p.shares {
                h_points[3] += Fp::ONE;
            }
        }));
        assert!(!altered(&|p| p.f0 += Fp::ONE));
        assert!(!altered(&|p| p.h0 += Fp::ONE));
        // As libprio: a triple that does not multiply fails the check.
        assert!(!altered(&|p| p.triple.c += Fp::ONE));
        // Sealed to the wrong server, for another batch, or another length.
        let sealed = prio
            .seal(b"x", &[false; 5], [&public[0], &public[1]])
            .unwrap();
        assert_eq!(
            checker
                .open(Role::A, &secrets[1..], &sealed[0])
                .unwrap_err(),
            Rejection::Undecryptable
        );
        assert_eq!(
            checker
                .open(Role::B, &secrets[..1], &sealed[0])
                .unwrap_err(),
            Rejection::WrongBinding
        );
        let other = prio.checker(&seed, b"y");
        assert_eq!(
            other.open(Role::A, &secrets[..1], &sealed[0]).unwrap_err(),
            Rejection::WrongBinding
        );
        let longer = Prio1::new(6, PrgKey::SeedAndBatchId)
            .unwrap()
            .checker(&seed, b"x");
        assert_eq!(
            longer.open(Role::A, &secrets[..1], &sealed[0]).unwrap_err(),
            Rejection::Undecodable
        );
        // The other generation's server: B expands other shares.
        let old = Prio1::new(5, PrgKey::Seed).unwrap();
        assert_eq!(verify(&old, &seed, b"x", &secrets, &sealed), None);
    }

    #[test]
    fn a_triple_off_by_what_h_is_off_does_not_forge_a_value() {
        // Length 1 has no padding root: the value x = 5 with h and c both
        // shifted by d = x - x^2 meets libprio's one equation at any point.
        let seed: Seed = rand::random();
        let prio = Prio1::new(1, PrgKey::Seed).unwrap();
        let x = Fp::new(5).unwrap();
        let [a, b] = prio.encode_with(b"x", &[x], x - x * x);
        let checker = prio.checker(&seed, b"x");
        let (share_a, share_b) = (checker.evaluate(a).1, checker.evaluate(b).1);
        let sum = |f: fn(&VerifierShare) -> Fp| f(&share_a) + f(&share_b);
        let (f, g, h) = (sum(|s| s.f), sum(|s| s.g), sum(|s| s.h));
        let (ta, tb, tc) = (
            sum(|s| s.triple.a),
            sum(|s| s.triple.b),
            sum(|s| s.triple.c),
        );
        assert_eq!(
            f * g - h + tc - ta * tb,
            Fp::ZERO,
            "libprio would accept it"
        );
        assert!(!is_valid(&share_a, &share_b));
    }

    #[test]
    fn verifier_shares_round_trip_and_lengths_are_bounded() {
        let share = VerifierShare {
            f: Fp::ONE,
            g: Fp::new(field::P - 1).unwrap(),
            h: Fp::ZERO,
            triple: Triple {
                a: Fp::ONE,
                b: Fp::new(1 << 86).unwrap(),
                c: Fp::ZERO,
            },
        };
        assert_eq!(VerifierShare::decode(&share.encode()), Some(share));
        assert_eq!(VerifierShare::decode(&[0xff; VERIFIER_SHARE_LEN]), None);
        assert!(Prio1::new(0, PrgKey::Seed).is_err());
        assert!(Prio1::new(MAX_LENGTH + 1, PrgKey::Seed).is_err());
    }
}
