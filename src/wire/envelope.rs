//! The HPKE share envelope (RFC 9180 base mode: DHKEM(X25519, HKDF-SHA256),
//! HKDF-SHA256, AES-128-GCM, as DAP uses) and the server key pairs.
//!
//! ```text
//! envelope = version:u8 (=1) || role:u8 (0 = a, 1 = b)
//!         || batch_id_len:u16be || batch_id || enc[32] || ciphertext
//! aad      = everything before enc;  info = "prio-processor share v1"
//! ```
//! The header binds the sealed report share to one batch id and one server;
//! a server refuses an envelope bound elsewhere before trying to open it.

use hpke::aead::AesGcm128;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};

use super::{Rejection, Role};

type Kem = X25519HkdfSha256;

pub const ENVELOPE_VERSION: u8 = 1;
pub const HPKE_INFO: &[u8] = b"prio-processor share v1";
/// X25519 encapsulated key length.
pub const ENC_LEN: usize = 32;
/// AES-128-GCM tag length.
pub const TAG_LEN: usize = 16;
pub const KEY_LEN: usize = 32;

/// A server's X25519 private key. Never printed: `Debug` is redacted.
#[derive(Clone)]
pub struct PrivateKey(<Kem as hpke::Kem>::PrivateKey);

/// A server's X25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(<Kem as hpke::Kem>::PublicKey);

