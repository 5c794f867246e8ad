//! What a client does with one measurement: shard it, seal one share per
//! server, and base64 both into a `prioData` entry.

use super::envelope::{seal, PublicKey, SealError};
use super::ping::{encode_base64, PrioEntry};
use super::vdaf::{Measurement, Nonce, Vdaf, VdafUseError};
use super::Role;

/// The two servers' public keys, as a client knows them.
#[derive(Debug, Clone)]
pub struct ServerPublicKeys {
    pub a: PublicKey,
    pub b: PublicKey,
}

impl ServerPublicKeys {
    pub fn get(&self, role: Role) -> &PublicKey {
        match role {
            Role::A => &self.a,
            Role::B => &self.b,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Vdaf(#[from] VdafUseError),
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// Encodes one measurement for `batch_id` into a `prioData` entry.
pub fn encode_entry(
    vdaf: &Vdaf,
    batch_id: &str,
    measurement: &Measurement,
    keys: &ServerPublicKeys,
) -> Result<PrioEntry, ClientError> {
    if let Some(prio1) = vdaf.prio1() {
        // libprio's own format and encryption: what Firefox sent.
        let bits = vdaf.spec().bits(measurement)?;
        let [a, b] = prio1
            .seal(
                batch_id.as_bytes(),
                &bits,
                [&keys.a.x25519(), &keys.b.x25519()],
            )
            .map_err(|e| VdafUseError::Measurement {
                vdaf: "prio1",
                message: e.to_string(),
            })?;
        return Ok(PrioEntry {
            batch_id: batch_id.to_string(),
            share_a: encode_base64(&a),
            share_b: encode_base64(&b),
        });
    }
    let nonce: Nonce = rand::random();
    let shares = vdaf.shard(batch_id, measurement, &nonce)?;
    let seal_for = |role: Role| -> Result<String, ClientError> {
        let sealed = seal(
            keys.get(role),
            role,
            batch_id,
            &shares[role.agg_id()].encode(),
        )?;
        Ok(encode_base64(&sealed))
    };
    Ok(PrioEntry {
        batch_id: batch_id.to_string(),
        share_a: seal_for(Role::A)?,
        share_b: seal_for(Role::B)?,
    })
}
