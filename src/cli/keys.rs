//! `keygen` and `shared-seed`, and reading keys from flags or environment.

use anyhow::Context;
use base64::Engine;
use clap::Args;

use super::exit;
use crate::wire::client::ServerPublicKeys;
use crate::wire::envelope::{generate_keypair, PublicKey};
use crate::wire::signing::SigningPrivateKey;
use crate::wire::vdaf::{verify_key_from_secret, VerifyKey, SEED_SECRET_LEN, VERIFY_KEY_LEN};

/// Print fresh keys for one server as JSON: an X25519 pair for the shares clients
/// seal to it, and an Ed25519 pair that signs what it sends its peer.
#[derive(Args, Debug)]
#[command(after_help = "Example:\n  prio-processor keygen > server-a.json\n  \
    export PRIVATE_KEY_HEX=$(jq -r .private_key server-a.json)\n  \
    export PRIVATE_SIGNING_KEY_HEX=$(jq -r .signing_private_key server-a.json)\n  \
    # clients get public_key; the peer server gets signing_public_key\n  \
    #   (as PUBLIC_SIGNING_KEY_HEX_EXTERNAL)\n\n\
    The private keys are printed only here, on stdout; keep them secret.")]
pub struct KeygenArgs {}

/// Print a fresh base64 VDAF verify key, shared by the two servers as SHARED_SECRET.
#[derive(Args, Debug)]
#[command(after_help = "Example:\n  export SHARED_SECRET=$(prio-processor shared-seed)")]
pub struct SharedSeedArgs {}

pub fn keygen(_: KeygenArgs) -> anyhow::Result<u8> {
    let key = generate_keypair();
    let signing = SigningPrivateKey::generate();
    println!(
        "{}",
        serde_json::json!({
            "private_key": key.to_hex(),
            "public_key": key.public_key().to_hex(),
            "key_id": hex::encode(key.public_key().key_id()),
            "signing_private_key": signing.to_hex(),
            "signing_public_key": signing.public_key().to_hex(),
        })
    );
    Ok(exit::OK)
}

pub fn shared_seed(_: SharedSeedArgs) -> anyhow::Result<u8> {
    let seed: VerifyKey = rand::random();
    println!("{}", base64::engine::general_purpose::STANDARD.encode(seed));
    Ok(exit::OK)
}

/// Decodes `SHARED_SECRET`: base64 of exactly 32 bytes. The value never appears in errors.
pub fn parse_shared_secret(text: &str) -> anyhow::Result<VerifyKey> {
    let bytes = crate::wire::ping::decode_base64(text)
        .context("SHARED_SECRET is not valid base64; make one with `prio-processor shared-seed`")?;
    verify_key_from_secret(&bytes).ok_or_else(|| {
        anyhow::anyhow!(
            "SHARED_SECRET decodes to {} bytes, expected {VERIFY_KEY_LEN} (or the seed system's {SEED_SECRET_LEN}); make one with `prio-processor shared-seed`",
            bytes.len()
        )
    })
}

/// The servers' public keys, as a client (the simulator) needs them.
#[derive(Args, Debug, Clone)]
pub struct ClientKeyArgs {
    /// Server A's public key (hex), from its `keygen`.
    #[arg(long, env = "PUBLIC_KEY_HEX_A", value_name = "HEX")]
    pub public_key_a: String,
    /// Server B's public key (hex), from its `keygen`.
    #[arg(long, env = "PUBLIC_KEY_HEX_B", value_name = "HEX")]
    pub public_key_b: String,
}

impl ClientKeyArgs {
    pub fn load(&self) -> anyhow::Result<ServerPublicKeys> {
        Ok(ServerPublicKeys {
            a: PublicKey::from_hex(&self.public_key_a)
                .context("--public-key-a / PUBLIC_KEY_HEX_A")?,
            b: PublicKey::from_hex(&self.public_key_b)
                .context("--public-key-b / PUBLIC_KEY_HEX_B")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_secret_parses_and_errors_hide_the_value() {
        let text = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(parse_shared_secret(&text).unwrap(), [7u8; 32]);
        let short = base64::engine::general_purpose::STANDARD.encode([9u8; 31]);
        let err = format!("{:#}", parse_shared_secret(&short).unwrap_err());
        assert!(err.contains("31 bytes") && !err.contains(&short), "{err}");
        let err = format!("{:#}", parse_shared_secret("not*base64").unwrap_err());
        assert!(!err.contains("not*base64"), "{err}");
    }
}
