//! libprio's prime field: p = 2^87 + 2^19 + 1, with a subgroup of order
//! 2^19 (the roots of unity its polynomials are interpolated over).
//!
//! Elements are `u128`s below p. A product of two is at most 176 bits: it
//! is reduced with 2^87 = -(2^19 + 1) (mod p), twice, which needs no
//! division.

use std::ops::{Add, AddAssign, Mul, Neg, Sub};

/// The modulus.
pub const P: u128 = (1 << 87) + (1 << 19) + 1;
/// `2^87 mod p`, negated: `2^87 = -C`.
const C: u128 = (1 << 19) + 1;
const LOW_87: u128 = (1 << 87) - 1;
/// The generator of the subgroup of order 2^19 (`Generator` in libprio's params.h).
const GENERATOR: u128 = 0x2597c14f48d5b65ed8dcca;
/// log2 of the largest power-of-two subgroup.
pub const TWO_ADICITY: u32 = 19;
/// Bytes of the big-endian encoding of an element at most (88 bits).
pub const MAX_BYTES: usize = 11;

/// An element of the field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Fp(u128);

impl Fp {
    pub const ZERO: Fp = Fp(0);
    pub const ONE: Fp = Fp(1);

    /// The element `v`, if `v < p`.
    pub fn new(v: u128) -> Option<Fp> {
        (v < P).then_some(Fp(v))
    }

    pub fn value(self) -> u128 {
        self.0
    }

    pub fn pow(self, mut e: u128) -> Fp {
        let (mut base, mut acc) = (self, Fp::ONE);
        while e > 0 {
            if e & 1 == 1 {
                acc = acc * base;
            }
            base = base * base;
            e >>= 1;
        }
        acc
    }

    /// The inverse (of a non-zero element; zero maps to zero).
    pub fn inv(self) -> Fp {
        self.pow(P - 2)
    }

    /// A primitive `2^log_n`-th root of unity (`log_n <= 19`), as libprio
    /// derives it: the generator to the power `2^19 / 2^log_n`.
    pub fn root_of_unity(log_n: u32) -> Fp {
        assert!(log_n <= TWO_ADICITY, "no subgroup of order 2^{log_n}");
        Fp(GENERATOR).pow(1 << (TWO_ADICITY - log_n))
    }

    /// Big-endian bytes without leading zeros, one byte for zero (libprio's
    /// `mp_unsigned_octet_size` / `mp_to_fixlen_octets`).
    pub fn to_be_bytes_trimmed(self) -> Vec<u8> {
        let bytes = self.0.to_be_bytes();
        let first = bytes.iter().position(|&b| b != 0).unwrap_or(15);
        bytes[first..].to_vec()
    }

    /// Reads big-endian bytes (leading zeros allowed, at least one byte);
    /// `None` unless the value is below p.
    pub fn from_be_bytes(bytes: &[u8]) -> Option<Fp> {
        let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        let digits = &bytes[first..];
        if bytes.is_empty() || digits.len() > MAX_BYTES {
            return None;
        }
        let mut word = [0u8; 16];
        word[16 - digits.len()..].copy_from_slice(digits);
        Fp::new(u128::from_be_bytes(word))
    }
}

/// Bytes of one element in our own encodings (verifier shares, states,
/// sums): 16, big-endian.
pub const FIXED_LEN: usize = 16;

/// Elements in our own fixed-width encoding.
pub fn encode_fixed(elements: &[Fp]) -> Vec<u8> {
    elements.iter().flat_map(|x| x.0.to_be_bytes()).collect()
}

/// Exactly `len` fixed-width elements; `None` for another length or a
/// value not below p.
pub fn decode_fixed(bytes: &[u8], len: usize) -> Option<Vec<Fp>> {
    if bytes.len() != len * FIXED_LEN {
        return None;
    }
    bytes
        .chunks_exact(FIXED_LEN)
        .map(|c| Fp::new(u128::from_be_bytes(c.try_into().expect("16 bytes"))))
        .collect()
}

