//! Batch configuration (`DATA_CONFIG`): a JSON object mapping batch id to spec.
//!
//! A bare integer `n` is the seed's format and means what the seed system
//! ran: Prio v1 (libprio, as Firefox sent it, PRG keyed by the seed) over a
//! bit vector of length `n`, so that a seed DATA_CONFIG works as it is.
//! Prio2 is `{"vdaf": "prio2", "length": n}`. An object names the VDAF and its parameters, for example
//! `{"vdaf": "sumvec", "length": 2046, "bits": 1, "min_batch_size": 100}`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::prio1::{self, PrgKey};
use super::vdaf::{Vdaf, VdafSpec};

/// The longest batch id, in bytes: escaped for object names (up to three
/// bytes each), its directory still fits the 255 bytes of a file name.
pub const MAX_BATCH_ID_LEN: usize = 80;

/// The privacy threshold of a batch whose spec names none: below this many
/// reports both servers accepted, a batch's aggregate share never leaves
/// either server and nothing is published. A spec may set another value.
pub const DEFAULT_MIN_BATCH_SIZE: u64 = 100;

/// How many days before its own a date's reports are checked against for
/// replays, when the servers are not told otherwise. A week covers the
/// time a ping takes to arrive (submission dates lag by hours to days).
pub const DEFAULT_REPLAY_WINDOW_DAYS: u32 = 7;

/// One batch id's configuration.
#[derive(Debug, Clone)]
pub struct BatchSpec {
    pub vdaf: Vdaf,
    /// Privacy threshold: a batch with fewer aggregated reports is withheld.
    pub min_batch_size: u64,
    /// Each server's report share length for this VDAF, in bytes: what
    /// bounds the shares `stage` accepts.
    pub share_lens: [usize; 2],
}

impl BatchSpec {
    pub fn spec(&self) -> &VdafSpec {
        self.vdaf.spec()
    }
}

/// A configuration error, always naming the batch id and, where it applies, the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("batch config is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("batch config must be a JSON object mapping batch id to spec")]
    NotAnObject,
    #[error("batch config has no batch ids")]
    Empty,
    #[error("batch {batch_id:?}: {message}")]
    Batch { batch_id: String, message: String },
    #[error("batch {batch_id:?}, field {field:?}: {message}")]
    Field {
        batch_id: String,
        field: String,
        message: String,
    },
}

/// Batch id -> spec, sorted by batch id so that iteration is deterministic.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    batches: BTreeMap<String, BatchSpec>,
}

