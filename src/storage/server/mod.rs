//! One server's buckets for one date: every object name `process` reads or
//! writes, and which format each object has. Nothing else spells a path.
//!
//! ```text
//! BUCKET_INTERNAL_PRIVATE/DATE/raw/batch_id=X/part-NNNNN.{parquet,ndjson}   staged shares
//! BUCKET_INTERNAL_PRIVATE/DATE/intermediate/internal/STEP/...               own copy, states, sums
//! BUCKET_EXTERNAL_SHARED/DATE/intermediate/external/STEP/...                sent to the peer
//! BUCKET_INTERNAL_SHARED/DATE/intermediate/external/STEP/...                from the peer
//! BUCKET_INTERNAL_PRIVATE/DATE/processed/batch_id=X/aggregate.{json,parquet} results
//! ```
//!
//! `batch_id=X` is [`batch_dir`]'s encoding of the batch id, never the raw id.
//! Per part, a step's message is `batch_id=X/part-NNNNN.parquet`; verify1's
//! stored states for rows `S..E` are `...part-NNNNN.rows-S-E.parquet`;
//! verify2's sum of accepted output shares is `...part-NNNNN.accepted-sum`.
//! Per batch, the aggregate message is `batch_id=X/aggregate.json`, and the
//! nonces aggregated that date (anti-replay's history) are kept privately
//! as `batch_id=X/nonces-SS.bin`, [`NONCE_SHARDS`] shards. Each
//! step ends with `_SUMMARY.json` and then `_SUCCESS`, the only signal
//! that the step is complete. What goes to the peer is written once
//! ([`Location::put_once`]) and signed: beside each object `NAME` sent to
//! the peer lies `NAME.sig`, written after it, and nothing received is read
//! unless its signature binds it to this date, step, object and sender
//! under the peer's key ([`crate::wire::signing`]).

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;

use super::batch_dir::{batch_dir, batch_id_of};
mod signed;

use signed::sig_name;
pub use signed::Signatures;

use super::location::{Location, StorageError};
use super::messages::{
    decode_message, encode_message, same_json, same_rows, AggregateMessage, HelloMessage,
    MessageRow,
};
use super::published::{
    decode_published, encode_published, published_json, Provenance, PublishedBatch,
};
use super::staged::{decode_staged, StagedFormat, StagedRow, SUCCESS, SUMMARY};
use super::tables::malformed;
use crate::wire::config::BatchSpec;
use crate::wire::protocol::{BatchOutcome, Step};
use crate::wire::vdaf::{Nonce, NONCE_LEN};
use crate::wire::Role;

/// Beside the results: seconds each pass took (`{"verify1+verify2": 6.3, ...}`).
const TIMINGS: &str = "_TIMINGS.json";

/// The hello each server sends before a run.
const HELLO: &str = "_HELLO.json";

/// A staged part this server processes: `batch_id=X/part-NNNNN.ext` under `raw/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedPart {
    pub batch_id: String,
    /// The object name below `raw/`.
    pub name: String,
    format: StagedFormat,
}

impl StagedPart {
    /// `batch_id=X/part-NNNNN`, without the extension.
    fn stem(&self) -> &str {
        self.name
            .rsplit_once('.')
            .map_or(self.name.as_str(), |(s, _)| s)
    }

    /// The message file for this part: same name, always Parquet.
    fn message_name(&self) -> String {
        format!("{}.parquet", self.stem())
    }

    fn states_name(&self, rows: Range<usize>) -> String {
        format!("{}.rows-{}-{}.parquet", self.stem(), rows.start, rows.end)
    }

    fn accepted_sum_name(&self) -> String {
        format!("{}.accepted-sum", self.stem())
    }
}

fn aggregate_name(batch_id: &str) -> String {
    format!("{}/aggregate.json", batch_dir(batch_id))
}

/// How many files a batch's nonce history has per date, whatever the
/// number of workers: each worker owns some shards.
pub const NONCE_SHARDS: usize = 16;

fn nonces_name(batch_id: &str, shard: usize) -> String {
    format!("{}/nonces-{shard:02}.bin", batch_dir(batch_id))
}

