//! One enum over the `prio` crate's VDAFs with a small byte-oriented API:
//! client shard; server decode + verify_init; combine verifier shares and
//! verify_next; aggregate; unshard. No field or proof code of our own.

use std::sync::Arc;

use prio::codec::{Encode, ParameterizedDecode};
use prio::vdaf::prio2::Prio2;
use prio::vdaf::prio3::{Prio3Count, Prio3Histogram, Prio3MultihotCountVec, Prio3Sum, Prio3SumVec};
use prio::vdaf::{Aggregatable, Aggregator, Client, Collector, VdafError, VerifyTransition};

mod prio1;
mod spec;

use crate::wire::envelope::KeySet;
use crate::wire::prio1::field::Fp;
use prio1::{add_into, decode_elements, encode_elements, Prio1State, Prio1Vdaf};
use spec::Typed;
pub use spec::{Measurement, VdafSpec};

use super::{Rejection, Role};

/// Length of the VDAF verify key shared by the two servers (`SHARED_SECRET`).
pub const VERIFY_KEY_LEN: usize = 32;
/// Length of the per-report nonce chosen by the client.
pub const NONCE_LEN: usize = 16;

pub type VerifyKey = [u8; VERIFY_KEY_LEN];

/// Length of the seed system's `SHARED_SECRET` (libprio's PRG seed).
pub const SEED_SECRET_LEN: usize = 16;

/// The verify key of a `SHARED_SECRET`: its 32 bytes, or for the seed
/// system's 16-byte secret `SHA-256("prio-processor verify key from a
/// 16-byte secret v1" || secret)`, so that one secret serves every VDAF of
/// a config (prio1 batches derive their check seed from the verify key).
pub fn verify_key_from_secret(secret: &[u8]) -> Option<VerifyKey> {
    use sha2::Digest;
    match secret.len() {
        VERIFY_KEY_LEN => secret.try_into().ok(),
        SEED_SECRET_LEN => Some(
            sha2::Sha256::new()
                .chain_update(b"prio-processor verify key from a 16-byte secret v1")
                .chain_update(secret)
                .finalize()
                .into(),
        ),
        _ => None,
    }
}

/// A fingerprint of the shared verify key that the servers can compare in
/// the open: HMAC-SHA256 keyed by it over a fixed label, hex. It tells
/// whether two keys are equal and nothing else about them.
pub fn verify_key_fingerprint(key: &VerifyKey) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    mac.update(b"prio-processor shared secret fingerprint v1");
    hex::encode(&mac.finalize().into_bytes()[..16])
}
pub type Nonce = [u8; NONCE_LEN];

