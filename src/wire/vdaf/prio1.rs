//! Prio v1 (libprio's format, [`crate::wire::prio1`]) as one of the
//! pipeline's VDAFs: what each server keeps between steps, what it sends
//! its peer, and its sums, all as bytes.
//!
//! The peer gets this server's shares of `f(r)`, `g(r)`, `h(r)` and of
//! the client's Beaver triple, and the SHA-256 of its packet. libprio's packets carry no nonce; the report's
//! nonce, which anti-replay compares, is derived from both servers'
//! digests, so a copied ping (both packets copied) has the nonce of the
//! original and a packet paired with another report's has another.

use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};
use x25519_dalek::StaticSecret;

use super::{Nonce, VdafUseError, VerifyKey, NONCE_LEN};
use crate::wire::prio1::field::{self, Fp};
use crate::wire::prio1::{is_valid, Checker, Prio1, Seed, VerifierShare, VERIFIER_SHARE_LEN};
use crate::wire::{Rejection, Role};

const DIGEST_LEN: usize = 32;

/// A prio1 batch: its parameters and its check, computed at first use.
pub(super) struct Prio1Vdaf {
    pub prio: Prio1,
    /// The check of the one (verify key, batch id) this batch is used with.
    check: Mutex<Option<(VerifyKey, String, Arc<Checker>)>>,
}

/// Its check derives from the verify key: never printed.
impl std::fmt::Debug for Prio1Vdaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prio1Vdaf")
            .field("prio", &self.prio)
            .finish_non_exhaustive()
    }
}

/// The PRG seed of a batch's check point, from the servers' verify key and
/// the batch id (so that each batch has its own point whatever `prg_key`):
/// `SHA-256("prio-processor prio1 check seed v2" || verify key || batch id)[..16]`.
fn check_seed(verify_key: &VerifyKey, batch_id: &str) -> Seed {
    let digest = Sha256::new()
        .chain_update(b"prio-processor prio1 check seed v2")
        .chain_update(verify_key)
        .chain_update(batch_id.as_bytes())
        .finalize();
    digest[..16].try_into().expect("16 of 32 bytes")
}

impl Prio1Vdaf {
    pub fn new(prio: Prio1) -> Self {
        Prio1Vdaf {
            prio,
            check: Mutex::new(None),
        }
    }

    fn checker(&self, verify_key: &VerifyKey, batch_id: &str) -> Arc<Checker> {
        let mut check = self.check.lock().unwrap_or_else(PoisonError::into_inner);
        match &*check {
            Some((key, id, checker)) if key == verify_key && id == batch_id => checker.clone(),
            _ => {
                let checker = Arc::new(
                    self.prio
                        .checker(&check_seed(verify_key, batch_id), batch_id.as_bytes()),
                );
                *check = Some((*verify_key, batch_id.to_string(), checker.clone()));
                checker
            }
        }
    }

    /// Opens a libprio packet and evaluates it: this server's part of the
    /// nonce (its digest), its state, and the verifier share for the peer.
    pub fn open(
        &self,
        keys: &[StaticSecret],
        verify_key: &VerifyKey,
        batch_id: &str,
        role: Role,
        sealed: &[u8],
    ) -> Result<(Nonce, Prio1State, Vec<u8>), Rejection> {
        let opened = self
            .checker(verify_key, batch_id)
            .open(role, keys, sealed)?;
        let state = Prio1State {
            role,
            data: opened.data,
            share: opened.share,
            digest: opened.digest,
        };
        let nonce = state.digest[..NONCE_LEN].try_into().expect("16 of 32");
        let share = state.verifier_share();
        Ok((nonce, state, share))
    }

    /// The largest packet a server of this batch may get, unsealed.
    pub fn max_packet_lens(&self, batch_id: &str) -> [usize; 2] {
        // A str header (at most 5 bytes) and 11 bytes an element.
        let element = 1 + 11;
        let common = 5 + batch_id.len() + 6 * element + 1;
        let points = self.prio.points();
        [
            common + 2 * 5 + (self.prio.length() + points) * element,
            common + 1 + 16,
        ]
    }
}

/// A server's state for one report between verify1 and verify2.
#[derive(Debug, Clone)]
pub(super) struct Prio1State {
    role: Role,
    data: Vec<Fp>,
    share: VerifierShare,
    digest: [u8; DIGEST_LEN],
}

impl Prio1State {
    /// What the peer gets: the shares at the check point, then the digest.
    fn verifier_share(&self) -> Vec<u8> {
        [&self.share.encode()[..], &self.digest[..]].concat()
    }

    /// `role || digest || verifier share || data elements`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.role.agg_id() as u8];
        out.extend_from_slice(&self.digest);
        out.extend_from_slice(&self.share.encode());
        out.extend(encode_elements(&self.data));
        out
    }

    pub fn decode(prio: &Prio1, role: Role, bytes: &[u8]) -> Result<Self, VdafUseError> {
        let bad = || VdafUseError::Codec(prio::codec::CodecError::UnexpectedValue);
        let head = 1 + DIGEST_LEN + VERIFIER_SHARE_LEN;
        if bytes.len() < head || bytes[0] as usize != role.agg_id() {
            return Err(bad());
        }
        Ok(Prio1State {
            role,
            digest: bytes[1..1 + DIGEST_LEN].try_into().expect("32 bytes"),
            share: VerifierShare::decode(&bytes[1 + DIGEST_LEN..head]).ok_or_else(bad)?,
            data: decode_elements(&bytes[head..], prio.length())?,
        })
    }

    /// Combines with the peer's verifier share: the output share of a
    /// valid report and the report's nonce.
    pub fn finish(&self, peer: &[u8]) -> Result<(Vec<Fp>, Nonce), Rejection> {
        if peer.len() != VERIFIER_SHARE_LEN + DIGEST_LEN {
            return Err(Rejection::PeerShareUndecodable);
        }
        let (share, digest) = peer.split_at(VERIFIER_SHARE_LEN);
        let peer_share = VerifierShare::decode(share).ok_or(Rejection::PeerShareUndecodable)?;
        if !is_valid(&self.share, &peer_share) {
            return Err(Rejection::InvalidProof);
        }
        let (a, b) = match self.role {
            Role::A => (&self.digest[..], digest),
            Role::B => (digest, &self.digest[..]),
        };
        let nonce = Sha256::new()
            .chain_update(b"prio-processor prio1 nonce v1")
            .chain_update(a)
            .chain_update(b)
            .finalize();
        Ok((
            self.data.clone(),
            nonce[..NONCE_LEN].try_into().expect("16 of 32"),
        ))
    }
}

pub(super) use field::encode_fixed as encode_elements;

pub(super) fn decode_elements(bytes: &[u8], len: usize) -> Result<Vec<Fp>, VdafUseError> {
    field::decode_fixed(bytes, len).ok_or(VdafUseError::Codec(
        prio::codec::CodecError::UnexpectedValue,
    ))
}

/// `into += other`, element by element.
pub(super) fn add_into(into: &mut [Fp], other: &[Fp]) -> Result<(), VdafUseError> {
    if into.len() != other.len() {
        return Err(VdafUseError::Mismatch);
    }
    for (x, y) in into.iter_mut().zip(other) {
        *x += *y;
    }
    Ok(())
}