/// One server's three buckets, seen for one submission date.
#[derive(Debug, Clone)]
pub struct ServerBuckets {
    date: String,
    /// `BUCKET_INTERNAL_PRIVATE`: this server's own data.
    private: Location,
    /// `BUCKET_INTERNAL_SHARED`: the peer writes here.
    inbox: Location,
    /// `BUCKET_EXTERNAL_SHARED`: the peer's inbox.
    outbox: Location,
    /// Set for a server's own run; a view without (`integrate`'s) reads results only.
    signatures: Option<std::sync::Arc<Signatures>>,
}

impl ServerBuckets {
    pub fn new(date: &str, private: Location, inbox: Location, outbox: Location) -> Self {
        ServerBuckets {
            date: date.to_string(),
            private,
            inbox,
            outbox,
            signatures: None,
        }
    }

    /// A view of one server's published results alone (for `report`): only
    /// its private bucket is read.
    pub fn results(private: Location, date: &str) -> Self {
        ServerBuckets::new(date, private.clone(), private.clone(), private)
    }

    /// The buckets of a whole system run under one root (`integrate`):
    /// `ROOT/server-{a,b}/{private,inbox}`.
    pub fn under_root(root: &Location, role: Role, date: &str) -> Self {
        let bucket = |role: Role, name: &str| root.child(&format!("server-{role}/{name}"));
        ServerBuckets::new(
            date,
            bucket(role, "private"),
            bucket(role, "inbox"),
            bucket(role.peer(), "inbox"),
        )
    }

    /// The submission date these buckets are seen for.
    pub fn date(&self) -> &str {
        &self.date
    }

    /// The same buckets seen for another date.
    fn on_date(&self, date: &str) -> ServerBuckets {
        ServerBuckets {
            date: date.to_string(),
            ..self.clone()
        }
    }

    pub fn private(&self) -> &Location {
        &self.private
    }

    pub fn inbox(&self) -> &Location {
        &self.inbox
    }

    pub fn outbox(&self) -> &Location {
        &self.outbox
    }

    /// Where `stage --output-a/--output-b` puts this server's parts.
    pub fn raw(&self) -> Location {
        self.private.child(&format!("{}/raw", self.date))
    }

    /// This server's copy of what it produced in `step`.
    fn own(&self, step: Step) -> Location {
        self.private
            .child(&format!("{}/intermediate/internal/{step}", self.date))
    }

    /// Where the peer finds what this server produced in `step`.
    fn sent(&self, step: Step) -> Location {
        self.outbox
            .child(&format!("{}/intermediate/external/{step}", self.date))
    }

    /// What the peer produced in `step`.
    fn received(&self, step: Step) -> Location {
        self.inbox
            .child(&format!("{}/intermediate/external/{step}", self.date))
    }

    /// Removes the staging files that killed runs left half-written in what
    /// this server's steps write for the date (its intermediate and
    /// processed objects, what it sends the peer, and the ownership marker of
    /// its buckets; `raw/` is stage's and stays); returns how many. For the end of a run: nothing of this
    /// server may be writing.
    pub fn remove_debris(&self) -> Result<usize, StorageError> {
        let own = ["intermediate", "processed"]
            .map(|d| self.private.child(&format!("{}/{d}", self.date)));
        let mut removed = self.outbox.child(&self.date).remove_debris()?;
        for location in own {
            removed += location.remove_debris()?;
        }
        for bucket in [&self.private, &self.inbox] {
            removed += bucket.remove_debris_of(signed::OWNER)?;
        }
        Ok(removed)
    }

    /// Where the published results are.
    pub fn processed(&self) -> Location {
        self.private.child(&format!("{}/processed", self.date))
    }

    /// The marker that says `stage` finished this date, and its URL.
    pub fn staged_marker(&self) -> Result<(bool, String), StorageError> {
        let raw = self.raw();
        Ok((raw.exists(SUCCESS)?, format!("{}/{SUCCESS}", raw.url())))
    }

