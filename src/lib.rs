//! prio-processor: a batch runtime for Prio two-server private aggregation.
//!
//! Layers, arrows pointing down only: `cli` -> `dataflow` -> `storage` -> `wire`.
//! The client simulator (`simulate`) and the HTML `report` sit beside
//! `dataflow`: they use `storage` and `wire`, and only the cli uses them.
//! See `docs/FORMAT.md` for every byte on the wire.

pub mod cli;
pub mod dataflow;
pub mod fuzzing;
pub mod report;
pub mod simulate;
pub mod storage;
pub mod wire;

/// Exit codes scripts can rely on.
pub mod exit {
    /// Everything worked (and, for `integrate`, every aggregate matched).
    pub const OK: u8 = 0;
    /// The command failed: bad configuration, unreadable input, I/O error.
    pub const FAILURE: u8 = 1;
    /// The command line was not understood (clap's own code).
    pub const USAGE: u8 = 2;
    /// The run finished but results did not match the expected answer.
    pub const MISMATCH: u8 = 3;
    /// `process`/`publish` finished, but most reports of a batch were
    /// rejected for one reason: a misconfiguration, named on stderr.
    pub const ALARM: u8 = 4;
}
