//! The signed exchange between the two servers and each server's claim on
//! its buckets: everything sent to the peer is followed by `NAME.sig`, and
//! nothing received is read unless its signature binds it to this date,
//! step, object and sender under the peer's key.

use bytes::Bytes;

use super::ServerBuckets;
use crate::storage::location::{Location, StorageError};
use crate::storage::messages::same_json;
use crate::storage::tables::malformed;
use crate::wire::protocol::Step;
use crate::wire::signing::{Mismatch, SignedContext, SigningPrivateKey, SigningPublicKey};
use crate::wire::Role;

/// The marker at the root of a server's private bucket and inbox: which
/// server the bucket belongs to, written at first use.
pub(super) const OWNER: &str = "_OWNER.json";

/// What [`OWNER`] holds.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Owner {
    server_id: Role,
    /// The server's signing public key, hex.
    signing_key: String,
}

/// A signature statement's name beside the object it signs.
pub(super) fn sig_name(name: &str) -> String {
    format!("{name}.sig")
}

/// What a server signs what it sends with, and checks what it receives with.
#[derive(Debug)]
pub struct Signatures {
    pub role: Role,
    pub own: SigningPrivateKey,
    /// The peer's public signing key.
    pub peer: SigningPublicKey,
}

impl ServerBuckets {
    /// These buckets as the server that signs with `signatures` uses them.
    pub fn signed(mut self, signatures: Signatures) -> Self {
        self.signatures = Some(std::sync::Arc::new(signatures));
        self
    }

    pub(super) fn signatures(&self) -> &Signatures {
        self.signatures
            .as_deref()
            .expect("a server's exchanges are set up with its signing keys")
    }

    /// Marks the private bucket and the inbox as this server's at first use,
    /// and refuses buckets that are the other server's (by their marker) or
    /// that are the same bucket under two names.
    pub fn claim(&self) -> Result<(), StorageError> {
        let signatures = self.signatures();
        let same_as = |a: &Location, b: &Location, what: &str| {
            if a.url() == b.url() {
                Err(StorageError::NotOwn {
                    url: a.url().to_string(),
                    message: format!(
                        "{what}; each server needs its own private bucket and inbox, and writes \
                         into the peer's inbox (BUCKET_EXTERNAL_SHARED)"
                    ),
                })
            } else {
                Ok(())
            }
        };
        same_as(&self.inbox, &self.outbox, "the inbox is also the outbox")?;
        same_as(
            &self.private,
            &self.inbox,
            "the private bucket is also the inbox",
        )?;
        same_as(
            &self.private,
            &self.outbox,
            "the private bucket is also the peer's inbox",
        )?;
        let mine = Owner {
            server_id: signatures.role,
            signing_key: signatures.own.public_key().to_hex(),
        };
        let marker = serde_json::to_vec_pretty(&mine).expect("JSON");
        for (bucket, var) in [
            (&self.private, "BUCKET_INTERNAL_PRIVATE"),
            (&self.inbox, "BUCKET_INTERNAL_SHARED"),
        ] {
            let url = format!("{}/{OWNER}", bucket.url());
            let owner = match bucket.get(OWNER) {
                Ok(bytes) => {
                    serde_json::from_slice::<Owner>(&bytes).map_err(|e| malformed(&url, e))?
                }
                Err(StorageError::NotFound { .. }) => {
                    bucket.put_once(OWNER, Bytes::from(marker.clone()), same_json)?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if owner.server_id != mine.server_id {
                return Err(StorageError::NotOwn {
                    url,
                    message: format!(
                        "{var} belongs to server {}, not to this server ({}); point it at this \
                         server's own bucket",
                        owner.server_id, mine.server_id
                    ),
                });
            }
            if owner.signing_key != mine.signing_key {
                return Err(StorageError::NotOwn {
                    url,
                    message: format!(
                        "{var} was claimed by a server {} with another signing key; check \
                         PRIVATE_SIGNING_KEY_HEX (after rotating this server's signing key, \
                         delete this marker)",
                        owner.server_id
                    ),
                });
            }
        }
        Ok(())
    }

    /// What a signature of `step`'s object `name` binds, sent by `sender`.
    fn context(&self, step: Step, name: &str, sender: Role) -> SignedContext {
        SignedContext {
            date: self.date.clone(),
            object: format!("{step}/{name}"),
            sender,
        }
    }

    /// Sends `step`'s object `name` to the peer, written once, then its
    /// signature. A rerun keeps a signature that still signs what is stored.
    pub(super) fn send(
        &self,
        step: Step,
        name: &str,
        bytes: Bytes,
        same: impl Fn(&Bytes, &Bytes) -> bool,
    ) -> Result<(), StorageError> {
        let signatures = self.signatures();
        let sent = self.sent(step);
        sent.put_once(name, bytes.clone(), same)?;
        let context = self.context(step, name, signatures.role);
        let statement = Bytes::from(signatures.own.sign(&context, &bytes));
        let own_key = signatures.own.public_key();
        sent.put_once(&sig_name(name), statement, |existing, _| {
            sent.get(name)
                .is_ok_and(|stored| own_key.verify(&context, &stored, existing).is_ok())
        })
    }

    /// The peer's object `name` of `step`, once checked against its
    /// signature; `None` when the peer has not sent it.
    pub(super) fn receive(&self, step: Step, name: &str) -> Result<Option<Bytes>, StorageError> {
        let received = self.received(step);
        let content = match received.get(name) {
            Ok(content) => content,
            Err(StorageError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let url = format!("{}/{name}", received.url());
        let statement = match received.get(&sig_name(name)) {
            Ok(statement) => statement,
            Err(StorageError::NotFound { .. }) => {
                return Err(StorageError::Refused {
                    url,
                    reason: Mismatch::Unsigned,
                })
            }
            Err(e) => return Err(e),
        };
        let signatures = self.signatures();
        let context = self.context(step, name, signatures.role.peer());
        signatures
            .peer
            .verify(&context, &content, &statement)
            .map_err(|reason| StorageError::Refused { url, reason })?;
        Ok(Some(content))
    }
}