    /// Every staged part, sorted by name; objects that are not parts are left out.
    pub fn staged_parts(&self) -> Result<Vec<StagedPart>, StorageError> {
        Ok(self
            .raw()
            .list()?
            .into_iter()
            .filter_map(|(name, _)| {
                let (dir, file) = name.split_once('/')?;
                let batch_id = batch_id_of(dir)?;
                let format = StagedFormat::of_extension(file.rsplit('.').next()?)?;
                Some(StagedPart {
                    batch_id,
                    name,
                    format,
                })
            })
            .collect())
    }

    pub fn read_part(&self, part: &StagedPart) -> Result<Vec<StagedRow>, StorageError> {
        let raw = self.raw();
        let data = raw.get(&part.name)?;
        decode_staged(
            &format!("{}/{}", raw.url(), part.name),
            part.format,
            data,
            self.signatures().role,
        )
    }

    /// Whether this server finished `step`, and the marker's URL.
    pub fn step_marker(&self, step: Step) -> Result<(bool, String), StorageError> {
        let own = self.own(step);
        Ok((own.exists(SUCCESS)?, format!("{}/{SUCCESS}", own.url())))
    }

    /// Whether the peer finished `step` (its signed marker is there), and the marker's URL.
    pub fn peer_marker(&self, step: Step) -> Result<(bool, String), StorageError> {
        let received = self.received(step);
        let url = format!("{}/{SUCCESS}", received.url());
        // The signature is written last: until it is there, the step is not done.
        if !received.exists(&sig_name(SUCCESS))? {
            return Ok((false, url));
        }
        Ok((self.receive(step, SUCCESS)?.is_some(), url))
    }

    /// Whether the peer's message of `step` for `part` has arrived whole (signed).
    pub fn peer_has(&self, step: Step, part: &StagedPart) -> Result<bool, StorageError> {
        self.received(step).exists(&sig_name(&part.message_name()))
    }

    /// The peer's rows of `step` for a part; none when the peer has no such part.
    pub fn peer_rows(
        &self,
        step: Step,
        part: &StagedPart,
    ) -> Result<Vec<MessageRow>, StorageError> {
        let name = part.message_name();
        match self.receive(step, &name)? {
            Some(data) => decode_message(&format!("{}/{name}", self.received(step).url()), data),
            None => Ok(Vec::new()),
        }
    }

    /// This server's own rows of `step` for a part, in order.
    pub fn own_rows(&self, step: Step, part: &StagedPart) -> Result<Vec<MessageRow>, StorageError> {
        read_rows(&self.own(step), &part.message_name())
    }

    /// Sends a part's rows of `step` to the peer, and keeps a copy when
    /// later steps read them again (verify2's verdicts).
    pub fn send_rows(
        &self,
        step: Step,
        part: &StagedPart,
        rows: &[MessageRow],
    ) -> Result<(), StorageError> {
        let name = part.message_name();
        let bytes = Bytes::from(encode_message(rows));
        self.send(step, &name, bytes.clone(), same_rows)?;
        if step != Step::Verify1 {
            self.own(step).put(&name, bytes)?;
        }
        Ok(())
    }

    /// Keeps verify1's states of rows `range` of a part until verify2.
    pub fn store_states(
        &self,
        part: &StagedPart,
        range: Range<usize>,
        rows: &[MessageRow],
    ) -> Result<(), StorageError> {
        self.own(Step::Verify1)
            .put(&part.states_name(range), encode_message(rows))
    }

    /// verify1's stored states of exactly rows `range` of a part, if any.
    pub fn stored_states(
        &self,
        part: &StagedPart,
        range: Range<usize>,
    ) -> Result<Option<Vec<MessageRow>>, StorageError> {
        match read_rows(&self.own(Step::Verify1), &part.states_name(range)) {
            Err(StorageError::NotFound { .. }) => Ok(None),
            other => other.map(Some),
        }
    }

    /// Keeps verify2's sum of the output shares this server accepted in a part.
    pub fn keep_accepted_sum(&self, part: &StagedPart, sum: Vec<u8>) -> Result<(), StorageError> {
        self.own(Step::Verify2).put(&part.accepted_sum_name(), sum)
    }

