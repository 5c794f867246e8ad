//! prio-processor: a batch runtime for Prio two-server private aggregation.
//!
//! Layers, arrows pointing down only: `cli` -> `storage` -> `wire`.
//! See `docs/FORMAT.md` for every byte on the wire.

pub mod cli;
pub mod storage;
pub mod wire;
