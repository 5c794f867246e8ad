//! Property: for random measurements, and random corruption of a random
//! fraction of the reports (on the wire, or by a hostile client before
//! sealing), both servers publish exactly the plain sum over the
//! uncorrupted reports, for every VDAF. The servers are the real
//! pipeline (`process::run`, one worker each, in two threads of this
//! process) over local buckets; the expected sum is added up here from the
//! measurements, independently of the code under test.

use std::time::Duration;

use bytes::Bytes;
use prio_processor::dataflow::process::{run, Retry, ServerJob};
use prio_processor::dataflow::Cluster;
use prio_processor::storage::batch_dir::batch_dir;
use prio_processor::storage::location::Location;
use prio_processor::storage::server::{ServerBuckets, Signatures};
use prio_processor::storage::staged::{encode_part, StagedFormat, SUCCESS};
use prio_processor::wire::client::ServerPublicKeys;
use prio_processor::wire::config::BatchConfig;
use prio_processor::wire::envelope::{generate_keypair, seal};
use prio_processor::wire::protocol::{AlarmRule, BatchStatus, Step};
use prio_processor::wire::server::ServerSecrets;
use prio_processor::wire::signing::SigningPrivateKey;
use prio_processor::wire::vdaf::Measurement;
use prio_processor::wire::Role;
use proptest::prelude::*;

const DATE: &str = "2019-06-26";

/// One batch per VDAF, small enough for many cases.
const VDAFS: [(&str, &str); 6] = [
    (
        "prio2",
        r#"{"vdaf": "prio2", "length": 12, "min_batch_size": 1}"#,
    ),
    ("count", r#"{"vdaf": "count", "min_batch_size": 1}"#),
    (
        "sum",
        r#"{"vdaf": "sum", "max_measurement": 300, "min_batch_size": 1}"#,
    ),
    (
        "sumvec",
        r#"{"vdaf": "sumvec", "length": 6, "bits": 3, "min_batch_size": 1}"#,
    ),
    (
        "histogram",
        r#"{"vdaf": "histogram", "length": 5, "min_batch_size": 1}"#,
    ),
    (
        "multihot",
        r#"{"vdaf": "multihotcountvec", "length": 7, "max_weight": 3, "min_batch_size": 1}"#,
    ),
];

/// A measurement and its plain contribution to the sum.
type Plain = (Measurement, Vec<u128>);

/// A valid measurement of VDAF `v` (an index into `VDAFS`).
fn measurement(v: usize) -> BoxedStrategy<Plain> {
    let vector = |values: Vec<u64>| {
        let plain = values.iter().map(|&x| u128::from(x)).collect();
        (Measurement::Vector(values), plain)
    };
    match VDAFS[v].0 {
        "prio2" => prop::collection::vec(0..=1u64, 12).prop_map(vector).boxed(),
        "count" => (0..=1u64)
            .prop_map(|x| (Measurement::Scalar(x), vec![x.into()]))
            .boxed(),
        "sum" => (0..=300u64)
            .prop_map(|x| (Measurement::Scalar(x), vec![x.into()]))
            .boxed(),
        "sumvec" => prop::collection::vec(0..8u64, 6).prop_map(vector).boxed(),
        "histogram" => (0..5usize)
            .prop_map(|bucket| {
                let mut plain = vec![0u128; 5];
                plain[bucket] = 1;
                (Measurement::Scalar(bucket as u64), plain)
            })
            .boxed(),
        "multihot" => prop::sample::subsequence((0..7usize).collect::<Vec<_>>(), 0..=3)
            .prop_map(move |ones| {
                let mut values = vec![0u64; 7];
                for i in ones {
                    values[i] = 1;
                }
                vector(values)
            })
            .boxed(),
        other => unreachable!("no measurements for {other}"),
    }
}

/// What happens to one report on its way to the servers.
#[derive(Debug, Clone)]
enum Fate {
    Intact,
    /// One bit of one server's envelope flipped (`at` wraps around its length).
    FlipBit {
        server: usize,
        at: usize,
        bit: u8,
    },
    /// One server's envelope cut short.
    Truncate {
        server: usize,
        keep: usize,
    },
    /// Server b gets the b share of another report: a pair that never belonged together.
    MixedPair,
    /// The report is missing from server b's part.
    MissingAtB,
    /// A hostile client: one bit of one server's input share flipped before
    /// sealing, so that both servers open a share that is not a valid one.
    BadInputShare {
        server: usize,
        at: usize,
        bit: u8,
    },
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        6 => Just(Fate::Intact),
        1 => (0..2usize, any::<usize>(), 0..8u8)
            .prop_map(|(server, at, bit)| Fate::FlipBit { server, at, bit }),
        1 => (0..2usize, any::<usize>()).prop_map(|(server, keep)| Fate::Truncate { server, keep }),
        1 => Just(Fate::MixedPair),
        1 => Just(Fate::MissingAtB),
        1 => (0..2usize, any::<usize>(), 0..8u8)
            .prop_map(|(server, at, bit)| Fate::BadInputShare { server, at, bit }),
    ]
}

