//! The plaintext of a libprio client packet: a sequence of msgpack values
//! (not an array), field elements as msgpack *str* holding their raw
//! big-endian bytes.
//!
//! `batch_id, a, b, c, f0, g0, h0, server` (`0` = A, `1` = B), then for A
//! `[data shares...] [h points...]`, for B its 16-byte PRG seed.

use rmp::decode::{read_array_len, read_int, read_str_len};
use rmp::encode::{write_array_len, write_pfix, write_str_len};

use super::field::Fp;
use super::prg::{Seed, SEED_LEN};
use crate::wire::Role;

/// A Beaver triple's shares: `(a1 + a2) (b1 + b2) = c1 + c2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Triple {
    pub a: Fp,
    pub b: Fp,
    pub c: Fp,
}

/// One server's client packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub batch_id: Vec<u8>,
    pub triple: Triple,
    /// Shares of the polynomials' values at the first root: `f0`, `g0`,
    /// and `h0 = f0 * g0`.
    pub f0: Fp,
    pub g0: Fp,
    pub h0: Fp,
    pub shares: Shares,
}

/// What differs between the two servers' packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shares {
    /// Server A: its data shares and its shares of `h` at the odd roots.
    A { data: Vec<Fp>, h_points: Vec<Fp> },
    /// Server B: the seed its shares expand from.
    B { seed: Seed },
}

impl Packet {
    pub fn role(&self) -> Role {
        match self.shares {
            Shares::A { .. } => Role::A,
            Shares::B { .. } => Role::B,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let bytes = |out: &mut Vec<u8>, b: &[u8]| {
            write_str_len(out, b.len() as u32).expect("writing to a Vec");
            out.extend_from_slice(b);
        };
        let element = |out: &mut Vec<u8>, x: Fp| bytes(out, &x.to_be_bytes_trimmed());
        bytes(&mut out, &self.batch_id);
        for x in [
            self.triple.a,
            self.triple.b,
            self.triple.c,
            self.f0,
            self.g0,
            self.h0,
        ] {
            element(&mut out, x);
        }
        match &self.shares {
            Shares::A { data, h_points } => {
                write_pfix(&mut out, 0).expect("writing to a Vec");
                for array in [data, h_points] {
                    write_array_len(&mut out, array.len() as u32).expect("writing to a Vec");
                    for &x in array {
                        element(&mut out, x);
                    }
                }
            }
            Shares::B { seed } => {
                write_pfix(&mut out, 1).expect("writing to a Vec");
                bytes(&mut out, seed);
            }
        }
        out
    }

    /// Reads a packet for a batch of `length` data fields and `h_points`
    /// h points; anything else (another length, trailing bytes, an element
    /// not below p) is `None`.
    pub fn decode(bytes: &[u8], length: usize, h_points: usize) -> Option<Packet> {
        let mut rd = bytes;
        let batch_id = read_bytes(&mut rd)?.to_vec();
        let mut next = || read_element(&mut rd);
        let triple = Triple {
            a: next()?,
            b: next()?,
            c: next()?,
        };
        let (f0, g0, h0) = (next()?, next()?, next()?);
        let shares = match read_int::<u64, _>(&mut rd).ok()? {
            0 => Shares::A {
                data: read_elements(&mut rd, length)?,
                h_points: read_elements(&mut rd, h_points)?,
            },
            1 => Shares::B {
                seed: read_bytes(&mut rd)?.try_into().ok()?,
            },
            _ => return None,
        };
        rd.is_empty().then_some(Packet {
            batch_id,
            triple,
            f0,
            g0,
            h0,
            shares,
        })
    }
}

/// A msgpack str's bytes.
fn read_bytes<'a>(rd: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = read_str_len(rd).ok()? as usize;
    let (value, rest) = (rd.len() >= len).then(|| rd.split_at(len))?;
    *rd = rest;
    Some(value)
}

fn read_element(rd: &mut &[u8]) -> Option<Fp> {
    Fp::from_be_bytes(read_bytes(rd)?)
}

/// An array of exactly `len` elements.
fn read_elements(rd: &mut &[u8], len: usize) -> Option<Vec<Fp>> {
    if read_array_len(rd).ok()? as usize != len {
        return None;
    }
    (0..len).map(|_| read_element(rd)).collect()
}

/// A verification message as libprio writes it (its `PrioPacketVerify1`,
/// `PrioPacketVerify2`): the elements in order.
pub fn encode_elements(elements: &[Fp]) -> Vec<u8> {
    let mut out = Vec::new();
    for x in elements {
        let b = x.to_be_bytes_trimmed();
        write_str_len(&mut out, b.len() as u32).expect("writing to a Vec");
        out.extend_from_slice(&b);
    }
    out
}

/// The seed length is part of the format.
const _: () = assert!(SEED_LEN == 16);

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(role: Role) -> Packet {
        let x = |v: u128| Fp::new(v).unwrap();
        Packet {
            batch_id: b"content.blocking_storage_access_api_exempt_TESTONLY-0".to_vec(),
            triple: Triple {
                a: x(1),
                b: x(0),
                c: x(super::super::field::P - 1),
            },
            f0: x(0xabcdef),
            g0: x(7),
            h0: x(1 << 80),
            shares: match role {
                Role::A => Shares::A {
                    data: vec![x(0), x(1), x(2)],
                    h_points: vec![x(3); 4],
                },
                Role::B => Shares::B { seed: [9; 16] },
            },
        }
    }

    #[test]
    fn packets_round_trip_and_refuse_other_shapes() {
        for role in Role::BOTH {
            let p = sample(role);
            let bytes = p.encode();
            assert_eq!(Packet::decode(&bytes, 3, 4), Some(p.clone()));
            assert_eq!(p.role(), role);
            // Trailing bytes, truncation.
            assert_eq!(Packet::decode(&[&bytes[..], &[0]].concat(), 3, 4), None);
            assert_eq!(Packet::decode(&bytes[..bytes.len() - 1], 3, 4), None);
        }
        let a = sample(Role::A).encode();
        assert_eq!(Packet::decode(&a, 4, 4), None, "another length");
        assert_eq!(Packet::decode(&a, 3, 8), None, "other h points");
    }

    #[test]
    fn elements_are_raw_big_endian_str() {
        // 0 is one zero byte; 0x0102 two bytes; a fixstr marker each.
        let x = |v: u128| Fp::new(v).unwrap();
        assert_eq!(
            encode_elements(&[x(0), x(0x0102)]),
            vec![0xa1, 0, 0xa2, 1, 2]
        );
    }
}