    /// verify2's kept sum for a part, if that run kept one.
    pub fn accepted_sum(&self, part: &StagedPart) -> Result<Option<Bytes>, StorageError> {
        match self.own(Step::Verify2).get(&part.accepted_sum_name()) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends a batch's aggregate message to the peer and keeps a copy.
    pub fn send_aggregate(&self, message: &AggregateMessage) -> Result<(), StorageError> {
        let name = aggregate_name(&message.batch_id);
        let bytes = message.encode();
        self.send(
            Step::Aggregate,
            &name,
            Bytes::from(bytes.clone()),
            same_json,
        )?;
        self.own(Step::Aggregate).put(&name, bytes)
    }

    pub fn own_aggregate(&self, batch_id: &str) -> Result<Option<AggregateMessage>, StorageError> {
        read_aggregate(&self.own(Step::Aggregate), batch_id)
    }

    pub fn peer_aggregate(&self, batch_id: &str) -> Result<Option<AggregateMessage>, StorageError> {
        let name = aggregate_name(batch_id);
        let url = format!("{}/{name}", self.received(Step::Aggregate).url());
        self.receive(Step::Aggregate, &name)?
            .map(|data| AggregateMessage::decode(&url, &data))
            .transpose()
    }

    /// Keeps the nonces this date aggregated for one shard of a batch
    /// (sorted, 16 bytes each), for the anti-replay of later dates.
    pub fn keep_nonces(
        &self,
        batch_id: &str,
        shard: usize,
        nonces: &[Nonce],
    ) -> Result<(), StorageError> {
        self.own(Step::Aggregate)
            .put(&nonces_name(batch_id, shard), nonces.concat())
    }

    /// Whether both servers finished `aggregate` for another date (this
    /// server's marker, and the peer's signed one in the inbox): only then
    /// does that date's nonce history count, so that a date one server
    /// never finished counts at neither.
    pub fn aggregated_on(&self, date: &str) -> Result<bool, StorageError> {
        let earlier = self.on_date(date);
        Ok(earlier.step_marker(Step::Aggregate)?.0 && earlier.peer_marker(Step::Aggregate)?.0)
    }

    /// The nonces another date kept for one shard of a batch; none if it kept none.
    pub fn earlier_nonces(
        &self,
        date: &str,
        batch_id: &str,
        shard: usize,
    ) -> Result<Vec<Nonce>, StorageError> {
        let dir = self.on_date(date).own(Step::Aggregate);
        let name = nonces_name(batch_id, shard);
        let data = match dir.get(&name) {
            Ok(data) => data,
            Err(StorageError::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let (nonces, rest) = data.as_chunks::<NONCE_LEN>();
        if !rest.is_empty() {
            return Err(malformed(
                &format!("{}/{name}", dir.url()),
                format!("{} bytes is not a whole number of nonces", data.len()),
            ));
        }
        Ok(nonces.to_vec())
    }

    /// Sends this server's hello to the peer (written once) and marks it sent.
    pub fn send_hello(&self, hello: &HelloMessage) -> Result<(), StorageError> {
        self.send(Step::Hello, HELLO, Bytes::from(hello.encode()), same_json)?;
        self.send(Step::Hello, SUCCESS, Bytes::new(), |a, b| a == b)
    }

    /// The peer's hello, once its signed marker is there.
    pub fn peer_hello(&self) -> Result<Option<HelloMessage>, StorageError> {
        let url = format!("{}/{HELLO}", self.received(Step::Hello).url());
        self.receive(Step::Hello, HELLO)?
            .map(|data| HelloMessage::decode(&url, &data))
            .transpose()
    }

    /// Marks `step` done: the peer's copy of the summary and marker first,
    /// then this server's (the marker that makes a rerun skip the step).
    pub fn finish_step(&self, step: Step, summary: Vec<u8>) -> Result<(), StorageError> {
        let summary = Bytes::from(summary);
        self.send(step, SUMMARY, summary.clone(), same_json)?;
        self.send(step, SUCCESS, Bytes::new(), |a, b| a == b)?;
        let own = self.own(step);
        own.put(SUMMARY, summary)?;
        own.put(SUCCESS, Vec::new())
    }

    /// Before publishing: no reader may trust `processed/` until it is whole again.
    pub fn start_publish(&self) -> Result<(), StorageError> {
        self.processed().delete(SUCCESS)
    }

    /// Writes a published batch's results, JSON and Parquet.
    pub fn publish(&self, outcome: &BatchOutcome, spec: &BatchSpec) -> Result<(), StorageError> {
        let processed = self.processed();
        let dir = batch_dir(&outcome.batch_id);
        let from = Provenance {
            submission_date: chrono::NaiveDate::parse_from_str(&self.date, "%Y-%m-%d")
                .map_err(|_| malformed(processed.url(), "the date is not YYYY-MM-DD"))?,
            server: self.signatures().role,
        };
        processed.put(
            &format!("{dir}/aggregate.json"),
            published_json(outcome, spec, from),
        )?;
        processed.put(
            &format!("{dir}/aggregate.parquet"),
            encode_published(outcome, from),
        )
    }

    /// Removes a batch's results, so that a rerun that does not publish it
    /// leaves no earlier result standing.
    pub fn withdraw(&self, batch_id: &str) -> Result<(), StorageError> {
        self.processed()
            .delete_all(&batch_dir(batch_id))
            .map(|_| ())
    }

    /// Every batch's outcome in `_SUMMARY.json`, then `_SUCCESS`.
    pub fn finish_publish(&self, outcomes: &[BatchOutcome]) -> Result<(), StorageError> {
        let processed = self.processed();
        processed.put(SUMMARY, serde_json::to_vec_pretty(outcomes).expect("JSON"))?;
        processed.put(SUCCESS, Vec::new())
    }

    /// Every batch's outcome as the last complete publish left them; `None`
    /// when the date has not been published (no `processed/_SUCCESS`).
    pub fn outcomes(&self) -> Result<Option<Vec<BatchOutcome>>, StorageError> {
        let processed = self.processed();
        if !processed.exists(SUCCESS)? {
            return Ok(None);
        }
        let bytes = processed.get(SUMMARY)?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| malformed(&format!("{}/{SUMMARY}", processed.url()), e))
    }

    /// Records how long each pass of a run took, beside the results, over
    /// what earlier runs of the date recorded for the same passes.
    pub fn record_timings(&self, passes: &[(&str, Duration)]) -> Result<(), StorageError> {
        let mut timings = self.timings()?;
        for (pass, took) in passes {
            timings.insert(pass.to_string(), took.as_secs_f64());
        }
        self.processed()
            .put(TIMINGS, serde_json::to_vec_pretty(&timings).expect("JSON"))
    }

    /// Seconds each pass took when it last ran for the date (`_TIMINGS.json`).
    pub fn timings(&self) -> Result<BTreeMap<String, f64>, StorageError> {
        let processed = self.processed();
        match processed.get(TIMINGS) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| malformed(&format!("{}/{TIMINGS}", processed.url()), e)),
            Err(StorageError::NotFound { .. }) => Ok(BTreeMap::new()),
            Err(e) => Err(e),
        }
    }

    /// A batch's published result, if there is one.
    pub fn published(&self, batch_id: &str) -> Result<Option<PublishedBatch>, StorageError> {
        let processed = self.processed();
        let name = format!("{}/aggregate.json", batch_dir(batch_id));
        match processed.get(&name) {
            Ok(bytes) => decode_published(&format!("{}/{name}", processed.url()), &bytes).map(Some),
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn read_rows(dir: &Location, name: &str) -> Result<Vec<MessageRow>, StorageError> {
    let data = dir.get(name)?;
    decode_message(&format!("{}/{name}", dir.url()), data)
}

fn read_aggregate(
    dir: &Location,
    batch_id: &str,
) -> Result<Option<AggregateMessage>, StorageError> {
    let name = aggregate_name(batch_id);
    match dir.get(&name) {
        Ok(data) => AggregateMessage::decode(&format!("{}/{name}", dir.url()), &data).map(Some),
        Err(StorageError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;
