//! The two-server protocol's vocabulary: its steps, why a report is not
//! counted, and what becomes of a batch. Every summary, message status and
//! (later) metric is rendered from these types, never from loose strings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The version of what the servers exchange (steps, message columns,
/// reasons); both must run the same one, which their hellos compare.
/// Version 2 added the `nonce` column and anti-replay.
pub const PROTOCOL_VERSION: u32 = 2;

/// The pipeline's steps, in order. `Hello` comes before every run: the
/// servers compare what they must agree on before touching a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    Hello,
    Verify1,
    Verify2,
    Aggregate,
    Publish,
}

impl Step {
    /// The steps that work on reports, as `process` runs them.
    pub const ALL: [Step; 4] = [Step::Verify1, Step::Verify2, Step::Aggregate, Step::Publish];

    /// The step's name, as in commands and object paths.
    pub fn name(self) -> &'static str {
        match self {
            Step::Hello => "hello",
            Step::Verify1 => "verify1",
            Step::Verify2 => "verify2",
            Step::Aggregate => "aggregate",
            Step::Publish => "publish",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why one report was not counted. These are data, never fatal: the
/// pipeline counts them by [`Rejection::reason`], and messages carry that
/// name as a report's status.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    thiserror::Error,
)]
pub enum Rejection {
    /// The share is not valid base64.
    #[error("share is not valid base64")]
    BadBase64,
    /// The envelope names another batch id or server than the one opening it.
    #[error("envelope bound to another batch id or server")]
    WrongBinding,
    /// Not a whole envelope, or HPKE open failed: tampered or truncated
    /// ciphertext, a v1 envelope no key opens, or another system's
    /// ciphertext (libprio v1).
    #[error("envelope could not be decrypted")]
    Undecryptable,
    /// The envelope names a key (its key id) that this server does not hold.
    #[error("sealed to a key this server does not hold")]
    UnknownKey,
    /// The plaintext is not a valid report share for the batch's VDAF.
    #[error("share could not be decoded for this batch's VDAF")]
    Undecodable,
    /// The peer's verifier share for this report could not be decoded.
    #[error("peer verifier share could not be decoded")]
    PeerShareUndecodable,
    /// The proof did not verify: the client's measurement is invalid.
    #[error("proof did not verify")]
    InvalidProof,
    /// A report id seen earlier in the same part: only the first copy counts.
    #[error("report id repeated within its part")]
    DuplicateReportId,
    /// The peer has no row for a report this server has.
    #[error("the peer has no such report")]
    MissingOnPeer,
    /// The peer could not verify-init the report (its verify1 status).
    #[error("the peer rejected the report in verify1")]
    PeerRejected,
    /// This server accepted the report but the peer's verdict rejects it.
    #[error("the peer's verdict rejects the report")]
    PeerVerdictReject,
    /// Both servers accepted the report, but their shares carry different
    /// nonces: the client sealed two different reports as one.
    #[error("the two servers' shares carry different nonces")]
    NonceMismatch,
    /// The report's nonce was aggregated before: a copy with a smaller report
    /// id in the same batch and date, or one in an earlier date within the
    /// replay window. Only the first copy counts.
    #[error("the report's nonce was aggregated before")]
    Replayed,
}

impl Rejection {
    pub const ALL: [Rejection; 13] = [
        Rejection::BadBase64,
        Rejection::WrongBinding,
        Rejection::Undecryptable,
        Rejection::UnknownKey,
        Rejection::Undecodable,
        Rejection::PeerShareUndecodable,
        Rejection::InvalidProof,
        Rejection::DuplicateReportId,
        Rejection::MissingOnPeer,
        Rejection::PeerRejected,
        Rejection::PeerVerdictReject,
        Rejection::NonceMismatch,
        Rejection::Replayed,
    ];

