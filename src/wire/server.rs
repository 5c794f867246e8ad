//! What a server does with one report share before talking to its peer:
//! base64-decode, open the envelope, decode, and start verification.

use super::envelope::{open, PrivateKey};
use super::ping::decode_base64;
use super::vdaf::{ReportShare, Vdaf, VerifyKey, VerifyState};
use super::{Rejection, Role};

/// One server's identity and secrets.
#[derive(Clone)]
pub struct ServerSecrets {
    pub role: Role,
    pub private_key: PrivateKey,
    pub verify_key: VerifyKey,
}

impl std::fmt::Debug for ServerSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSecrets")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Opens a base64 share envelope and runs `verify_init` on it. Returns the
/// verification state and the verifier share for the peer.
pub fn open_and_verify_init(
    vdaf: &Vdaf,
    secrets: &ServerSecrets,
    batch_id: &str,
    share_base64: &str,
) -> Result<(VerifyState, Vec<u8>), Rejection> {
    let envelope = decode_base64(share_base64).ok_or(Rejection::MalformedEnvelope)?;
    open_envelope_and_verify_init(vdaf, secrets, batch_id, &envelope)
}

/// [`open_and_verify_init`] on the raw envelope bytes.
pub fn open_envelope_and_verify_init(
    vdaf: &Vdaf,
    secrets: &ServerSecrets,
    batch_id: &str,
    envelope: &[u8],
) -> Result<(VerifyState, Vec<u8>), Rejection> {
    let plaintext = open(&secrets.private_key, secrets.role, batch_id, envelope)?;
    let report = ReportShare::decode(&plaintext)?;
    vdaf.verify_init(&secrets.verify_key, batch_id, secrets.role, &report)
}
