//! libprio's public-key encryption of a packet: an ephemeral X25519 key,
//! ECDH with the server's key, and AES-128-GCM under
//! `SHA-256(Z || 00000001)[..16]` (NSS's `CKD_SHA256_KDF`):
//!
//! `ephemeral public key (32) || nonce (12) || ciphertext || tag (16)`,
//! with additional data `"PrioPacket" || ephemeral public key || nonce`.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes128Gcm;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// What encryption adds to a packet.
pub const OVERHEAD: usize = KEY_LEN + NONCE_LEN + TAG_LEN;
const TAG: &[u8] = b"PrioPacket";

/// The AES-GCM key and additional data for one ephemeral key and nonce.
fn cipher(shared: &[u8; 32], ephemeral: &[u8], nonce: &[u8]) -> (Aes128Gcm, Vec<u8>) {
    let digest = Sha256::new()
        .chain_update(shared)
        .chain_update(1u32.to_be_bytes())
        .finalize();
    let cipher = Aes128Gcm::new_from_slice(&digest[..16]).expect("16-byte key");
    (cipher, [TAG, ephemeral, nonce].concat())
}

/// Encrypts `packet` to `server`'s key with a fresh ephemeral key.
pub fn seal(server: &PublicKey, packet: &[u8]) -> Vec<u8> {
    let ephemeral = StaticSecret::from(rand::random::<[u8; 32]>());
    let ephemeral_public = PublicKey::from(&ephemeral);
    let nonce: [u8; NONCE_LEN] = rand::random();
    let shared = ephemeral.diffie_hellman(server);
    let (cipher, aad) = cipher(shared.as_bytes(), ephemeral_public.as_bytes(), &nonce);
    let sealed = cipher
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: packet,
                aad: &aad,
            },
        )
        .expect("AES-GCM encrypts any packet this size");
    [ephemeral_public.as_bytes(), &nonce[..], &sealed].concat()
}

/// Decrypts a sealed packet with `key`; `None` if it is not one sealed to it.
pub fn open(key: &StaticSecret, sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < OVERHEAD {
        return None;
    }
    let (ephemeral, rest) = sealed.split_at(KEY_LEN);
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let ephemeral_key = PublicKey::from(<[u8; KEY_LEN]>::try_from(ephemeral).ok()?);
    let shared = key.diffie_hellman(&ephemeral_key);
    // A low-order ephemeral key makes an all-zero secret anyone knows.
    if !shared.was_contributory() {
        return None;
    }
    let (cipher, aad) = cipher(shared.as_bytes(), ephemeral, nonce);
    cipher
        .decrypt(
            <&[u8; NONCE_LEN]>::try_from(nonce).ok()?.into(),
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_packets_open_with_the_key_only_and_resist_tampering() {
        let key = StaticSecret::from(rand::random::<[u8; 32]>());
        let other = StaticSecret::from(rand::random::<[u8; 32]>());
        let sealed = seal(&PublicKey::from(&key), b"packet");
        assert_eq!(sealed.len(), OVERHEAD + 6);
        assert_eq!(open(&key, &sealed).as_deref(), Some(&b"packet"[..]));
        assert_eq!(open(&other, &sealed), None);
        for i in [0, 33, 50, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(open(&key, &bad), None, "byte {i}");
        }
        assert_eq!(open(&key, &sealed[..OVERHEAD - 1]), None);
        // The all-zero point: a low-order key.
        let mut low = sealed.clone();
        low[..32].fill(0);
        assert_eq!(open(&key, &low), None);
    }
}