    /// Stable snake_case name: the counter key in summaries and the status in messages.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::BadBase64 => "bad_base64",
            Rejection::WrongBinding => "wrong_binding",
            Rejection::Undecryptable => "undecryptable",
            Rejection::UnknownKey => "unknown_key",
            Rejection::Undecodable => "undecodable",
            Rejection::PeerShareUndecodable => "peer_share_undecodable",
            Rejection::InvalidProof => "invalid_proof",
            Rejection::DuplicateReportId => "duplicate_report_id",
            Rejection::MissingOnPeer => "missing_on_peer",
            Rejection::PeerRejected => "peer_rejected",
            Rejection::PeerVerdictReject => "peer_verdict_reject",
            Rejection::NonceMismatch => "nonce_mismatch",
            Rejection::Replayed => "replayed",
        }
    }

    /// What usually makes most of a batch's reports fail this way: the
    /// operator's first thing to check.
    pub fn likely_cause(self) -> &'static str {
        match self {
            Rejection::BadBase64 => "clients or the stager corrupt the shares",
            Rejection::WrongBinding => {
                "clients sealed these shares for the other server or another batch id: check \
                 SERVER_ID, and that clients have each server's public key the right way round"
            }
            Rejection::Undecryptable => {
                "the shares are damaged, or are v1 envelopes that no key of PRIVATE_KEY_HEX opens \
                 (the other server's key, or an old one)"
            }
            Rejection::UnknownKey => {
                "PRIVATE_KEY_HEX does not hold the key clients sealed this server's shares to: \
                 the other server's key, or a key rotated out too early (list the current key \
                 first, then the older ones clients may still use)"
            }
            Rejection::Undecodable => {
                "clients encode another VDAF or other parameters than DATA_CONFIG gives this batch"
            }
            Rejection::PeerShareUndecodable => "the peer runs other VDAF parameters for this batch",
            Rejection::InvalidProof => {
                "clients use other VDAF parameters than DATA_CONFIG gives this batch, or a \
                 faulty client version sends invalid values"
            }
            Rejection::DuplicateReportId => {
                "the staged parts repeat report ids: stage again from the dump"
            }
            Rejection::MissingOnPeer => {
                "the peer has other staged parts: stage both servers from the same dump with the \
                 same STAGING_SECRET"
            }
            Rejection::PeerRejected => {
                "the peer could not open or decode them: see the peer's summary for its reason \
                 (its PRIVATE_KEY_HEX, SERVER_ID or DATA_CONFIG)"
            }
            Rejection::PeerVerdictReject => {
                "the peer's verdicts differ from this server's: see the peer's summary"
            }
            Rejection::NonceMismatch => {
                "the servers see other nonces: a client or the peer is faulty"
            }
            Rejection::Replayed => {
                "the input carries many copies of the same reports: an attack, or redelivered \
                 pings under new ids"
            }
        }
    }

    /// The rejection a [`Rejection::reason`] names.
    pub fn from_reason(name: &str) -> Option<Rejection> {
        Rejection::ALL.into_iter().find(|r| r.reason() == name)
    }
}

/// A report's status in a message: accepted so far, or why not.
pub type Status = Result<(), Rejection>;

/// The name of `ok` statuses in messages.
pub const OK: &str = "ok";

/// A status as messages spell it: `ok` or the rejection's reason.
pub fn status_name(status: Status) -> &'static str {
    match status {
        Ok(()) => OK,
        Err(r) => r.reason(),
    }
}

/// Reads [`status_name`] back; `None` for a name this version does not know.
pub fn parse_status(name: &str) -> Option<Status> {
    if name == OK {
        Some(Ok(()))
    } else {
        Rejection::from_reason(name).map(Err)
    }
}

/// Reports per rejection reason.
pub type RejectionCounts = BTreeMap<Rejection, u64>;

/// Reports per batch id and status, as a step counts them.
pub type StatusCounts = BTreeMap<(String, Status), u64>;

/// What a server decided about one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchStatus {
    /// Both servers agree and the batch reached `min_batch_size`.
    Published,
    /// Fewer aggregated reports than the batch's `min_batch_size`.
    Withheld,
    /// The servers disagree on what they aggregated, or a message is missing.
    #[default]
    Refused,
}

impl BatchStatus {
    pub fn name(self) -> &'static str {
        match self {
            BatchStatus::Published => "published",
            BatchStatus::Withheld => "withheld",
            BatchStatus::Refused => "refused",
        }
    }
}

/// When most of a batch's reports fail for one reason, the cause is rarely
/// the clients: a wrong key, a swapped server or a config that differs from
/// the clients' rejects them all alike. Such a batch raises an alarm, which
/// makes the run fail loudly instead of withholding a batch with exit 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlarmRule {
    /// The largest share of a batch's reports one reason may reject.
    pub max_rejected_fraction: f64,
    /// Batches with fewer reports never raise the alarm (a few bad reports
    /// in a tiny batch say nothing about the configuration).
    pub min_reports: u64,
}