/// Errors on the client side or from misuse of the API (never a per-report rejection).
#[derive(Debug, thiserror::Error)]
pub enum VdafUseError {
    #[error("measurement does not fit {vdaf}: {message}")]
    Measurement { vdaf: &'static str, message: String },
    #[error("prio: {0}")]
    Prio(#[from] VdafError),
    #[error("encoding: {0}")]
    Codec(#[from] prio::codec::CodecError),
    #[error("values of different VDAFs were combined; they are built from one Vdaf")]
    Mismatch,
    #[error("prio1 reports are sealed with libprio's own encryption (wire::prio1), not sharded into envelopes")]
    SealsItsOwn,
}

/// What each server receives from the client, inside its HPKE envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportShare {
    pub nonce: Nonce,
    pub public_share: Vec<u8>,
    pub input_share: Vec<u8>,
}

impl ReportShare {
    /// `nonce[16] || u32be(len(public_share)) || public_share || input_share`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(NONCE_LEN + 4 + self.public_share.len() + self.input_share.len());
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&(self.public_share.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.public_share);
        out.extend_from_slice(&self.input_share);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Rejection> {
        let nonce: Nonce = bytes
            .get(..NONCE_LEN)
            .and_then(|n| n.try_into().ok())
            .ok_or(Rejection::Undecodable)?;
        let len_bytes: [u8; 4] = bytes
            .get(NONCE_LEN..NONCE_LEN + 4)
            .and_then(|n| n.try_into().ok())
            .ok_or(Rejection::Undecodable)?;
        let public_end = (NONCE_LEN + 4)
            .checked_add(u32::from_be_bytes(len_bytes) as usize)
            .filter(|&end| end <= bytes.len())
            .ok_or(Rejection::Undecodable)?;
        Ok(ReportShare {
            nonce,
            public_share: bytes[NONCE_LEN + 4..public_end].to_vec(),
            input_share: bytes[public_end..].to_vec(),
        })
    }
}

/// The VDAF application context: binds every proof to its batch id.
pub fn context(batch_id: &str) -> Vec<u8> {
    let mut ctx = b"prio-processor/v1/".to_vec();
    ctx.extend_from_slice(batch_id.as_bytes());
    ctx
}

/// The one list of supported VDAFs: enum variant and prio type. The enums
/// below and every dispatch over them are generated from it, so a VDAF added
/// here and missed in a dispatch does not compile. Passes the list to
/// `$callback!($args... [list])`.
macro_rules! with_vdafs {
    ($callback:ident!($($args:tt)*)) => {
        $callback! { $($args)* [
            Prio2(Prio2),
            Count(Prio3Count),
            Sum(Prio3Sum),
            SumVec(Prio3SumVec),
            Histogram(Prio3Histogram),
            MultihotCountVec(Prio3MultihotCountVec),
        ] }
    };
}

/// One match arm per VDAF over `$s`, with `$pats` (one `Enum(bindings)` per
/// value matched) bound to that VDAF's variant; `wrap = Enum` binds `wrap` to
/// the constructor of the same variant of `Enum`. Prio v1, ours and not the
/// prio crate's, has an arm of its own (`prio1 PATTERN => ...`). Over one
/// value the match is exhaustive; over several, `else` covers values of
/// different VDAFs.
macro_rules! each_vdaf {
    ($s:expr; $pats:tt; $($wrap:ident = $W:ident),* => $body:expr; prio1 $p1:pat => $b1:expr) => {
        with_vdafs!(each_vdaf!(@one $s; $pats; [$($wrap = $W),*]; $body; $p1 => $b1;))
    };
    ($s:expr; $pats:tt; $($wrap:ident = $W:ident),* => $body:expr; prio1 $p1:pat => $b1:expr; else $other:expr) => {
        with_vdafs!(each_vdaf!(@many $s; $pats; [$($wrap = $W),*]; $body; $p1 => $b1; $other;))
    };
    (@one $s:expr; $pats:tt; $wraps:tt; $body:expr; $p1:pat => $b1:expr; [$($variant:ident($ty:ty)),+ $(,)?]) => {
        match $s {
            $(each_vdaf!(@pat $variant $pats) => {
                each_vdaf!(@wrap $variant $wraps);
                $body
            })+
            $p1 => $b1,
        }
    };
    (@many $s:expr; $pats:tt; $wraps:tt; $body:expr; $p1:pat => $b1:expr; $other:expr; [$($variant:ident($ty:ty)),+ $(,)?]) => {
        match $s {
            $(each_vdaf!(@pat $variant $pats) => {
                each_vdaf!(@wrap $variant $wraps);
                $body
            })+
            $p1 => $b1,
            _ => $other,
        }
    };
    (@pat $variant:ident [$E:ident($($bind:pat),*)]) => { $E::$variant($($bind),*) };
    (@pat $variant:ident [$($E:ident($($bind:pat),*)),+]) => { ($($E::$variant($($bind),*)),+) };
    (@wrap $variant:ident [$($wrap:ident = $W:ident),*]) => { $(let $wrap = $W::$variant;)* };
}

/// Declares the enums that hold one value per supported VDAF. A
/// verification state keeps its VDAF, so finishing it needs no second
/// value to agree with.
macro_rules! vdaf_enums {
    ([$($variant:ident($ty:ty)),+ $(,)?]) => {
        #[derive(Clone, Debug)]
        enum Inner { $($variant(Arc<$ty>),)+ Prio1(Arc<Prio1Vdaf>) }

        #[derive(Clone)]
        enum StateInner {
            $($variant(
                Arc<$ty>,
                <$ty as Aggregator<VERIFY_KEY_LEN, NONCE_LEN>>::VerifyState,
                <$ty as Aggregator<VERIFY_KEY_LEN, NONCE_LEN>>::VerifierShare,
            ),)+
            Prio1(Prio1State),
        }

        #[derive(Clone, Debug)]
        enum OutputInner { $($variant(<$ty as prio::vdaf::Vdaf>::OutputShare),)+ Prio1(Vec<Fp>) }

        #[derive(Clone, Debug)]
        enum AggregateInner { $($variant(<$ty as prio::vdaf::Vdaf>::AggregateShare),)+ Prio1(Vec<Fp>) }
    };
}

with_vdafs!(vdaf_enums!());

/// One report share after `verify_init`.
pub struct Initialized {
    /// The client's nonce, as this server's share carries it: what
    /// anti-replay compares (for prio1, whose packets carry none, this
    /// server's part; `verify_finish` gives the report's).
    pub nonce: Nonce,
    pub state: VerifyState,
    /// For the peer.
    pub verifier_share: Vec<u8>,
}

/// A report's verification state on one server after `verify_init`.
#[derive(Clone)]
pub struct VerifyState(StateInner);

/// One verified report's contribution to this server's aggregate.
#[derive(Clone, Debug)]
pub struct OutputShare(OutputInner);

/// This server's running sum of output shares.
#[derive(Clone, Debug)]
pub struct AggregateShare(AggregateInner);

/// A batch's VDAF, built from its validated [`VdafSpec`].
#[derive(Clone, Debug)]
pub struct Vdaf {
    spec: VdafSpec,
    inner: Inner,
}

/// The bound every concrete VDAF in the enum satisfies.
trait Concrete:
    Typed + Client<NONCE_LEN> + Aggregator<VERIFY_KEY_LEN, NONCE_LEN, AggregationParam = ()> + Collector
{
}

impl<V> Concrete for V where
    V: Typed
        + Client<NONCE_LEN>
        + Aggregator<VERIFY_KEY_LEN, NONCE_LEN, AggregationParam = ()>
        + Collector
{
}

/// Splits `u32be(len(state)) || state || own verifier share`.
fn split_state(bytes: &[u8]) -> Result<(&[u8], &[u8]), prio::codec::CodecError> {
    let truncated = || prio::codec::CodecError::UnexpectedValue;
    let len = u32::from_be_bytes(
        bytes
            .get(..4)
            .ok_or_else(truncated)?
            .try_into()
            .expect("4 bytes"),
    ) as usize;
    let state = bytes.get(4..4 + len).ok_or_else(truncated)?;
    Ok((state, &bytes[4 + len..]))
}

fn shard<V: Concrete>(
    v: &V,
    spec: &VdafSpec,
    ctx: &[u8],
    m: &Measurement,
    nonce: &Nonce,
) -> Result<[ReportShare; 2], VdafUseError> {
    let measurement = V::measurement(spec, m).map_err(|message| VdafUseError::Measurement {
        vdaf: spec.name(),
        message,
    })?;
    let (public, inputs) = v.shard(ctx, &measurement, nonce)?;
    let public_share = public.get_encoded()?;
    let share = |i: usize| -> Result<ReportShare, VdafUseError> {
        Ok(ReportShare {
            nonce: *nonce,
            public_share: public_share.clone(),
            input_share: inputs[i].get_encoded()?,
        })
    };
    Ok([share(0)?, share(1)?])
}

type StateOf<V> = <V as Aggregator<VERIFY_KEY_LEN, NONCE_LEN>>::VerifyState;
type ShareOf<V> = <V as Aggregator<VERIFY_KEY_LEN, NONCE_LEN>>::VerifierShare;

fn verify_init<V: Concrete>(
    v: &V,
    verify_key: &VerifyKey,
    ctx: &[u8],
    role: Role,
    report: &ReportShare,
) -> Result<(StateOf<V>, ShareOf<V>), Rejection> {
    let public = V::PublicShare::get_decoded_with_param(v, &report.public_share)
        .map_err(|_| Rejection::Undecodable)?;
    let input = V::InputShare::get_decoded_with_param(&(v, role.agg_id()), &report.input_share)
        .map_err(|_| Rejection::Undecodable)?;
    v.verify_init(
        verify_key,
        ctx,
        role.agg_id(),
        &(),
        &report.nonce,
        &public,
        &input,
    )
    .map_err(|_| Rejection::InvalidProof)
}

fn verify_finish<V: Concrete>(
    v: &V,
    ctx: &[u8],
    role: Role,
    state: &StateOf<V>,
    own: &ShareOf<V>,
    peer: &[u8],
) -> Result<V::OutputShare, Rejection> {
    let peer = ShareOf::<V>::get_decoded_with_param(state, peer)
        .map_err(|_| Rejection::PeerShareUndecodable)?;
    let shares = match role {
        Role::A => [own.clone(), peer],
        Role::B => [peer, own.clone()],
    };
    let message = v
        .verifier_shares_to_message(ctx, &(), shares)
        .map_err(|_| Rejection::InvalidProof)?;
    match v.verify_next(ctx, state.clone(), message) {
        Ok(VerifyTransition::Finish(out)) => Ok(out),
        // Every VDAF we support verifies in one round with two aggregators.
        Ok(VerifyTransition::Continue(..)) | Err(_) => Err(Rejection::InvalidProof),
    }
}

impl Vdaf {
    /// Builds the prio VDAF for a spec; fails on parameters prio refuses.
    pub fn new(spec: VdafSpec) -> Result<Self, VdafError> {
        let inner = match &spec {
            VdafSpec::Prio2 { length } => Inner::Prio2(Arc::new(Prio2::new(*length)?)),
            VdafSpec::Prio1 { length, prg_key } => Inner::Prio1(Arc::new(Prio1Vdaf::new(
                crate::wire::prio1::Prio1::new(*length, *prg_key)
                    .map_err(|e| VdafError::Uncategorized(e.to_string()))?,
            ))),
            VdafSpec::Count => Inner::Count(Arc::new(Prio3Count::new_count(2)?)),
            VdafSpec::Sum { max_measurement } => {
                Inner::Sum(Arc::new(Prio3Sum::new_sum(2, *max_measurement)?))
            }
            VdafSpec::SumVec {
                length,
                max_measurement,
                chunk_length,
            } => Inner::SumVec(Arc::new(Prio3SumVec::new_sum_vec(
                2,
                *max_measurement,
                *length,
                *chunk_length,
            )?)),
            VdafSpec::Histogram {
                length,
                chunk_length,
            } => Inner::Histogram(Arc::new(Prio3Histogram::new_histogram(
                2,
                *length,
                *chunk_length,
            )?)),
            VdafSpec::MultihotCountVec {
                length,
                max_weight,
                chunk_length,
            } => Inner::MultihotCountVec(Arc::new(Prio3MultihotCountVec::new_multihot_count_vec(
                2,
                *length,
                *max_weight,
                *chunk_length,
            )?)),
        };
        Ok(Vdaf { spec, inner })
    }

    pub fn spec(&self) -> &VdafSpec {
        &self.spec
    }

    /// Client: splits a measurement into the report shares for server `a` and `b`.
    pub fn shard(
        &self,
        batch_id: &str,
        measurement: &Measurement,
        nonce: &Nonce,
    ) -> Result<[ReportShare; 2], VdafUseError> {
        let ctx = context(batch_id);
        each_vdaf!(&self.inner; [Inner(v)]; =>
            shard(&**v, &self.spec, &ctx, measurement, nonce);
            prio1 Inner::Prio1(_) => Err(VdafUseError::SealsItsOwn))
    }

    /// The length of each server's report share plaintext (`ReportShare`),
    /// or for prio1 the longest packet. Every prio crate VDAF here encodes
    /// shares of one length, whatever the measurement, so one sharding of
    /// zeros tells it.
    pub fn report_share_lens(&self, batch_id: &str) -> Result<[usize; 2], VdafUseError> {
        if let Inner::Prio1(v) = &self.inner {
            return Ok(v.max_packet_lens(batch_id));
        }
        let shares = self.shard("", &self.spec.zero_measurement(), &[0; NONCE_LEN])?;
        Ok(shares.map(|s| s.encode().len()))
    }

    /// The prio1 parameters, for a batch of Prio v1: its clients seal
    /// libprio packets, not our envelopes.
    pub fn prio1(&self) -> Option<&crate::wire::prio1::Prio1> {
        match &self.inner {
            Inner::Prio1(v) => Some(&v.prio),
            _ => None,
        }
    }

    /// Server, prio1: opens a libprio packet with one of `keys` and starts
    /// verification: this server's nonce part, its state, and the verifier
    /// share. `None` for VDAFs whose shares come in our envelope.
    pub fn open_own_sealing(
        &self,
        keys: &KeySet,
        verify_key: &VerifyKey,
        batch_id: &str,
        role: Role,
        sealed: &[u8],
    ) -> Option<Result<Initialized, Rejection>> {
        let Inner::Prio1(v) = &self.inner else {
            return None;
        };
        Some(
            v.open(keys.x25519(), verify_key, batch_id, role, sealed)
                .map(|(nonce, state, verifier_share)| Initialized {
                    nonce,
                    state: VerifyState(StateInner::Prio1(state)),
                    verifier_share,
                }),
        )
    }

    /// Server: decodes a report share and starts verification. Returns the
    /// state to keep and the encoded verifier share to send to the peer.
    pub fn verify_init(
        &self,
        verify_key: &VerifyKey,
        batch_id: &str,
        role: Role,
        report: &ReportShare,
    ) -> Result<(VerifyState, Vec<u8>), Rejection> {
        let ctx = context(batch_id);
        each_vdaf!(&self.inner; [Inner(v)]; wrap = StateInner => {
            let (state, share) = verify_init(&**v, verify_key, &ctx, role, report)?;
            let encoded = share.get_encoded().map_err(|_| Rejection::Undecodable)?;
            Ok((VerifyState(wrap(v.clone(), state, share)), encoded))
        };
            // Never an envelope: prio1 packets are opened by open_own_sealing.
            prio1 Inner::Prio1(_) => Err(Rejection::Undecodable))
    }

    /// Server: combines its own verifier share with the peer's and finishes
    /// verification, yielding the output share of a valid report and, where
    /// the VDAF derives it from both servers' shares (prio1), the report's
    /// nonce; otherwise the client's nonce stands. The state carries its
    /// VDAF; `self` names the batch.
    pub fn verify_finish(
        &self,
        batch_id: &str,
        role: Role,
        state: &VerifyState,
        peer_share: &[u8],
    ) -> Result<(OutputShare, Option<Nonce>), Rejection> {
        let ctx = context(batch_id);
        each_vdaf!(&state.0; [StateInner(v, s, own)]; wrap = OutputInner =>
            verify_finish(&**v, &ctx, role, s, own, peer_share).map(|out| (OutputShare(wrap(out)), None));
            prio1 StateInner::Prio1(s) => s
                .finish(peer_share)
                .map(|(data, nonce)| (OutputShare(OutputInner::Prio1(data)), Some(nonce))))
    }

    /// A verification state's bytes, kept by the server between steps:
    /// `u32be(len(state)) || state || own verifier share`.
    pub fn encode_state(&self, state: &VerifyState) -> Vec<u8> {
        each_vdaf!(&state.0; [StateInner(_, s, own)]; => {
            let s = s.get_encoded().expect("verify states always encode");
            let mut out = (s.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(&s);
            own.encode(&mut out).expect("verifier shares always encode");
            out
        };
            prio1 StateInner::Prio1(s) => s.encode())
    }

    /// Reads back [`Vdaf::encode_state`] for `role`.
    pub fn decode_state(&self, role: Role, bytes: &[u8]) -> Result<VerifyState, VdafUseError> {
        each_vdaf!(&self.inner; [Inner(v)]; wrap = StateInner => {
            let (state_bytes, share_bytes) = split_state(bytes)?;
            let state = ParameterizedDecode::get_decoded_with_param(&(&**v, role.agg_id()), state_bytes)?;
            let share = ParameterizedDecode::get_decoded_with_param(&state, share_bytes)?;
            Ok(VerifyState(wrap(v.clone(), state, share)))
        };
            prio1 Inner::Prio1(v) => Ok(VerifyState(StateInner::Prio1(Prio1State::decode(&v.prio, role, bytes)?))))
    }

    /// An empty aggregate share.
    pub fn aggregate_init(&self) -> AggregateShare {
        each_vdaf!(&self.inner; [Inner(v)]; wrap = AggregateInner =>
            AggregateShare(wrap(v.aggregate_init(&())));
            prio1 Inner::Prio1(v) => AggregateShare(AggregateInner::Prio1(vec![Fp::ZERO; v.prio.length()])))
    }

    /// Adds one output share into an aggregate share.
    pub fn accumulate(
        &self,
        agg: &mut AggregateShare,
        out: &OutputShare,
    ) -> Result<(), VdafUseError> {
        each_vdaf!((&mut agg.0, &out.0); [AggregateInner(a), OutputInner(o)]; =>
            Ok(a.accumulate(o)?);
            prio1 (AggregateInner::Prio1(a), OutputInner::Prio1(o)) => add_into(a, o);
            else Err(VdafUseError::Mismatch))
    }

    /// Adds another aggregate share (e.g. another worker's) into `agg`.
    pub fn merge(
        &self,
        agg: &mut AggregateShare,
        other: &AggregateShare,
    ) -> Result<(), VdafUseError> {
        each_vdaf!((&mut agg.0, &other.0); [AggregateInner(a), AggregateInner(b)]; =>
            Ok(a.merge(b)?);
            prio1 (AggregateInner::Prio1(a), AggregateInner::Prio1(b)) => add_into(a, b);
            else Err(VdafUseError::Mismatch))
    }

    /// Adds an encoded aggregate share (a slice's, a part's) into `agg`.
    pub fn merge_encoded(
        &self,
        agg: &mut AggregateShare,
        bytes: &[u8],
    ) -> Result<(), VdafUseError> {
        let other = self.decode_aggregate(bytes)?;
        self.merge(agg, &other)
    }

    /// The aggregate share's bytes, as sent to the peer and published.
    pub fn encode_aggregate(&self, agg: &AggregateShare) -> Vec<u8> {
        each_vdaf!(&agg.0; [AggregateInner(a)]; =>
            a.get_encoded().expect("field vectors always encode");
            prio1 AggregateInner::Prio1(a) => encode_elements(a))
    }

    /// Decodes an aggregate share received from the peer.
    pub fn decode_aggregate(&self, bytes: &[u8]) -> Result<AggregateShare, VdafUseError> {
        each_vdaf!(&self.inner; [Inner(v)]; wrap = AggregateInner =>
            Ok(AggregateShare(wrap(ParameterizedDecode::get_decoded_with_param(&(&**v, &()), bytes)?)));
            prio1 Inner::Prio1(v) => Ok(AggregateShare(AggregateInner::Prio1(decode_elements(bytes, v.prio.length())?))))
    }

    /// Collector: combines both servers' aggregate shares into the result.
    pub fn unshard(
        &self,
        a: &AggregateShare,
        b: &AggregateShare,
        num_measurements: usize,
    ) -> Result<Vec<u128>, VdafUseError> {
        each_vdaf!((&self.inner, &a.0, &b.0); [Inner(v), AggregateInner(x), AggregateInner(y)]; =>
            Ok(typed_result(&**v, v.unshard(&(), [x.clone(), y.clone()], num_measurements)?));
            prio1 (Inner::Prio1(_), AggregateInner::Prio1(x), AggregateInner::Prio1(y)) =>
                Ok(x.iter().zip(y).map(|(a, b)| (*a + *b).value()).collect());
            else Err(VdafUseError::Mismatch))
    }
}

fn typed_result<V: Concrete>(_: &V, r: V::AggregateResult) -> Vec<u128> {
    V::result(r)
}
