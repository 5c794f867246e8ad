//! Signed objects. Everything a server writes for its peer is signed with
//! the server's Ed25519 key over the object's content and its context:
//! protocol version, submission date, the object's name below the date's
//! exchange directory (`STEP/batch_id=X/part-NNNNN.parquet`: step, batch id
//! and part), and the sender's role. The signature travels beside the
//! object as a small JSON statement that repeats the context in the clear,
//! so that a refusal can say which part of it did not match.
//!
//! ```text
//! signed bytes = "prio-processor signed object v1" || 0x00
//!             || u32be(len(date)) || date || u32be(len(object)) || object
//!             || sender (0 = a, 1 = b) || SHA-256(content)
//! ```

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::envelope::{key_bytes, KeyError};
use super::Role;

/// The version of the signed statement, and of what it binds.
pub const SIGNED_OBJECT_VERSION: u32 = 1;

/// A server's Ed25519 signing key. Never printed: `Debug` is redacted.
#[derive(Clone)]
pub struct SigningPrivateKey(SigningKey);

/// A server's Ed25519 public key, which its peer checks signatures with.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningPublicKey(VerifyingKey);

impl SigningPrivateKey {
    /// A fresh key from the operating system's randomness.
    pub fn generate() -> Self {
        SigningPrivateKey(SigningKey::from_bytes(&rand::random()))
    }

    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let bytes = key_bytes(text, "signing private key")?;
        let bytes: [u8; 32] = bytes.try_into().expect("key_bytes checks the length");
        Ok(SigningPrivateKey(SigningKey::from_bytes(&bytes)))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    pub fn public_key(&self) -> SigningPublicKey {
        SigningPublicKey(self.0.verifying_key())
    }

    /// The statement to store beside an object with `content` sent in `context`.
    pub fn sign(&self, context: &SignedContext, content: &[u8]) -> Vec<u8> {
        let signature = self.0.sign(&signed_bytes(context, content));
        let statement = Statement {
            version: SIGNED_OBJECT_VERSION,
            date: context.date.clone(),
            object: context.object.clone(),
            sender: context.sender,
            signer: self.public_key().to_hex(),
            signature: hex::encode(signature.to_bytes()),
        };
        serde_json::to_vec_pretty(&statement).expect("JSON")
    }
}

impl std::fmt::Debug for SigningPrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningPrivateKey(<redacted>)")
    }
}

impl SigningPublicKey {
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let what = "signing public key";
        let bytes: [u8; 32] = key_bytes(text, what)?
            .try_into()
            .expect("key_bytes checks the length");
        VerifyingKey::from_bytes(&bytes)
            .map(SigningPublicKey)
            .map_err(|_| KeyError::Invalid { what })
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    /// Checks a statement read beside an object against what this server
    /// expects of it: `self` as signer, `context`, and `content`.
    pub fn verify(
        &self,
        context: &SignedContext,
        content: &[u8],
        statement: &[u8],
    ) -> Result<(), Mismatch> {
        let statement: Statement =
            serde_json::from_slice(statement).map_err(|e| Mismatch::Malformed(e.to_string()))?;
        let expect = |what: &'static str, found: String, expected: String| {
            if found == expected {
                Ok(())
            } else {
                Err(Mismatch::Field {
                    what,
                    found,
                    expected,
                })
            }
        };
        expect(
            "version",
            statement.version.to_string(),
            SIGNED_OBJECT_VERSION.to_string(),
        )?;
        expect("signing key", statement.signer.clone(), self.to_hex())?;
        expect("date", statement.date.clone(), context.date.clone())?;
        expect("object", statement.object.clone(), context.object.clone())?;
        expect(
            "sender",
            statement.sender.to_string(),
            context.sender.to_string(),
        )?;
        let signature: [u8; 64] = hex::decode(&statement.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Mismatch::Malformed("signature is not 64 bytes of hex".into()))?;
        self.0
            .verify_strict(
                &signed_bytes(context, content),
                &Signature::from_bytes(&signature),
            )
            .map_err(|_| Mismatch::Content)
    }
}

