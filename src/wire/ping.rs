//! The Firefox "prio" ping and the telemetry sink's PubSub wrapper.
//!
//! A ping's `payload.prioData` is a list of `{encoding, prio: {a, b}}`: the
//! batch id and one base64 share envelope per server.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Standard alphabet; padding optional on input, always written.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

pub fn encode_base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    LENIENT.decode(text.trim()).ok()
}

/// Why a line, ping or entry was not staged. Counted by [`PingRejection::reason`].
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
pub enum PingRejection {
    #[error("not valid JSON")]
    BadJson,
    #[error("payload is not valid base64")]
    BadBase64,
    #[error("payload looks gzip-compressed but does not decompress")]
    BadGzip,
    #[error("sink message has no string \"payload\"")]
    MissingPayload,
    #[error("not a prio ping (\"type\" is not \"prio\" or \"id\" is missing)")]
    NotPrio,
    #[error("ping has no payload.prioData list")]
    MissingPrioData,
    #[error("prioData entry has no string \"encoding\"")]
    MissingEncoding,
    #[error("prioData entry's \"prio\" is not a map of exactly \"a\" and \"b\" strings")]
    BadShareMap,
    #[error("submission timestamp is outside the requested date")]
    DateOutside,
    #[error("a prioData entry's share is not valid base64")]
    BadShareBase64,
    #[error("a prioData entry's batch id is not in the batch config")]
    UnknownBatchId,
    #[error("the record has no submission timestamp")]
    MissingTimestamp,
    #[error("the submission timestamp is not an RFC 3339 time")]
    BadTimestamp,
    #[error("a line or a record's ping is larger than the input limits")]
    TooLarge,
    #[error("a prioData entry's share is larger than its batch's VDAF allows")]
    ShareTooLarge,
}

impl PingRejection {
    pub fn reason(self) -> &'static str {
        match self {
            PingRejection::BadJson => "bad_json",
            PingRejection::BadBase64 => "bad_base64",
            PingRejection::BadGzip => "bad_gzip",
            PingRejection::MissingPayload => "missing_payload",
            PingRejection::NotPrio => "not_prio",
            PingRejection::MissingPrioData => "missing_prio_data",
            PingRejection::MissingEncoding => "missing_encoding",
            PingRejection::BadShareMap => "bad_share_map",
            PingRejection::DateOutside => "date_outside",
            PingRejection::BadShareBase64 => "bad_share_base64",
            PingRejection::UnknownBatchId => "unknown_batch_id",
            PingRejection::MissingTimestamp => "missing_timestamp",
            PingRejection::BadTimestamp => "bad_timestamp",
            PingRejection::TooLarge => "too_large",
            PingRejection::ShareTooLarge => "share_too_large",
        }
    }
}

/// One `prioData` entry: a batch id and the two base64 envelopes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrioEntry {
    pub batch_id: String,
    pub share_a: String,
    pub share_b: String,
}

/// A decoded prio ping: its id and entries, plus the entries that were malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    pub id: String,
    pub creation_date: Option<String>,
    pub entries: Vec<PrioEntry>,
    pub bad_entries: Vec<PingRejection>,
}

/// Parses a ping's JSON. A malformed entry is recorded, not fatal for the others.
pub fn parse_ping(bytes: &[u8]) -> Result<Ping, PingRejection> {
    let value: Value = serde_json::from_slice(bytes).map_err(|_| PingRejection::BadJson)?;
    let id = match (value.get("type"), value.get("id")) {
        (Some(Value::String(t)), Some(Value::String(id))) if t == "prio" && !id.is_empty() => {
            id.clone()
        }
        _ => return Err(PingRejection::NotPrio),
    };
    let Some(Value::Array(prio_data)) = value.pointer("/payload/prioData") else {
        return Err(PingRejection::MissingPrioData);
    };
    let mut entries = Vec::with_capacity(prio_data.len());
    let mut bad_entries = Vec::new();
    for entry in prio_data {
        match parse_entry(entry) {
            Ok(e) => entries.push(e),
            Err(r) => bad_entries.push(r),
        }
    }
    Ok(Ping {
        id,
        creation_date: value
            .get("creationDate")
            .and_then(Value::as_str)
            .map(str::to_string),
        entries,
        bad_entries,
    })
}

fn parse_entry(entry: &Value) -> Result<PrioEntry, PingRejection> {
    let Some(Value::String(batch_id)) = entry.get("encoding") else {
        return Err(PingRejection::MissingEncoding);
    };
    let Some(Value::Object(shares)) = entry.get("prio") else {
        return Err(PingRejection::BadShareMap);
    };
    match (shares.len(), shares.get("a"), shares.get("b")) {
        (2, Some(Value::String(a)), Some(Value::String(b))) => Ok(PrioEntry {
            batch_id: batch_id.clone(),
            share_a: a.clone(),
            share_b: b.clone(),
        }),
        _ => Err(PingRejection::BadShareMap),
    }
}