impl AlarmRule {
    /// The alarm for a batch's counts, naming the reason and its likely cause.
    pub fn check(&self, reports_total: u64, rejected: &RejectionCounts) -> Option<String> {
        if reports_total == 0 || reports_total < self.min_reports {
            return None;
        }
        let (&reason, &n) = rejected.iter().max_by_key(|(_, n)| **n)?;
        let fraction = n as f64 / reports_total as f64;
        (fraction > self.max_rejected_fraction).then(|| {
            format!(
                "{n} of {reports_total} reports ({:.0}%) rejected as {}: {}",
                fraction * 100.0,
                reason.reason(),
                reason.likely_cause()
            )
        })
    }
}

/// What a server reports about one batch once the pipeline has run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchOutcome {
    pub batch_id: String,
    pub vdaf: String,
    pub reports_total: u64,
    pub reports_aggregated: u64,
    #[serde(with = "by_reason")]
    pub rejected: RejectionCounts,
    pub status: BatchStatus,
    pub aggregate: Option<Vec<u128>>,
    pub message: Option<String>,
    /// Set when most reports were rejected for one reason ([`AlarmRule`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<String>,
}

/// Rejection counts as a JSON object keyed by reason name, as every summary shows them.
pub mod by_reason {
    use super::{Rejection, RejectionCounts};
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(counts: &RejectionCounts, s: S) -> Result<S::Ok, S::Error> {
        let named: BTreeMap<&str, u64> = counts.iter().map(|(r, n)| (r.reason(), *n)).collect();
        named.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<RejectionCounts, D::Error> {
        BTreeMap::<String, u64>::deserialize(d)?
            .into_iter()
            .map(|(name, n)| {
                Rejection::from_reason(&name)
                    .map(|r| (r, n))
                    .ok_or_else(|| D::Error::custom(format!("unknown rejection reason {name:?}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_name_reads_back_and_unknown_names_do_not() {
        for r in Rejection::ALL {
            assert_eq!(parse_status(status_name(Err(r))), Some(Err(r)));
        }
        assert_eq!(parse_status(OK), Some(Ok(())));
        assert_eq!(parse_status("made_up"), None);
        let names: std::collections::HashSet<_> = Rejection::ALL.map(Rejection::reason).into();
        assert_eq!(names.len(), Rejection::ALL.len(), "names are distinct");
    }

    #[test]
    fn an_alarm_needs_one_reason_above_the_fraction_in_a_batch_large_enough() {
        let rule = AlarmRule {
            max_rejected_fraction: 0.5,
            min_reports: 10,
        };
        let counts =
            |pairs: &[(Rejection, u64)]| pairs.iter().copied().collect::<RejectionCounts>();
        let wrong_key = counts(&[(Rejection::UnknownKey, 19), (Rejection::BadBase64, 1)]);
        let alarm = rule.check(20, &wrong_key).unwrap();
        assert!(
            alarm.starts_with("19 of 20 reports (95%) rejected as unknown_key: PRIVATE_KEY_HEX"),
            "{alarm}"
        );
        // Half is not most; several reasons that add up to most are not one cause.
        assert_eq!(
            rule.check(20, &counts(&[(Rejection::Undecryptable, 10)])),
            None
        );
        let mixed = counts(&[(Rejection::Undecryptable, 6), (Rejection::InvalidProof, 6)]);
        assert_eq!(rule.check(20, &mixed), None);
        assert_eq!(
            rule.check(9, &counts(&[(Rejection::Undecryptable, 9)])),
            None
        );
        assert_eq!(rule.check(0, &RejectionCounts::new()), None);
    }

    #[test]
    fn outcomes_name_reasons_and_status_in_json() {
        let outcome = BatchOutcome {
            batch_id: "x".into(),
            rejected: [(Rejection::InvalidProof, 2)].into(),
            status: BatchStatus::Withheld,
            ..Default::default()
        };
        let json = serde_json::to_value(&outcome).unwrap();
        assert_eq!(json["rejected"]["invalid_proof"], 2);
        assert_eq!(json["status"], "withheld");
        assert_eq!(
            serde_json::from_value::<BatchOutcome>(json).unwrap(),
            outcome
        );
    }
}
