//! The HPKE share envelope (RFC 9180 base mode: DHKEM(X25519, HKDF-SHA256),
//! HKDF-SHA256, AES-128-GCM, as DAP uses) and the server key pairs.
//!
//! ```text
//! envelope v2 = version:u8 (=2) || role:u8 (0 = a, 1 = b) || key_id[4]
//!            || batch_id_len:u16be || batch_id || enc[32] || ciphertext
//! envelope v1 = version:u8 (=1) || role:u8 || batch_id_len:u16be || batch_id || enc || ciphertext
//! aad         = everything before enc;  info = "prio-processor share v1"
//! ```
//! The header binds the sealed report share to one batch id and one server;
//! a server refuses an envelope bound elsewhere before trying to open it.
//! The key id names the server key it was sealed to, so that a server can
//! hold several keys ([`KeySet`]) while clients move to a new one; v1
//! envelopes (no key id) are still opened, by trying each key.

use hpke::aead::AesGcm128;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};

use super::{Rejection, Role};

type Kem = X25519HkdfSha256;

/// The envelope clients seal; [`ENVELOPE_V1`] stays readable.
pub const ENVELOPE_VERSION: u8 = 2;
pub const ENVELOPE_V1: u8 = 1;
/// Length of a key id: the first bytes of a hash of the public key.
pub const KEY_ID_LEN: usize = 4;

/// Which server key an envelope was sealed to.
pub type KeyId = [u8; KEY_ID_LEN];
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
    #[error("no private key given")]
    NoKey,
    #[error(
        "keys {first} and {second} of the list have the same key id: make another key with keygen"
    )]
    SameKeyId { first: usize, second: usize },
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

    /// The plain X25519 public key, as libprio's clients seal to it.
    pub fn x25519(&self) -> x25519_dalek::PublicKey {
        x25519_dalek::PublicKey::from(<[u8; 32]>::from(self.0.to_bytes()))
    }

    /// `SHA-256("prio-processor key id v1" || public key)[..4]`: what a
    /// client writes in the envelope, from the public key it already has.
    pub fn key_id(&self) -> KeyId {
        use sha2::Digest;
        let digest = sha2::Sha256::new()
            .chain_update(b"prio-processor key id v1")
            .chain_update(self.0.to_bytes())
            .finalize();
        let mut id = [0; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        id
    }
}

/// The private keys a server opens shares with: the current one first,
/// then older ones that clients may still seal to. Key ids are distinct.
#[derive(Clone)]
pub struct KeySet {
    keys: Vec<(KeyId, PrivateKey)>,
    /// The same keys as plain X25519 secrets, made once for libprio's packets.
    x25519: Vec<x25519_dalek::StaticSecret>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.keys).finish()
    }
}

impl KeySet {
    /// A key set; empty or with two keys of one key id, an error.
    pub fn new(keys: Vec<PrivateKey>) -> Result<Self, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::NoKey);
        }
        let mut set: Vec<(KeyId, PrivateKey)> = Vec::with_capacity(keys.len());
        for (n, key) in keys.into_iter().enumerate() {
            let id = key.public_key().key_id();
            if let Some(earlier) = set.iter().position(|(other, _)| *other == id) {
                return Err(KeyError::SameKeyId {
                    first: earlier + 1,
                    second: n + 1,
                });
            }
            set.push((id, key));
        }
        let x25519 = set
            .iter()
            .map(|(_, k)| x25519_dalek::StaticSecret::from(<[u8; 32]>::from(k.0.to_bytes())))
            .collect();
        Ok(KeySet { keys: set, x25519 })
    }

    /// Comma-separated hex keys, the current one first.
    pub fn from_hex_list(text: &str) -> Result<Self, KeyError> {
        KeySet::new(
            text.split(',')
                .map(PrivateKey::from_hex)
                .collect::<Result<_, _>>()?,
        )
    }

    /// The key clients should seal to now.
    pub fn current(&self) -> &PrivateKey {
        &self.keys[0].1
    }

    fn by_id(&self, id: &KeyId) -> Option<&PrivateKey> {
        self.keys.iter().find(|(k, _)| k == id).map(|(_, key)| key)
    }

    fn keys(&self) -> impl Iterator<Item = &PrivateKey> {
        self.keys.iter().map(|(_, key)| key)
    }

    /// The keys as plain X25519 secrets, current first: libprio's packets
    /// name no key, so each is tried.
    pub fn x25519(&self) -> &[x25519_dalek::StaticSecret] {
        &self.x25519
    }
}

