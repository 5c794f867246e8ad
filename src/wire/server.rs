//! What a server does with one report share before talking to its peer:
//! base64-decode, open the envelope, decode, and start verification.

use super::envelope::{open, PrivateKey};
use super::vdaf::{OutputShare, ReportShare, Vdaf, VerifyKey, VerifyState};
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

/// Opens a share envelope and runs `verify_init` on it. Returns the
/// verification state and the verifier share for the peer.
pub fn open_and_verify_init(
    vdaf: &Vdaf,
    secrets: &ServerSecrets,
    batch_id: &str,
    envelope: &[u8],
) -> Result<(VerifyState, Vec<u8>), Rejection> {
    let plaintext = open(&secrets.private_key, secrets.role, batch_id, envelope)?;
    let report = ReportShare::decode(&plaintext)?;
    vdaf.verify_init(&secrets.verify_key, batch_id, secrets.role, &report)
}

/// Both servers' steps for one entry, in one process: open and verify-init
/// each share, exchange verifier shares, finish. For self-checks, tests and
/// benchmarks; the real servers run these steps apart, talking through buckets.
pub fn verify_locally(
    vdaf: &Vdaf,
    secrets: &[ServerSecrets; 2],
    batch_id: &str,
    envelopes: [&[u8]; 2],
) -> Result<[OutputShare; 2], Rejection> {
    let (state_a, share_a) = open_and_verify_init(vdaf, &secrets[0], batch_id, envelopes[0])?;
    let (state_b, share_b) = open_and_verify_init(vdaf, &secrets[1], batch_id, envelopes[1])?;
    Ok([
        vdaf.verify_finish(batch_id, secrets[0].role, &state_a, &share_b)?,
        vdaf.verify_finish(batch_id, secrets[1].role, &state_b, &share_a)?,
    ])
}
