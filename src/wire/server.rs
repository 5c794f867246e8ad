//! What a server does with one report share before talking to its peer:
//! base64-decode, open the envelope, decode, and start verification.

use super::envelope::{open, KeySet};
pub use super::vdaf::Initialized;
use super::vdaf::{OutputShare, ReportShare, Vdaf, VerifyKey};
use super::{Rejection, Role};

/// One server's identity and secrets.
#[derive(Clone)]
pub struct ServerSecrets {
    pub role: Role,
    /// The keys this server opens shares with, the current one first.
    pub private_keys: KeySet,
    pub verify_key: VerifyKey,
}

impl std::fmt::Debug for ServerSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSecrets")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Opens a share envelope (or a libprio packet, for prio1) and runs
/// `verify_init` on it.
pub fn open_and_verify_init(
    vdaf: &Vdaf,
    secrets: &ServerSecrets,
    batch_id: &str,
    envelope: &[u8],
) -> Result<Initialized, Rejection> {
    if let Some(opened) = vdaf.open_own_sealing(
        &secrets.private_keys,
        &secrets.verify_key,
        batch_id,
        secrets.role,
        envelope,
    ) {
        return opened;
    }
    let plaintext = open(&secrets.private_keys, secrets.role, batch_id, envelope)?;
    let report = ReportShare::decode(&plaintext)?;
    let (state, verifier_share) =
        vdaf.verify_init(&secrets.verify_key, batch_id, secrets.role, &report)?;
    Ok(Initialized {
        nonce: report.nonce,
        state,
        verifier_share,
    })
}

/// Both servers' steps for one entry, in one process: open and verify-init
/// each share, exchange verifier shares, finish, and compare the nonces as
/// `aggregate` does. For self-checks, tests and
/// benchmarks; the real servers run these steps apart, talking through buckets.
pub fn verify_locally(
    vdaf: &Vdaf,
    secrets: &[ServerSecrets; 2],
    batch_id: &str,
    envelopes: [&[u8]; 2],
) -> Result<[OutputShare; 2], Rejection> {
    let a = open_and_verify_init(vdaf, &secrets[0], batch_id, envelopes[0])?;
    let b = open_and_verify_init(vdaf, &secrets[1], batch_id, envelopes[1])?;
    let (out_a, nonce_a) =
        vdaf.verify_finish(batch_id, secrets[0].role, &a.state, &b.verifier_share)?;
    let (out_b, nonce_b) =
        vdaf.verify_finish(batch_id, secrets[1].role, &b.state, &a.verifier_share)?;
    if nonce_a.unwrap_or(a.nonce) != nonce_b.unwrap_or(b.nonce) {
        return Err(Rejection::NonceMismatch);
    }
    Ok([out_a, out_b])
}