impl std::fmt::Debug for SigningPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningPublicKey({})", self.to_hex())
    }
}

/// Where an object belongs, besides its content: what its signature binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedContext {
    pub date: String,
    /// `STEP/NAME`, the object's name below the date's exchange directory.
    pub object: String,
    pub sender: Role,
}

/// The statement stored beside a signed object.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Statement {
    version: u32,
    date: String,
    object: String,
    sender: Role,
    /// The signer's public key, hex.
    signer: String,
    /// The Ed25519 signature over the signed bytes, hex.
    signature: String,
}

/// Why a received object was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("it is not signed (no .sig object beside it)")]
    Unsigned,
    #[error("its signature statement is malformed: {0}")]
    Malformed(String),
    #[error("it is bound to {what} {found:?}, expected {expected:?}")]
    Field {
        what: &'static str,
        found: String,
        expected: String,
    },
    #[error("its content does not match its signature (changed or truncated after signing)")]
    Content,
}

fn signed_bytes(context: &SignedContext, content: &[u8]) -> Vec<u8> {
    let mut out = b"prio-processor signed object v1\0".to_vec();
    for field in [context.date.as_bytes(), context.object.as_bytes()] {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field);
    }
    out.push(context.sender.agg_id() as u8);
    out.extend_from_slice(&Sha256::digest(content));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> SignedContext {
        SignedContext {
            date: "2019-06-26".into(),
            object: "verify1/batch_id=x/part-00000.parquet".into(),
            sender: Role::A,
        }
    }

    #[test]
    fn a_signed_object_verifies_only_as_signed() {
        let key = SigningPrivateKey::generate();
        let peer = key.public_key();
        let statement = key.sign(&context(), b"rows");
        assert_eq!(statement, key.sign(&context(), b"rows"), "deterministic");
        assert_eq!(peer.verify(&context(), b"rows", &statement), Ok(()));
        assert_eq!(
            peer.verify(&context(), b"rowz", &statement),
            Err(Mismatch::Content)
        );
        let other_date = SignedContext {
            date: "2019-06-25".into(),
            ..context()
        };
        let err = peer.verify(&other_date, b"rows", &statement).unwrap_err();
        assert!(err.to_string().contains("date \"2019-06-26\""), "{err}");
        let other_part = SignedContext {
            object: "verify1/batch_id=x/part-00001.parquet".into(),
            ..context()
        };
        assert!(matches!(
            peer.verify(&other_part, b"rows", &statement),
            Err(Mismatch::Field { what: "object", .. })
        ));
        let from_b = SignedContext {
            sender: Role::B,
            ..context()
        };
        assert!(matches!(
            peer.verify(&from_b, b"rows", &statement),
            Err(Mismatch::Field { what: "sender", .. })
        ));
        let stranger = SigningPrivateKey::generate();
        assert!(matches!(
            peer.verify(&context(), b"rows", &stranger.sign(&context(), b"rows")),
            Err(Mismatch::Field {
                what: "signing key",
                ..
            })
        ));
        // A statement that claims the right signer but was signed by another key.
        let mut forged: serde_json::Value =
            serde_json::from_slice(&stranger.sign(&context(), b"rows")).unwrap();
        forged["signer"] = serde_json::json!(peer.to_hex());
        assert_eq!(
            peer.verify(&context(), b"rows", &serde_json::to_vec(&forged).unwrap()),
            Err(Mismatch::Content)
        );
        assert!(matches!(
            peer.verify(&context(), b"rows", b"{}"),
            Err(Mismatch::Malformed(_))
        ));
    }

    #[test]
    fn keys_round_trip_through_hex_and_hide_the_private_one() {
        let key = SigningPrivateKey::generate();
        let back = SigningPrivateKey::from_hex(&key.to_hex()).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        assert_eq!(
            SigningPublicKey::from_hex(&key.public_key().to_hex()).unwrap(),
            key.public_key()
        );
        assert!(!format!("{key:?}").contains(&key.to_hex()));
        assert!(SigningPublicKey::from_hex("zz").is_err());
    }
}