impl From<PrivateKey> for KeySet {
    fn from(key: PrivateKey) -> Self {
        KeySet::new(vec![key]).expect("one key")
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

/// The header of an envelope for `role` and `batch_id`: v2 with a key id,
/// v1 without.
fn header(role: Role, key_id: Option<&KeyId>, batch_id: &str) -> Vec<u8> {
    let id = batch_id.as_bytes();
    let mut h = Vec::with_capacity(8 + id.len() + ENC_LEN);
    match key_id {
        Some(key_id) => {
            h.push(ENVELOPE_VERSION);
            h.push(role.agg_id() as u8);
            h.extend_from_slice(key_id);
        }
        None => {
            h.push(ENVELOPE_V1);
            h.push(role.agg_id() as u8);
        }
    }
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
    let mut out = header(role, Some(&recipient.key_id()), batch_id);
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

/// The length of a (version 2) envelope of a `plaintext_len`-byte share for
/// `batch_id`: the largest any version writes.
pub fn sealed_len(batch_id: &str, plaintext_len: usize) -> usize {
    2 + KEY_ID_LEN + 2 + batch_id.len() + ENC_LEN + plaintext_len + TAG_LEN
}

/// Opens an envelope addressed to `role`'s server for `batch_id` with the
/// key it names (v2), or with whichever key opens it (v1).
pub fn open(
    keys: &KeySet,
    role: Role,
    batch_id: &str,
    envelope: &[u8],
) -> Result<Vec<u8>, Rejection> {
    // Anything that is not a whole envelope of a known version (libprio v1
    // ciphertexts from Firefox 69, truncations) cannot be decrypted by us.
    let key_id: Option<KeyId> = match envelope.first() {
        Some(&ENVELOPE_VERSION) => Some(
            envelope
                .get(2..2 + KEY_ID_LEN)
                .and_then(|id| id.try_into().ok())
                .ok_or(Rejection::Undecryptable)?,
        ),
        Some(&ENVELOPE_V1) => None,
        _ => return Err(Rejection::Undecryptable),
    };
    let len_at = if key_id.is_some() { 2 + KEY_ID_LEN } else { 2 };
    let id_len = envelope
        .get(len_at..len_at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
        .ok_or(Rejection::Undecryptable)?;
    let header_len = len_at + 2 + id_len;
    if envelope.len() < header_len + ENC_LEN + TAG_LEN {
        return Err(Rejection::Undecryptable);
    }
    let (aad, rest) = envelope.split_at(header_len);
    if aad != header(role, key_id.as_ref(), batch_id).as_slice() {
        return Err(Rejection::WrongBinding);
    }
    let (enc, ciphertext) = rest.split_at(ENC_LEN);
    let enc =
        <Kem as hpke::Kem>::EncappedKey::from_bytes(enc).map_err(|_| Rejection::Undecryptable)?;
    let open_with = |key: &PrivateKey| {
        hpke::single_shot_open::<AesGcm128, HkdfSha256, Kem>(
            &OpModeR::Base,
            &key.0,
            &enc,
            HPKE_INFO,
            ciphertext,
            aad,
        )
        .ok()
    };
    match key_id {
        Some(id) => {
            let key = keys.by_id(&id).ok_or(Rejection::UnknownKey)?;
            open_with(key).ok_or(Rejection::Undecryptable)
        }
        None => keys
            .keys()
            .find_map(open_with)
            .ok_or(Rejection::Undecryptable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_set_opens_what_was_sealed_to_any_of_its_keys_and_names_an_unknown_one() {
        let (old, new) = (generate_keypair(), generate_keypair());
        let keys = KeySet::new(vec![new.clone(), old.clone()]).unwrap();
        assert_eq!(keys.current().public_key(), new.public_key());
        for key in [&old, &new] {
            let sealed = seal(&key.public_key(), Role::A, "b", b"share").unwrap();
            assert_eq!(sealed.len(), sealed_len("b", 5));
            assert_eq!(sealed[0], ENVELOPE_VERSION);
            assert_eq!(sealed[2..6], key.public_key().key_id());
            assert_eq!(open(&keys, Role::A, "b", &sealed).unwrap(), b"share");
        }
        let stranger = seal(&generate_keypair().public_key(), Role::A, "b", b"x").unwrap();
        assert_eq!(
            open(&keys, Role::A, "b", &stranger),
            Err(Rejection::UnknownKey)
        );
        // A key id changed in transit is part of the header: the open fails.
        let mut relabelled = seal(&old.public_key(), Role::A, "b", b"x").unwrap();
        relabelled[2..6].copy_from_slice(&new.public_key().key_id());
        assert_eq!(
            open(&keys, Role::A, "b", &relabelled),
            Err(Rejection::Undecryptable)
        );
        assert!(matches!(
            KeySet::new(vec![old.clone(), new.clone(), old.clone()]),
            Err(KeyError::SameKeyId {
                first: 1,
                second: 3
            })
        ));
        let listed = KeySet::from_hex_list(&format!("{},{}", new.to_hex(), old.to_hex())).unwrap();
        assert_eq!(listed.current().public_key(), new.public_key());
    }

    #[test]
    fn seal_open_round_trip_and_bindings() {
        let key = generate_keypair();
        let keys = KeySet::from(key.clone());
        let sealed = seal(&key.public_key(), Role::A, "batch-1", b"hello").unwrap();
        assert_eq!(open(&keys, Role::A, "batch-1", &sealed).unwrap(), b"hello");
        assert_eq!(
            open(&keys, Role::A, "batch-2", &sealed),
            Err(Rejection::WrongBinding)
        );
        assert_eq!(
            open(&keys, Role::B, "batch-1", &sealed),
            Err(Rejection::WrongBinding)
        );
        let other = generate_keypair();
        assert_eq!(
            open(&other.into(), Role::A, "batch-1", &sealed),
            Err(Rejection::UnknownKey)
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            open(&keys, Role::A, "batch-1", &tampered),
            Err(Rejection::Undecryptable)
        );
        assert_eq!(
            open(&keys, Role::A, "batch-1", &sealed[..20]),
            Err(Rejection::Undecryptable)
        );
        assert_eq!(
            open(&keys, Role::A, "batch-1", &[]),
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