impl BatchConfig {
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let value: Value = serde_json::from_str(text)?;
        let Value::Object(map) = value else {
            return Err(ConfigError::NotAnObject);
        };
        if map.is_empty() {
            return Err(ConfigError::Empty);
        }
        let mut batches = BTreeMap::new();
        for (batch_id, spec) in map {
            if batch_id.is_empty() || batch_id.len() > MAX_BATCH_ID_LEN {
                return Err(ConfigError::Batch {
                    batch_id,
                    message: format!("a batch id has 1 to {MAX_BATCH_ID_LEN} bytes"),
                });
            }
            let parsed = parse_batch(&batch_id, &spec)?;
            batches.insert(batch_id, parsed);
        }
        Ok(BatchConfig { batches })
    }

    pub fn get(&self, batch_id: &str) -> Option<&BatchSpec> {
        self.batches.get(batch_id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &BatchSpec)> {
        self.batches.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn batch_ids(&self) -> impl Iterator<Item = &str> {
        self.batches.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.batches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

fn parse_batch(batch_id: &str, spec: &Value) -> Result<BatchSpec, ConfigError> {
    let batch_err = |message: String| ConfigError::Batch {
        batch_id: batch_id.to_string(),
        message,
    };
    let (vdaf_spec, min_batch_size) = match spec {
        Value::Number(n) => {
            let length = n.as_u64().filter(|&l| l > 0).ok_or_else(|| {
                batch_err(format!(
                    "bit-vector length must be a positive integer, got {n}"
                ))
            })?;
            let length = usize::try_from(length)
                .ok()
                .filter(|&l| l <= prio1::MAX_LENGTH)
                .ok_or_else(|| {
                    batch_err(format!(
                        "a bare length means prio1, of at most {} bits, got {n}",
                        prio1::MAX_LENGTH
                    ))
                })?;
            (
                VdafSpec::Prio1 {
                    length,
                    prg_key: PrgKey::Seed,
                },
                DEFAULT_MIN_BATCH_SIZE,
            )
        }
        Value::Object(fields) => parse_object(batch_id, fields)?,
        other => {
            return Err(batch_err(format!(
                "spec must be a bit-vector length or an object with a \"vdaf\" field, got {other}"
            )))
        }
    };
    let vdaf =
        Vdaf::new(vdaf_spec).map_err(|e| batch_err(format!("invalid VDAF parameters: {e}")))?;
    let share_lens = vdaf
        .report_share_lens(batch_id)
        .map_err(|e| batch_err(format!("invalid VDAF parameters: {e}")))?;
    Ok(BatchSpec {
        vdaf,
        min_batch_size,
        share_lens,
    })
}

/// Reads the fields of an object spec, refusing unknown or inapplicable ones.
struct Fields<'a> {
    batch_id: &'a str,
    fields: &'a Map<String, Value>,
    used: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    fn err(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Field {
            batch_id: self.batch_id.to_string(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    fn optional_u64(&mut self, field: &'static str) -> Result<Option<u64>, ConfigError> {
        self.used.push(field);
        match self.fields.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.err(field, format!("must be a non-negative integer, got {v}"))),
        }
    }

    fn required_u64(&mut self, field: &'static str) -> Result<u64, ConfigError> {
        self.optional_u64(field)?
            .ok_or_else(|| self.err(field, "is required for this VDAF"))
    }

    fn positive_usize(&mut self, field: &'static str) -> Result<usize, ConfigError> {
        let v = self.required_u64(field)?;
        if v == 0 {
            return Err(self.err(field, "must be at least 1"));
        }
        usize::try_from(v).map_err(|_| self.err(field, "is too large"))
    }

    /// `chunk_length`, defaulting to the prio crate's recommendation for `proof_len`.
    fn chunk_length(&mut self, proof_len: usize) -> Result<usize, ConfigError> {
        match self.optional_u64("chunk_length")? {
            None => Ok(prio::vdaf::prio3::optimal_chunk_length(proof_len)),
            Some(0) => Err(self.err("chunk_length", "must be at least 1")),
            Some(c) if c as usize > proof_len => Err(self.err(
                "chunk_length",
                format!("must be at most {proof_len} (the measurement length in bits)"),
            )),
            Some(c) => Ok(c as usize),
        }
    }

    /// Maximum element value from exactly one of `bits` or `max_measurement`.
    fn max_measurement(&mut self, limit_bits: u32) -> Result<u128, ConfigError> {
        let bits = self.optional_u64("bits")?;
        let max = self.optional_u64("max_measurement")?;
        match (bits, max) {
            (Some(_), Some(_)) => {
                Err(self.err("bits", "give either bits or max_measurement, not both"))
            }
            (None, None) => Err(self.err("max_measurement", "is required (or give bits)")),
            (Some(b), None) if b == 0 || b > u64::from(limit_bits) => {
                Err(self.err("bits", format!("must be between 1 and {limit_bits}")))
            }
            (Some(b), None) => Ok((1u128 << b) - 1),
            (None, Some(0)) => Err(self.err("max_measurement", "must be at least 1")),
            (None, Some(m)) => Ok(u128::from(m)),
        }
    }

    fn finish(self) -> Result<(), ConfigError> {
        for key in self.fields.keys() {
            if key != "vdaf" && !self.used.contains(&key.as_str()) {
                return Err(self.err(key, "unknown field for this VDAF"));
            }
        }
        Ok(())
    }
}

/// Bits needed to encode values up to `max`: SumVec's measurement length is `length * bits`.
fn bits_for(max: u128) -> usize {
    (128 - max.leading_zeros()) as usize
}

fn parse_object(
    batch_id: &str,
    fields: &Map<String, Value>,
) -> Result<(VdafSpec, u64), ConfigError> {
    let mut f = Fields {
        batch_id,
        fields,
        used: Vec::new(),
    };
    let name = match fields.get("vdaf") {
        Some(Value::String(s)) => s.to_ascii_lowercase(),
        Some(other) => return Err(f.err("vdaf", format!("must be a string, got {other}"))),
        None => return Err(f.err("vdaf", "is required in an object spec")),
    };
    let min_batch_size = f
        .optional_u64("min_batch_size")?
        .unwrap_or(DEFAULT_MIN_BATCH_SIZE);
    let spec = match name.as_str() {
        "prio2" => VdafSpec::Prio2 {
            length: f.positive_usize("length")?,
        },
        "prio1" => {
            let length = f.positive_usize("length")?;
            if length > prio1::MAX_LENGTH {
                return Err(f.err("length", format!("must be at most {}", prio1::MAX_LENGTH)));
            }
            f.used.push("prg_key");
            let prg_key = match fields.get("prg_key") {
                None => PrgKey::Seed,
                Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
                    f.err("prg_key", format!("must be \"seed\" or \"seed_and_batch_id\", got {v}"))
                })?,
            };
            VdafSpec::Prio1 { length, prg_key }
        }
        "count" | "prio3count" => VdafSpec::Count,
        "sum" | "prio3sum" => {
            let max = f.max_measurement(63)?;
            VdafSpec::Sum {
                max_measurement: max as u64,
            }
        }
        "sumvec" | "prio3sumvec" => {
            let length = f.positive_usize("length")?;
            let max_measurement = f.max_measurement(64)?;
            let chunk_length = f.chunk_length(length * bits_for(max_measurement))?;
            VdafSpec::SumVec {
                length,
                max_measurement,
                chunk_length,
            }
        }
        "histogram" | "prio3histogram" => {
            let length = f.positive_usize("length")?;
            VdafSpec::Histogram {
                length,
                chunk_length: f.chunk_length(length)?,
            }
        }
        "multihotcountvec" | "prio3multihotcountvec" => {
            let length = f.positive_usize("length")?;
            let max_weight = f.positive_usize("max_weight")?;
            if max_weight > length {
                return Err(f.err("max_weight", format!("must be at most length ({length})")));
            }
            // The proof covers the bits plus the binary encoding of the weight.
            let proof_len = length + bits_for(max_weight as u128);
            VdafSpec::MultihotCountVec {
                length,
                max_weight,
                chunk_length: f.chunk_length(proof_len)?,
            }
        }
        other => {
            return Err(f.err(
                "vdaf",
                format!(
                    "unknown VDAF {other:?}; expected one of prio1, prio2, count, sum, sumvec, histogram, multihotcountvec"
                ),
            ))
        }
    };
    f.finish()?;
    Ok((spec, min_batch_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_config_loads_as_prio1_of_firefox_s_generation() {
        let cfg = BatchConfig::from_json(
            r#"{"content.blocking_blocked_TESTONLY-0": 2046, "content.blocking_blocked_TESTONLY-1": 441}"#,
        )
        .unwrap();
        assert_eq!(cfg.len(), 2);
        let spec = cfg.get("content.blocking_blocked_TESTONLY-1").unwrap();
        assert_eq!(
            spec.spec(),
            &VdafSpec::Prio1 {
                length: 441,
                prg_key: PrgKey::Seed
            }
        );
        let prio2 = BatchConfig::from_json(r#"{"x": {"vdaf": "prio2", "length": 441}}"#).unwrap();
        assert_eq!(
            prio2.get("x").unwrap().spec(),
            &VdafSpec::Prio2 { length: 441 }
        );
        assert_eq!(spec.min_batch_size, DEFAULT_MIN_BATCH_SIZE);
        assert!(spec.min_batch_size >= 100, "a privacy-safe default");
    }

    #[test]
    fn object_specs_with_defaults() {
        let cfg = BatchConfig::from_json(
            r#"{
                "v": {"vdaf": "sumvec", "length": 2046, "bits": 1, "chunk_length": 45, "min_batch_size": 100},
                "c": {"vdaf": "count"},
                "s": {"vdaf": "sum", "max_measurement": 1000},
                "h": {"vdaf": "histogram", "length": 10},
                "m": {"vdaf": "multihotcountvec", "length": 20, "max_weight": 5}
            }"#,
        )
        .unwrap();
        assert_eq!(
            cfg.get("v").unwrap().spec(),
            &VdafSpec::SumVec {
                length: 2046,
                max_measurement: 1,
                chunk_length: 45
            }
        );
        assert_eq!(cfg.get("v").unwrap().min_batch_size, 100);
        assert_eq!(cfg.get("c").unwrap().spec(), &VdafSpec::Count);
        let VdafSpec::Histogram { chunk_length, .. } = cfg.get("h").unwrap().spec() else {
            panic!("histogram expected")
        };
        assert_eq!(*chunk_length, prio::vdaf::prio3::optimal_chunk_length(10));
        assert_eq!(
            cfg.batch_ids().collect::<Vec<_>>(),
            ["c", "h", "m", "s", "v"]
        );
    }

    fn error_of(json: &str) -> String {
        BatchConfig::from_json(json).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_batch_and_field() {
        let e = error_of(r#"{"x": {"vdaf": "sumvec", "length": 10, "bits": 1, "colour": 3}}"#);
        assert!(
            e.contains("\"x\"") && e.contains("\"colour\"") && e.contains("unknown field"),
            "{e}"
        );
        let e = error_of(r#"{"y": {"vdaf": "poplar"}}"#);
        assert!(e.contains("\"y\"") && e.contains("unknown VDAF"), "{e}");
        let e = error_of(r#"{"z": {"vdaf": "count", "length": 3}}"#);
        assert!(
            e.contains("\"length\"") && e.contains("unknown field"),
            "{e}"
        );
        let e = error_of(r#"{"w": {"vdaf": "sumvec", "length": 4, "bits": 1, "chunk_length": 5}}"#);
        assert!(e.contains("\"chunk_length\""), "{e}");
        let e = error_of(r#"{"m": {"vdaf": "multihotcountvec", "length": 4, "max_weight": 5}}"#);
        assert!(e.contains("\"max_weight\""), "{e}");
        let e = error_of(r#"{"s": {"vdaf": "sum", "bits": 1, "max_measurement": 1}}"#);
        assert!(e.contains("not both"), "{e}");
        let e = error_of(r#"{"p": 0}"#);
        assert!(e.contains("\"p\"") && e.contains("positive"), "{e}");
        let e = error_of(r#"{"p": "ten"}"#);
        assert!(e.contains("\"p\""), "{e}");
        let long = format!(r#"{{"{}": 8}}"#, "x".repeat(MAX_BATCH_ID_LEN + 1));
        assert!(
            error_of(&long).contains("1 to 80 bytes"),
            "{}",
            error_of(&long)
        );
        let fits = format!(r#"{{"{}": 8}}"#, "é".repeat(MAX_BATCH_ID_LEN / 2));
        assert!(BatchConfig::from_json(&fits).is_ok());
        assert!(error_of("[1]").contains("object"));
        assert!(error_of("{}").contains("no batch ids"));
        assert!(error_of("{").contains("not valid JSON"));
    }

    #[test]
    fn impossible_lengths_are_rejected() {
        let e = error_of(r#"{"huge": 4294967295}"#);
        assert!(
            e.contains("\"huge\"") && e.contains("at most 262143"),
            "{e}"
        );
        let e = error_of(r#"{"huge": {"vdaf": "prio2", "length": 4294967295}}"#);
        assert!(
            e.contains("\"huge\"") && e.contains("invalid VDAF parameters"),
            "{e}"
        );
        let e = error_of(r#"{"p": {"vdaf": "prio1", "length": 4, "prg_key": "batch"}}"#);
        assert!(
            e.contains("prg_key") && e.contains("seed_and_batch_id"),
            "{e}"
        );
    }
}