/// A VDAF (index into `VDAFS`) and its reports.
fn case() -> impl Strategy<Value = (usize, Vec<(Plain, Fate)>)> {
    (0..VDAFS.len()).prop_flat_map(|v| {
        (
            Just(v),
            prop::collection::vec((measurement(v), fate()), 1..24),
        )
    })
}

/// Both servers' jobs over buckets under `root`.
fn jobs(root: &Location, config: &BatchConfig) -> ([ServerJob; 2], ServerPublicKeys) {
    let hpke = [generate_keypair(), generate_keypair()];
    let signing = [SigningPrivateKey::generate(), SigningPrivateKey::generate()];
    let verify_key = rand::random();
    let public = ServerPublicKeys {
        a: hpke[0].public_key(),
        b: hpke[1].public_key(),
    };
    let jobs = Role::BOTH.map(|role| {
        let i = role.agg_id();
        ServerJob {
            secrets: ServerSecrets {
                role,
                private_keys: hpke[i].clone().into(),
                verify_key,
            },
            config: config.clone(),
            buckets: ServerBuckets::under_root(root, role, DATE).signed(Signatures {
                role,
                own: signing[i].clone(),
                peer: signing[1 - i].public_key(),
            }),
            retry: Retry {
                limit: 200,
                delay: Duration::from_millis(10),
                exponent: 1.0,
            },
            steps: Step::ALL.to_vec(),
            replay_window_days: 7,
            alarm: AlarmRule {
                max_rejected_fraction: 0.5,
                min_reports: 10,
            },
            progress: std::sync::Arc::new(()),
        }
    });
    (jobs, public)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn published_sums_cover_exactly_the_uncorrupted_reports((v, reports) in case()) {
        let (batch_id, spec) = VDAFS[v];
        let config = BatchConfig::from_json(&format!("{{\"{batch_id}\": {spec}}}")).unwrap();
        let vdaf = &config.get(batch_id).unwrap().vdaf;
        let dir = tempfile::tempdir().unwrap();
        let root = Location::parse(dir.path().to_str().unwrap()).unwrap();
        let (jobs, public) = jobs(&root, &config);

        let entries: Vec<[Vec<u8>; 2]> = reports
            .iter()
            .map(|((m, _), fate)| {
                let mut shares = vdaf.shard(batch_id, m, &rand::random()).unwrap();
                if let Fate::BadInputShare { server, at, bit } = fate {
                    let input = &mut shares[*server].input_share;
                    let len = input.len();
                    input[at % len] ^= 1 << bit;
                }
                Role::BOTH.map(|role| {
                    seal(public.get(role), role, batch_id, &shares[role.agg_id()].encode()).unwrap()
                })
            })
            .collect();
        let mut rows: [Vec<([u8; 16], Bytes)>; 2] = [Vec::new(), Vec::new()];
        let mut want = vec![0u128; config.get(batch_id).unwrap().spec().output_len()];
        let mut intact = 0u64;
        for (n, ((_, plain), fate)) in reports.iter().enumerate() {
            let mut shares = entries[n].clone();
            match fate {
                Fate::Intact => {
                    intact += 1;
                    want.iter_mut().zip(plain).for_each(|(w, p)| *w += p);
                }
                Fate::FlipBit { server, at, bit } => {
                    let len = shares[*server].len();
                    shares[*server][at % len] ^= 1 << bit;
                }
                Fate::Truncate { server, keep } => {
                    let len = shares[*server].len();
                    shares[*server].truncate(keep % len);
                }
                Fate::MixedPair => shares[1] = entries[(n + 1) % entries.len()][1].clone(),
                Fate::MissingAtB | Fate::BadInputShare { .. } => {}
            }
            // With one report, the "other" report of a mixed pair is itself.
            if matches!(fate, Fate::MixedPair) && entries.len() == 1 {
                intact += 1;
                want.iter_mut().zip(plain).for_each(|(w, p)| *w += p);
            }
            let id: [u8; 16] = rand::random();
            for (server, share) in shares.into_iter().enumerate() {
                if server == 1 && matches!(fate, Fate::MissingAtB) {
                    continue;
                }
                rows[server].push((id, Bytes::from(share)));
            }
        }
        for role in Role::BOTH {
            let raw = jobs[role.agg_id()].buckets.raw();
            let part = encode_part(StagedFormat::Parquet, batch_id, role, &rows[role.agg_id()]);
            raw.put(&format!("{}/part-00000.parquet", batch_dir(batch_id)), part).unwrap();
            raw.put(SUCCESS, Vec::new()).unwrap();
        }

        let cluster = Cluster { workers: 1, processes: 1, process: 0, hostfile: None };
        let servers: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let cluster = cluster.clone();
                std::thread::spawn(move || {
                    job.buckets.claim().unwrap();
                    run(job, &cluster).unwrap()
                })
            })
            .collect();
        for server in servers {
            let outcome = server.join().unwrap().outcomes.remove(0);
            prop_assert_eq!(outcome.reports_aggregated, intact, "{:?}", outcome);
            if intact == 0 {
                prop_assert_eq!(outcome.status, BatchStatus::Withheld);
            } else {
                prop_assert_eq!(outcome.status, BatchStatus::Published, "{:?}", outcome);
                prop_assert_eq!(outcome.aggregate.as_ref(), Some(&want));
            }
        }
    }
}
