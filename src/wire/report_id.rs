//! Report ids assigned at staging. They are identical for both servers,
//! stable across reruns, unique within a batch, and not linkable to the ping
//! id without the staging secret: the ping id ties a client to its other
//! telemetry, so it must not reach the aggregation servers.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Report ids are 16 bytes, written as 32 lower-case hex digits.
pub const REPORT_ID_LEN: usize = 16;

pub type ReportId = [u8; REPORT_ID_LEN];

/// Minimum length of the staging secret.
pub const MIN_SECRET_LEN: usize = 16;

/// `HMAC-SHA256(secret, "prio-processor report id v1" || lp(ping_id) || lp(batch_id) || u32be(k))`
/// truncated to 16 bytes, where `lp` is a u32be length prefix and `k` counts
/// the ping's entries for this batch id from 0.
pub fn report_id(secret: &[u8], ping_id: &str, batch_id: &str, k: u32) -> ReportId {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"prio-processor report id v1");
    for part in [ping_id.as_bytes(), batch_id.as_bytes()] {
        mac.update(&(part.len() as u32).to_be_bytes());
        mac.update(part);
    }
    mac.update(&k.to_be_bytes());
    let tag = mac.finalize().into_bytes();
    let mut id = [0u8; REPORT_ID_LEN];
    id.copy_from_slice(&tag[..REPORT_ID_LEN]);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_on_every_input_and_on_the_secret() {
        let s = [1u8; 32];
        let id = report_id(&s, "ping", "batch", 0);
        assert_eq!(id, report_id(&s, "ping", "batch", 0));
        assert_ne!(id, report_id(&s, "ping", "batch", 1));
        assert_ne!(id, report_id(&s, "ping", "batch2", 0));
        assert_ne!(id, report_id(&s, "ping2", "batch", 0));
        assert_ne!(id, report_id(&[2u8; 32], "ping", "batch", 0));
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        assert_ne!(report_id(&s, "ab", "c", 0), report_id(&s, "a", "bc", 0));
    }
}
