//! libprio's PRG: AES-128 in counter mode (a zero IV, the 128-bit counter
//! big-endian), its key stream turned into field elements by rejection
//! sampling exactly as libprio's `rand_int_rng` does, so that server B
//! expands a client's seed into the same shares the client computed.

use aes::cipher::{KeyIvInit, StreamCipher};
use sha2::{Digest, Sha256};

use super::field::{Fp, MAX_BYTES, P};

/// Length of a PRG seed (and of the servers' shared secret).
pub const SEED_LEN: usize = 16;
pub type Seed = [u8; SEED_LEN];

type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;

/// How a PRG's key comes from its seed: libprio changed this in July 2020.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrgKey {
    /// The seed itself (libprio up to 1.6, what Firefox shipped).
    Seed,
    /// SHA-256(seed || batch id), first 16 bytes (libprio from commit 80647f4; PyPI prio 1.0.3+).
    SeedAndBatchId,
}

impl PrgKey {
    /// The AES key of a PRG with `seed` for `batch_id`.
    pub fn key(self, seed: &Seed, batch_id: &[u8]) -> Seed {
        match self {
            PrgKey::Seed => *seed,
            PrgKey::SeedAndBatchId => {
                let digest = Sha256::new()
                    .chain_update(seed)
                    .chain_update(batch_id)
                    .finalize();
                digest[..SEED_LEN].try_into().expect("16 of 32 bytes")
            }
        }
    }
}

/// Key stream made at a time: the cipher is fastest on long runs.
const CHUNK: usize = 4096;

/// A stream of pseudo-random field elements.
pub struct Prg {
    cipher: Aes128Ctr,
    stream: Box<[u8; CHUNK]>,
    /// The next unused byte of `stream`.
    at: usize,
}

impl Prg {
    pub fn new(key: &Seed) -> Prg {
        Prg {
            cipher: Aes128Ctr::new(key.into(), &[0u8; 16].into()),
            stream: Box::new([0; CHUNK]),
            at: CHUNK,
        }
    }

    /// The next `out.len()` bytes of the key stream.
    fn bytes(&mut self, out: &mut [u8]) {
        for byte in out {
            if self.at == CHUNK {
                self.stream.fill(0);
                self.cipher.apply_keystream(&mut self.stream[..]);
                self.at = 0;
            }
            *byte = self.stream[self.at];
            self.at += 1;
        }
    }

    /// An element below `max` (`0 < max <= p`): libprio reads as many bytes
    /// as `max - 1` has, then one more byte that replaces the first, masks
    /// that byte to the bits `max - 1` needs, and tries again while the
    /// value is not below `max`.
    pub fn below(&mut self, max: u128) -> u128 {
        debug_assert!(max > 0 && max <= P);
        let top = max - 1;
        let len = (16 - top.leading_zeros() as usize / 8).max(1);
        debug_assert!(len <= MAX_BYTES);
        let top_byte = (top >> (8 * (len - 1))) as u8;
        let mask = match top_byte {
            0 => 0,
            b => u8::MAX >> b.leading_zeros(),
        };
        let mut buf = [0u8; MAX_BYTES];
        loop {
            self.bytes(&mut buf[..len]);
            self.bytes(&mut buf[..1]);
            if mask != 0 {
                buf[0] &= mask;
            }
            let v = buf[..len].iter().fold(0u128, |v, &b| (v << 8) | b as u128);
            if v < max {
                return v;
            }
        }
    }

    /// A field element.
    pub fn element(&mut self) -> Fp {
        Fp::new(self.below(P)).expect("below p")
    }

    /// An element in `[lower, p)`.
    pub fn element_from(&mut self, lower: u128) -> Fp {
        Fp::new(lower + self.below(P - lower)).expect("below p")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_below_the_bound_and_follow_libprio_s_byte_use() {
        // A bound of one byte, 0x05: libprio reads 1 byte, then 1 more
        // that replaces it, masks it with 0x07, and retries at 5 or more.
        let key = [7u8; 16];
        let mut stream = [0u8; 64];
        Aes128Ctr::new((&key).into(), &[0u8; 16].into()).apply_keystream(&mut stream);
        let mut expected = None;
        for pair in stream.chunks(2) {
            let v = pair[1] & 0x07;
            if v < 5 {
                expected = Some(v as u128);
                break;
            }
        }
        assert_eq!(Some(Prg::new(&key).below(5)), expected);
        let mut prg = Prg::new(&key);
        for _ in 0..1000 {
            assert!(prg.element().value() < P);
            assert!(prg.element_from(100).value() >= 100);
        }
    }

    #[test]
    fn the_key_of_the_later_generation_hashes_the_batch_id() {
        let seed = [1u8; 16];
        assert_eq!(PrgKey::Seed.key(&seed, b"x"), seed);
        let digest = Sha256::digest([&seed[..], b"x"].concat());
        assert_eq!(PrgKey::SeedAndBatchId.key(&seed, b"x")[..], digest[..16]);
    }
}
