//! Pure data model and cryptography glue: pings, batch config, the VDAF enum
//! over the `prio` crate, and the HPKE share envelope. No I/O lives here.

pub mod client;
pub mod config;
pub mod envelope;
pub mod ping;
pub mod prio1;
pub mod protocol;
pub mod report_id;
pub mod server;
pub mod signing;
pub mod vdaf;

use serde::{Deserialize, Serialize};

pub use protocol::Rejection;

/// Which of the two aggregation servers a share or message belongs to.
///
/// Server `a` is the VDAF leader (aggregator id 0), server `b` the helper (1),
/// as in Firefox's `prio.a` / `prio.b` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    A,
    B,
}

impl Role {
    pub const BOTH: [Role; 2] = [Role::A, Role::B];

    /// The VDAF aggregator id.
    pub fn agg_id(self) -> usize {
        match self {
            Role::A => 0,
            Role::B => 1,
        }
    }

    pub fn peer(self) -> Role {
        match self {
            Role::A => Role::B,
            Role::B => Role::A,
        }
    }

    /// Lower-case letter, as used in pings and paths.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::A => "a",
            Role::B => "b",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A server id that is neither A nor B.
#[derive(Debug, thiserror::Error)]
#[error("server id must be A or B, got {0:?}")]
pub struct BadRole(pub String);

impl std::str::FromStr for Role {
    type Err = BadRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "a" | "A" => Ok(Role::A),
            "b" | "B" => Ok(Role::B),
            other => Err(BadRole(other.to_string())),
        }
    }
}