impl Add for Fp {
    type Output = Fp;
    fn add(self, o: Fp) -> Fp {
        let s = self.0 + o.0;
        Fp(if s >= P { s - P } else { s })
    }
}

impl AddAssign for Fp {
    fn add_assign(&mut self, o: Fp) {
        *self = *self + o;
    }
}

impl Sub for Fp {
    type Output = Fp;
    fn sub(self, o: Fp) -> Fp {
        Fp(if self.0 >= o.0 {
            self.0 - o.0
        } else {
            self.0 + P - o.0
        })
    }
}

impl Neg for Fp {
    type Output = Fp;
    fn neg(self) -> Fp {
        Fp::ZERO - self
    }
}

impl Mul for Fp {
    type Output = Fp;
    fn mul(self, o: Fp) -> Fp {
        let (a_hi, a_lo) = (self.0 >> 64, self.0 & u64::MAX as u128);
        let (b_hi, b_lo) = (o.0 >> 64, o.0 & u64::MAX as u128);
        // The 176-bit product as high * 2^128 + low.
        let lo = a_lo * b_lo;
        let mid = a_hi * b_lo + a_lo * b_hi;
        let (low, carry) = lo.overflowing_add(mid << 64);
        let high = a_hi * b_hi + (mid >> 64) + carry as u128;
        // x = q * 2^87 + r = r - q * C (mod p), with q < 2^89.
        let q = (high << 41) | (low >> 87);
        let r = low & LOW_87;
        // q * C < 2^109 = y1 * 2^87 + y0, so x = r - y0 + y1 * C (mod p).
        let y = q * C;
        let (y1, y0) = (y >> 87, y & LOW_87);
        // t < 2^87 + 2^41 + p < 3p: two subtractions at most. (Written as a
        // loop, LLVM turns this into a 128-bit division.)
        let mut t = r + y1 * C + (P - y0);
        if t >= P {
            t -= P;
        }
        if t >= P {
            t -= P;
        }
        Fp(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same product computed with schoolbook long division, bit by bit.
    fn mul_slow(a: u128, b: u128) -> u128 {
        let mut acc = 0u128;
        for bit in (0..128).rev() {
            acc = (acc * 2) % P;
            if (b >> bit) & 1 == 1 {
                acc = (acc + a) % P;
            }
        }
        acc
    }

    #[test]
    fn products_match_a_slow_reference_at_the_edges_and_at_random() {
        let edges = [0, 1, 2, C, P - 1, P - 2, (1 << 87) - 1, 1 << 86, P / 2];
        for &a in &edges {
            for &b in &edges {
                assert_eq!((Fp(a) * Fp(b)).0, mul_slow(a, b), "{a} * {b}");
            }
        }
        let mut x = 0x1234_5678_9abc_def0_u128;
        for _ in 0..2000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (a, b) = ((x >> 3) % P, (x.rotate_left(47)) % P);
            assert_eq!((Fp(a) * Fp(b)).0, mul_slow(a, b));
        }
    }

    #[test]
    fn the_generator_has_order_two_to_the_19() {
        let g = Fp(GENERATOR);
        assert_eq!(g.pow(1 << 19), Fp::ONE);
        assert_ne!(g.pow(1 << 18), Fp::ONE);
        assert_eq!(Fp::root_of_unity(1), -Fp::ONE);
    }

    #[test]
    fn inverses_and_encodings() {
        for v in [1, 2, 12345, P - 1] {
            assert_eq!(Fp(v) * Fp(v).inv(), Fp::ONE);
        }
        assert_eq!(Fp::ZERO.to_be_bytes_trimmed(), vec![0]);
        assert_eq!(Fp(0x0102).to_be_bytes_trimmed(), vec![1, 2]);
        assert_eq!(Fp::from_be_bytes(&[0, 0, 1, 2]), Some(Fp(0x0102)));
        assert_eq!(Fp::from_be_bytes(&[]), None);
        assert_eq!(Fp::from_be_bytes(&(P.to_be_bytes())), None);
        assert_eq!(Fp::from_be_bytes(&(P - 1).to_be_bytes()), Some(Fp(P - 1)));
    }
}