/// Builds a Firefox-shaped prio ping (as sent by Firefox 69, see the fixture).
pub fn build_ping(id: &str, creation_date: &str, entries: &[PrioEntry]) -> Value {
    let prio_data: Vec<Value> = entries
        .iter()
        .map(|e| json!({"encoding": e.batch_id, "prio": {"a": e.share_a, "b": e.share_b}}))
        .collect();
    json!({
        "type": "prio",
        "id": id,
        "creationDate": creation_date,
        "version": 4,
        "application": {
            "architecture": "x86-64",
            "buildId": "20190625215814",
            "name": "Firefox",
            "version": "69.0a1",
            "displayVersion": "69.0a1",
            "vendor": "Mozilla",
            "platformVersion": "69.0a1",
            "xpcomAbi": "x86_64-gcc3",
            "channel": "nightly"
        },
        "payload": {"version": "1", "reason": "periodic", "prioData": prio_data}
    })
}

/// The telemetry sink's PubSub message: attributes and the base64 ping body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkMessage {
    #[serde(rename = "attributeMap", default)]
    pub attributes: serde_json::Map<String, Value>,
    pub payload: String,
}

impl SinkMessage {
    /// Wraps a ping as the sink writes it.
    pub fn wrap(ping: &[u8], document_id: &str, submission_timestamp: &str) -> Self {
        let mut attributes = serde_json::Map::new();
        for (k, v) in [
            ("document_namespace", "telemetry"),
            ("document_type", "prio"),
            ("document_version", "4"),
            ("document_id", document_id),
            ("submission_timestamp", submission_timestamp),
        ] {
            attributes.insert(k.into(), Value::String(v.into()));
        }
        SinkMessage {
            attributes,
            payload: encode_base64(ping),
        }
    }

    pub fn submission_timestamp(&self) -> Option<&str> {
        self.attributes
            .get("submission_timestamp")
            .and_then(Value::as_str)
    }
}

/// Parses one NDJSON line of the sink and decodes its ping body.
pub fn parse_sink_line(line: &[u8]) -> Result<(SinkMessage, Vec<u8>), PingRejection> {
    let value: Value = serde_json::from_slice(line).map_err(|_| PingRejection::BadJson)?;
    let message: SinkMessage =
        serde_json::from_value(value).map_err(|_| PingRejection::MissingPayload)?;
    let body = decode_base64(&message.payload).ok_or(PingRejection::BadBase64)?;
    Ok((message, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(batch: &str) -> PrioEntry {
        PrioEntry {
            batch_id: batch.into(),
            share_a: "AAAA".into(),
            share_b: "BBBB".into(),
        }
    }

    #[test]
    fn ping_round_trips_through_the_sink_wrapper() {
        let ping = build_ping(
            "id-1",
            "2019-06-26T12:45:07.011Z",
            &[entry("x"), entry("y")],
        );
        let bytes = serde_json::to_vec(&ping).unwrap();
        let line =
            serde_json::to_vec(&SinkMessage::wrap(&bytes, "doc", "2019-06-26T13:00:00Z")).unwrap();
        let (message, body) = parse_sink_line(&line).unwrap();
        assert_eq!(message.submission_timestamp(), Some("2019-06-26T13:00:00Z"));
        let parsed = parse_ping(&body).unwrap();
        assert_eq!(parsed.id, "id-1");
        assert_eq!(parsed.entries, vec![entry("x"), entry("y")]);
        assert!(parsed.bad_entries.is_empty());
    }

    #[test]
    fn malformed_input_gets_a_reason() {
        assert_eq!(
            parse_sink_line(b"{not json").unwrap_err(),
            PingRejection::BadJson
        );
        assert_eq!(
            parse_sink_line(b"{\"attributeMap\":{}}").unwrap_err(),
            PingRejection::MissingPayload
        );
        assert_eq!(
            parse_sink_line(b"{\"payload\":\"!!!\"}").unwrap_err(),
            PingRejection::BadBase64
        );
        assert_eq!(parse_ping(b"[]").unwrap_err(), PingRejection::NotPrio);
        assert_eq!(
            parse_ping(br#"{"type":"main","id":"x"}"#).unwrap_err(),
            PingRejection::NotPrio
        );
        assert_eq!(
            parse_ping(br#"{"type":"prio","id":"x","payload":{}}"#).unwrap_err(),
            PingRejection::MissingPrioData
        );
        let mixed = br#"{"type":"prio","id":"x","payload":{"prioData":[
            {"prio":{"a":"A","b":"B"}},
            {"encoding":"e","prio":{"a":"A"}},
            {"encoding":"e","prio":{"a":"A","b":"B","c":"C"}},
            {"encoding":"e","prio":{"a":"A","b":"B"}}]}}"#;
        let ping = parse_ping(mixed).unwrap();
        assert_eq!(ping.entries.len(), 1);
        assert_eq!(
            ping.bad_entries,
            vec![
                PingRejection::MissingEncoding,
                PingRejection::BadShareMap,
                PingRejection::BadShareMap
            ]
        );
    }

    #[test]
    fn firefox_69_fixture_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/fixtures/fx-69.0a1.json");
        let bytes = std::fs::read(path).expect("data/fixtures/fx-69.0a1.json is in the repository");
        let ping = parse_ping(&bytes).unwrap();
        assert_eq!(ping.entries.len(), 6);
        assert!(ping.bad_entries.is_empty());
        for e in &ping.entries {
            assert!(
                decode_base64(&e.share_a).unwrap().len() > decode_base64(&e.share_b).unwrap().len()
            );
        }
    }
}
