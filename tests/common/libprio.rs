//! The vectors made by libprio itself (`data/vectors/prio1/`, written by
//! `scripts/prio1-vectors` with PyPI's `prio` 0.2 and 1.1): server keys, the
//! shared seed, and per report the sealed packets and what libprio's
//! servers made of them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// The two generations: the file name is the batch config's `prg_key`.
pub const GENERATIONS: [&str; 2] = ["seed", "seed_and_batch_id"];

#[derive(Deserialize, Debug)]
pub struct LibprioFile {
    pub library: String,
    pub generation: String,
    pub server_a: Keys,
    pub server_b: Keys,
    pub shared_seed_base64: String,
    /// How that libprio drew its check point: `full` (below p) or `range`
    /// (from `length + 2`).
    pub check_point_rule: String,
    pub batches: Vec<LibprioBatch>,
}

#[derive(Deserialize, Debug)]
pub struct Keys {
    /// libprio's export: 64 upper-case hex digits, not clamped.
    pub private_key_hex: String,
    pub public_key_hex: String,
}

#[derive(Deserialize, Debug)]
pub struct LibprioBatch {
    pub batch_id: String,
    pub length: usize,
    /// The point libprio's fresh servers checked each report at (decimal).
    pub check_point: String,
    pub reports: Vec<LibprioReport>,
    /// libprio's aggregate of the reports it found valid.
    pub total: Vec<u64>,
    pub accepted: u64,
}

#[derive(Deserialize, Debug)]
pub struct LibprioReport {
    pub measurement: Vec<bool>,
    /// How the packets were damaged, if they were.
    pub tampered: Option<String>,
    /// base64 of the sealed packets for server A and server B.
    pub a: String,
    pub b: String,
    /// Per server (`a`, `b`): whether libprio opened its packet.
    pub opened: BTreeMap<String, bool>,
    /// Per server: base64 of libprio's verification messages.
    pub verify1: Option<BTreeMap<String, String>>,
    pub verify2: Option<BTreeMap<String, String>>,
    pub valid: bool,
}

impl LibprioFile {
    pub fn load(generation: &str) -> LibprioFile {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("data/vectors/prio1/{generation}.json"));
        let file: LibprioFile =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).expect("libprio vectors");
        assert_eq!(file.generation, generation, "{}", path.display());
        file
    }

    /// The batch config that serves this file's batches, threshold 1.
    pub fn config(&self) -> String {
        let batches: serde_json::Map<String, serde_json::Value> = self
            .batches
            .iter()
            .map(|b| {
                let spec = serde_json::json!({"vdaf": "prio1", "length": b.length,
                    "prg_key": self.generation, "min_batch_size": 1});
                (b.batch_id.clone(), spec)
            })
            .collect();
        serde_json::Value::Object(batches).to_string()
    }
}
