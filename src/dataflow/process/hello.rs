//! hello: the servers compare what they must agree on: the protocol
//! version, every batch's VDAF parameters and threshold, the replay window,
//! and a fingerprint of `SHARED_SECRET`. Each sends its hello before anything else; a run
//! compares it with the peer's at once if the peer's is there, and in any
//! case before the first step that reads the peer's messages (so verify1
//! alone still runs without the peer). Any difference stops the server with
//! what differs, instead of ending in every report rejected and a green exit.

use super::{wait_for_peer, ServerJob};
use crate::dataflow::Error;
use crate::storage::messages::HelloMessage;
use crate::wire::protocol::{Step, PROTOCOL_VERSION};
use crate::wire::vdaf::verify_key_fingerprint;

/// This server's hello.
fn hello(job: &ServerJob) -> HelloMessage {
    HelloMessage {
        protocol: PROTOCOL_VERSION,
        replay_window_days: job.replay_window_days,
        batches: job
            .config
            .iter()
            .map(|(batch_id, spec)| {
                let mut parameters = serde_json::to_value(spec.spec()).expect("small numbers");
                parameters["min_batch_size"] = spec.min_batch_size.into();
                (batch_id.to_string(), parameters)
            })
            .collect(),
        shared_secret_fingerprint: verify_key_fingerprint(&job.secrets.verify_key),
    }
}

/// What differs between two hellos, one line each; empty when they agree.
fn differences(own: &HelloMessage, peer: &HelloMessage) -> Vec<String> {
    let mut found = Vec::new();
    if own.protocol != peer.protocol {
        found.push(format!(
            "protocol version {} here, {} at the peer: run the same prio-processor version",
            own.protocol, peer.protocol
        ));
    }
    if own.replay_window_days != peer.replay_window_days {
        found.push(format!(
            "REPLAY_WINDOW_DAYS is {} here and {} at the peer: set the same on both",
            own.replay_window_days, peer.replay_window_days
        ));
    }
    if own.shared_secret_fingerprint != peer.shared_secret_fingerprint {
        found.push("SHARED_SECRET differs: give both servers the same one".into());
    }
    for (batch_id, parameters) in &own.batches {
        match peer.batches.get(batch_id) {
            None => found.push(format!(
                "batch {batch_id:?} is in this server's DATA_CONFIG only"
            )),
            Some(theirs) if theirs != parameters => found.push(format!(
                "batch {batch_id:?} has {parameters} here and {theirs} at the peer"
            )),
            Some(_) => {}
        }
    }
    for batch_id in peer.batches.keys() {
        if !own.batches.contains_key(batch_id) {
            found.push(format!(
                "batch {batch_id:?} is in the peer's DATA_CONFIG only"
            ));
        }
    }
    found
}

/// Sends this server's hello; returns whether the peer's was there already
/// (and agrees: any difference is an error).
pub fn send(job: &ServerJob) -> Result<bool, Error> {
    job.buckets.send_hello(&hello(job))?;
    if !job.buckets.peer_marker(Step::Hello)?.0 {
        return Ok(false);
    }
    compare(job).map(|()| true)
}

/// Waits for the peer's hello and stops on any difference.
pub fn agree(job: &ServerJob) -> Result<(), Error> {
    wait_for_peer(job, Step::Hello)?;
    compare(job)
}

fn compare(job: &ServerJob) -> Result<(), Error> {
    let peer = job.buckets.peer_hello()?.ok_or_else(|| {
        Error::Cluster("the peer's hello marker is there but its hello is not".into())
    })?;
    let found = differences(&hello(job), &peer);
    if found.is_empty() {
        Ok(())
    } else {
        Err(Error::Disagreement(found.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_the_secret_and_each_batch() {
        let hello = |secret: &str, batches: &[(&str, u64)]| HelloMessage {
            protocol: 1,
            replay_window_days: 7,
            batches: batches
                .iter()
                .map(|(id, n)| (id.to_string(), serde_json::json!({"length": n})))
                .collect(),
            shared_secret_fingerprint: secret.into(),
        };
        let own = hello("s", &[("x", 8), ("y", 4)]);
        assert!(differences(&own, &own).is_empty());
        let found = differences(&own, &hello("t", &[("x", 16), ("z", 4)]));
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(found[0].contains("SHARED_SECRET"));
        assert!(found[1].contains("\"x\"") && found[1].contains("16"));
        assert!(found[2].contains("\"y\" is in this server's DATA_CONFIG only"));
        assert!(found[3].contains("\"z\" is in the peer's DATA_CONFIG only"));
        let shorter = HelloMessage {
            replay_window_days: 1,
            ..own.clone()
        };
        assert_eq!(
            differences(&own, &shorter),
            ["REPLAY_WINDOW_DAYS is 7 here and 1 at the peer: set the same on both"]
        );
    }
}