/// A key that could not be parsed. Deliberately carries no key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{what} is not valid hex (expected {KEY_LEN} bytes as 64 hex digits)")]
    NotHex { what: &'static str },
    #[error("{what} has {got} bytes, expected {KEY_LEN}")]
    WrongLength { what: &'static str, got: usize },
    #[error("{what} is not a valid key")]
    Invalid { what: &'static str },
}

/// The 32 bytes of a hex-encoded key.
pub(super) fn key_bytes(hex_text: &str, what: &'static str) -> Result<Vec<u8>, KeyError> {
    let bytes = hex::decode(hex_text.trim()).map_err(|_| KeyError::NotHex { what })?;
    if bytes.len() != KEY_LEN {
        return Err(KeyError::WrongLength {
            what,
            got: bytes.len(),
        });
    }
    Ok(bytes)
}

impl PrivateKey {
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let what = "private key";
        let bytes = key_bytes(text, what)?;
        Ok(PrivateKey(
            Deserializable::from_bytes(&bytes).map_err(|_| KeyError::Invalid { what })?,
        ))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(Kem::sk_to_pk(&self.0))
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl PublicKey {
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let what = "public key";
        let bytes = key_bytes(text, what)?;
        Ok(PublicKey(
            Deserializable::from_bytes(&bytes).map_err(|_| KeyError::Invalid { what })?,
        ))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

/// A fresh key pair from the operating system's randomness.
pub fn generate_keypair() -> PrivateKey {
    PrivateKey(Kem::gen_keypair().0)
}

/// A key pair derived from input keying material (RFC 9180 `DeriveKeyPair`); for test vectors.
pub fn derive_keypair(ikm: &[u8]) -> PrivateKey {
    PrivateKey(Kem::derive_keypair(ikm).0)
}

fn header(role: Role, batch_id: &str) -> Vec<u8> {
    let id = batch_id.as_bytes();
    let mut h = Vec::with_capacity(4 + id.len() + ENC_LEN);
    h.push(ENVELOPE_VERSION);
    h.push(role.agg_id() as u8);
    h.extend_from_slice(&(id.len() as u16).to_be_bytes());
    h.extend_from_slice(id);
    h
}

/// Errors sealing a share: only an over-long batch id can cause one.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("batch id is {0} bytes; at most 65535 fit the envelope")]
    BatchIdTooLong(usize),
    #[error("HPKE seal failed: {0}")]
    Hpke(hpke::HpkeError),
}

/// Seals `plaintext` for `role`'s server, bound to `batch_id`.
pub fn seal(
    recipient: &PublicKey,
    role: Role,
    batch_id: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    seal_with_rng(recipient, role, batch_id, plaintext, &mut rand::rng())
}

/// [`seal`] with caller-chosen randomness for the ephemeral key (test vectors).
pub fn seal_with_rng(
    recipient: &PublicKey,
    role: Role,
    batch_id: &str,
    plaintext: &[u8],
    rng: &mut impl hpke::rand_core::CryptoRng,
) -> Result<Vec<u8>, SealError> {
    if batch_id.len() > u16::MAX as usize {
        return Err(SealError::BatchIdTooLong(batch_id.len()));
    }
    let mut out = header(role, batch_id);
    let (enc, ciphertext) = hpke::single_shot_seal_with_rng::<AesGcm128, HkdfSha256, Kem>(
        &OpModeS::Base,
        &recipient.0,
        HPKE_INFO,
        plaintext,
        &out,
        rng,
    )
    .map_err(SealError::Hpke)?;
    out.extend_from_slice(&enc.to_bytes());
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Opens an envelope addressed to `role`'s server for `batch_id`.
pub fn open(
    key: &PrivateKey,
    role: Role,
    batch_id: &str,
    envelope: &[u8],
) -> Result<Vec<u8>, Rejection> {
    // Anything that is not a whole v1 envelope (libprio v1 ciphertexts from
    // Firefox 69, truncations) cannot be decrypted by us.
    if envelope.len() < 4 || envelope[0] != ENVELOPE_VERSION {
        return Err(Rejection::Undecryptable);
    }
    let id_len = u16::from_be_bytes([envelope[2], envelope[3]]) as usize;
    let header_len = 4 + id_len;
    if envelope.len() < header_len + ENC_LEN + TAG_LEN {
        return Err(Rejection::Undecryptable);
    }
    let (aad, rest) = envelope.split_at(header_len);
    if aad != header(role, batch_id).as_slice() {
        return Err(Rejection::WrongBinding);
    }
    let (enc, ciphertext) = rest.split_at(ENC_LEN);
    let enc =
        <Kem as hpke::Kem>::EncappedKey::from_bytes(enc).map_err(|_| Rejection::Undecryptable)?;
    hpke::single_shot_open::<AesGcm128, HkdfSha256, Kem>(
        &OpModeR::Base,
        &key.0,
        &enc,
        HPKE_INFO,
        ciphertext,
        aad,
    )
    .map_err(|_| Rejection::Undecryptable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_bindings() {
        let key = generate_keypair();
        let sealed = seal(&key.public_key(), Role::A, "batch-1", b"hello").unwrap();
        assert_eq!(open(&key, Role::A, "batch-1", &sealed).unwrap(), b"hello");
        assert_eq!(
            open(&key, Role::A, "batch-2", &sealed),
            Err(Rejection::WrongBinding)
        );
        assert_eq!(
            open(&key, Role::B, "batch-1", &sealed),
            Err(Rejection::WrongBinding)
        );
        let other = generate_keypair();
        assert_eq!(
            open(&other, Role::A, "batch-1", &sealed),
            Err(Rejection::Undecryptable)
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            open(&key, Role::A, "batch-1", &tampered),
            Err(Rejection::Undecryptable)
        );
        assert_eq!(
            open(&key, Role::A, "batch-1", &sealed[..20]),
            Err(Rejection::Undecryptable)
        );
        assert_eq!(
            open(&key, Role::A, "batch-1", &[]),
            Err(Rejection::Undecryptable)
        );
    }

    #[test]
    fn keys_round_trip_through_hex_and_errors_hide_material() {
        let key = generate_keypair();
        let again = PrivateKey::from_hex(&key.to_hex()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        assert_eq!(
            PublicKey::from_hex(&key.public_key().to_hex()).unwrap(),
            key.public_key()
        );
        assert_eq!(format!("{key:?}"), "PrivateKey(<redacted>)");
        let secret = "zz".repeat(32);
        let err = PrivateKey::from_hex(&secret).unwrap_err().to_string();
        assert!(!err.contains(&secret));
        assert!(matches!(
            PrivateKey::from_hex("abcd"),
            Err(KeyError::WrongLength { got: 2, .. })
        ));
    }
}
