//! The two-server pipeline as two separate OS processes over `file://`
//! buckets. Every published aggregate is compared with the plaintext totals
//! that `generate` computed from the measurements, independently of the VDAFs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

mod common;

use prio_processor::simulate::Expected;
use prio_processor::storage::batch_dir::batch_dir;
use prio_processor::storage::messages::{decode_message, encode_message};
use prio_processor::storage::published::decode_published;

use base64::Engine;
use prio_processor::storage::staged::{decode_staged, encode_part, StagedFormat};
use prio_processor::wire::envelope::generate_keypair;
use prio_processor::wire::signing::{SignedContext, SigningPrivateKey};

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
use prio_processor::wire::{Rejection, Role};

const DATE: &str = "2019-06-26";

const ALL_VDAFS: &str = r#"{
    "prio2": 64,
    "prio1": {"vdaf": "prio1", "length": 33},
    "prio1-later": {"vdaf": "prio1", "length": 5, "prg_key": "seed_and_batch_id"},
    "count": {"vdaf": "count"},
    "sum": {"vdaf": "sum", "max_measurement": 100},
    "sumvec": {"vdaf": "sumvec", "length": 20, "bits": 2},
    "histogram": {"vdaf": "histogram", "length": 7},
    "multihot": {"vdaf": "multihotcountvec", "length": 12, "max_weight": 4}
}"#;

/// Two servers' keys and buckets under one temp dir.
struct World {
    dir: tempfile::TempDir,
    /// Per server: (private, public) X25519 keys.
    keys: [(String, String); 2],
    /// Per server: its Ed25519 signing key.
    signing: [SigningPrivateKey; 2],
    shared_secret: String,
    config: String,
    /// The submission date the servers run, `DATE` unless a test moves on.
    date: String,
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_prio-processor"));
    c.env(
        "STAGING_SECRET",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    );
    for var in [
        "SERVER_ID",
        "PRIVATE_KEY_HEX",
        "PRIVATE_SIGNING_KEY_HEX",
        "PUBLIC_SIGNING_KEY_HEX_EXTERNAL",
        "SHARED_SECRET",
        "DATA_CONFIG",
        "BUCKET_INTERNAL_PRIVATE",
    ] {
        c.env_remove(var);
    }
    c
}

/// `config` with a privacy threshold of 1 where it names none, so that a
/// few reports publish (the default threshold is 100).
fn low_threshold(config: &str) -> String {
    let mut config: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(config).unwrap();
    for spec in config.values_mut() {
        if let Some(length) = spec.as_u64() {
            *spec = serde_json::json!({"vdaf": "prio2", "length": length});
        }
        let fields = spec.as_object_mut().unwrap();
        fields
            .entry("min_batch_size")
            .or_insert(serde_json::json!(1));
    }
    serde_json::to_string(&config).unwrap()
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl World {
    fn new(config: &str, pings: usize, extra: &[&str]) -> (World, serde_json::Value) {
        World::with_unknown_id(config, pings, "bad-id", extra)
    }

    /// A world whose clients also send an entry per ping for `unknown`, a
    /// batch id that is not in the config.
    fn with_unknown_id(
        config: &str,
        pings: usize,
        unknown: &str,
        extra: &[&str],
    ) -> (World, serde_json::Value) {
        let world = World::without_dump(config);
        let expected = world.generate(pings, unknown, extra);
        world.stage(&[]);
        (world, expected)
    }

    /// Two servers' keys for `config` (with a low threshold), nothing generated yet.
    fn without_dump(config: &str) -> World {
        let keys =
            [generate_keypair(), generate_keypair()].map(|k| (k.to_hex(), k.public_key().to_hex()));
        World {
            dir: tempfile::tempdir().unwrap(),
            shared_secret: "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=".into(),
            keys,
            signing: [SigningPrivateKey::generate(), SigningPrivateKey::generate()],
            config: low_threshold(config),
            date: DATE.into(),
        }
    }

    /// Where `generate` writes the dump of the world's date.
    fn dump(&self) -> PathBuf {
        self.path(&format!("dump-{}", self.date))
    }

    /// Generates the date's dump from `pings` clients, who also send an entry
    /// for `unknown`; returns its expected.json.
    fn generate(&self, pings: usize, unknown: &str, extra: &[&str]) -> serde_json::Value {
        ok(bin()
            .args(["generate", "--date", &self.date, "--config", &self.config])
            .args(["--pings", &pings.to_string(), "--unknown-batch-id", unknown])
            .args(["--duplicate-rate", "0.1", "--malformed-rate", "0.1"])
            .args(extra)
            .arg("--output")
            .arg(self.dump())
            .env("PUBLIC_KEY_HEX_A", &self.keys[0].1)
            .env("PUBLIC_KEY_HEX_B", &self.keys[1].1)
            .output()
            .unwrap());
        serde_json::from_slice(&std::fs::read(self.dump().join("expected.json")).unwrap()).unwrap()
    }

    /// Stages the date's dump into both servers' private buckets.
    fn stage(&self, extra: &[&str]) {
        let staged = ok(bin()
            .args(["stage", "--date", &self.date, "--partition-size", "20KB"])
            .args(extra)
            .args(["--config", &self.config, "--input"])
            .arg(self.dump().join("sink"))
            .arg("--output-a")
            .arg(self.private(Role::A))
            .arg("--output-b")
            .arg(self.private(Role::B))
            .output()
            .unwrap());
        assert!(
            String::from_utf8_lossy(&staged.stdout).contains("unknown_batch_id"),
            "stage counts the entries of batch ids not in the config"
        );
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn private(&self, role: Role) -> PathBuf {
        self.path(&format!("server-{role}/private"))
    }

    fn inbox(&self, role: Role) -> PathBuf {
        self.path(&format!("server-{role}/shared"))
    }

    /// A server's command for `steps` (e.g. "process", "verify1").
    fn server(&self, role: Role, step: &str, extra: &[&str]) -> Command {
        let i = role.agg_id();
        let mut c = bin();
        c.args([step, "--date", &self.date])
            .args(extra)
            .env("SERVER_ID", role.as_str())
            .env("PRIVATE_KEY_HEX", &self.keys[i].0)
            .env("PRIVATE_SIGNING_KEY_HEX", self.signing[i].to_hex())
            .env(
                "PUBLIC_SIGNING_KEY_HEX_INTERNAL",
                self.signing[i].public_key().to_hex(),
            )
            .env(
                "PUBLIC_SIGNING_KEY_HEX_EXTERNAL",
                self.signing[1 - i].public_key().to_hex(),
            )
            .env("PUBLIC_KEY_HEX_INTERNAL", &self.keys[i].1)
            .env("PUBLIC_KEY_HEX_EXTERNAL", &self.keys[1 - i].1)
            .env("SHARED_SECRET", &self.shared_secret)
            .env("DATA_CONFIG", &self.config)
            .env("BUCKET_INTERNAL_PRIVATE", self.private(role))
            .env("BUCKET_INTERNAL_SHARED", self.inbox(role))
            .env("BUCKET_EXTERNAL_SHARED", self.inbox(role.peer()))
            .env("RETRY_DELAY", "0.05")
            .env("RETRY_BACKOFF_EXPONENT", "1.5")
            // At most about a minute in all, so a failing test cannot leave a server waiting long.
            .env("RETRY_LIMIT", "16");
        c
    }

    fn spawn(&self, role: Role, step: &str, extra: &[&str]) -> Child {
        self.server(role, step, extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Runs `process` with server a as a cluster of `processes` processes of
    /// `workers` workers each, launched through the spec users copy
    /// (jobs/process-server.sh), and server b with `b_args`; all must succeed.
    fn process_with_a_as_cluster(&self, processes: usize, workers: usize, b_args: &[&str]) {
        let hostfile = common::hostfile(&self.path(""), processes);
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_prio-processor"))
            .parent()
            .unwrap();
        let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
        let mut children: Vec<Child> = (0..processes)
            .map(|i| {
                let server = self.server(Role::A, "process", &[]);
                Command::new("bash")
                    .arg("jobs/process-server.sh")
                    .current_dir(env!("CARGO_MANIFEST_DIR"))
                    .env_clear()
                    .envs(server.get_envs().filter_map(|(k, v)| Some((k, v?))))
                    .env("PATH", &path)
                    .env("DATE", &self.date)
                    .env("HOSTFILE", &hostfile)
                    .env("PROCESS", i.to_string())
                    .env("WORKERS", workers.to_string())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        children.push(self.spawn(Role::B, "process", b_args));
        // Wait for all before judging any, so none is left running.
        let outputs: Vec<Output> = children
            .into_iter()
            .map(|child| child.wait_with_output().unwrap())
            .collect();
        for out in outputs {
            ok(out);
        }
    }

    /// Runs both servers through `steps`, one step at a time, each to success.
    fn run_both_ok(&self, steps: &[&str]) {
        for step in steps {
            let [a, b] = self.run_both(step, &[], &[]);
            ok(a);
            ok(b);
        }
    }

    /// Runs both servers' `step` concurrently as separate processes.
    fn run_both(&self, step: &str, extra_a: &[&str], extra_b: &[&str]) -> [Output; 2] {
        let (a, b) = (
            self.spawn(Role::A, step, extra_a),
            self.spawn(Role::B, step, extra_b),
        );
        [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()]
    }

    fn published(&self, role: Role, batch: &str) -> Option<serde_json::Value> {
        let path = self.private(role).join(format!(
            "{}/processed/{}/aggregate.json",
            self.date,
            batch_dir(batch)
        ));
        std::fs::read(path)
            .ok()
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

    fn staged_parts(&self, role: Role, batch: &str) -> Vec<PathBuf> {
        let dir = self
            .private(role)
            .join(format!("{}/raw/{}", self.date, batch_dir(batch)));
        let mut parts: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        parts.sort();
        parts
    }

    /// Writes `content` as the object `STEP/NAME` in `role`'s inbox, signed
    /// by the peer: what a peer that holds its key but disagrees would send.
    fn peer_writes(&self, role: Role, object: &str, content: &[u8]) {
        let path = self
            .inbox(role)
            .join(format!("{}/intermediate/external/{object}", self.date));
        std::fs::write(&path, content).unwrap();
        let context = SignedContext {
            date: self.date.clone(),
            object: object.into(),
            sender: role.peer(),
        };
        let statement = self.signing[role.peer().agg_id()].sign(&context, content);
        std::fs::write(format!("{}.sig", path.display()), statement).unwrap();
    }

    /// Rewrites one staged part through `edit` on its (id, payload) rows.
    fn edit_part(
        &self,
        path: &Path,
        role: Role,
        batch: &str,
        edit: impl FnOnce(&mut Vec<(String, Vec<u8>)>),
    ) {
        let rows = decode_staged(
            "part",
            StagedFormat::Parquet,
            std::fs::read(path).unwrap().into(),
            role,
        )
        .unwrap();
        let mut rows: Vec<(String, Vec<u8>)> = rows
            .into_iter()
            .map(|r| (r.id, r.payload.to_vec()))
            .collect();
        edit(&mut rows);
        let ids: Vec<([u8; 16], bytes::Bytes)> = rows
            .into_iter()
            .map(|(id, p)| (hex::decode(id).unwrap().try_into().unwrap(), p.into()))
            .collect();
        std::fs::write(path, encode_part(StagedFormat::Parquet, batch, role, &ids)).unwrap();
    }
}

fn aggregate_of(v: &serde_json::Value) -> Vec<u128> {
    serde_json::from_value(v["aggregate"].clone()).unwrap()
}

#[test]
fn every_vdaf_publishes_the_known_answer_and_bad_reports_are_excluded() {
    // The seed pattern: every client sends the same sumvec vector, so the
    // answer without two excluded reports is known exactly.
    let (world, expected) = World::new(ALL_VDAFS, 40, &[]);
    let parts_a = world.staged_parts(Role::A, "sumvec");
    let parts_b = world.staged_parts(Role::B, "sumvec");
    assert!(parts_a.len() >= 2, "several parts per batch");
    world.edit_part(&parts_a[0], Role::A, "sumvec", |rows| {
        let last = rows[0].1.len() - 1;
        // A tampered ciphertext.
        rows[0].1[last] ^= 1;
        // A duplicated report id, last in the part: with two workers the
        // copy is verified in another slice than the first.
        let dup = rows[1].clone();
        rows.push(dup);
    });
    world.edit_part(&parts_b[1], Role::B, "sumvec", |rows| {
        rows.remove(0); // missing on server b
    });
    let [a, b] = world.run_both("process", &["--workers", "2"], &[]);
    let a = ok(a);
    ok(b);
    let summary = String::from_utf8_lossy(&a.stdout);
    assert!(summary.contains("published"), "{summary}");

    for (batch, want) in expected["batches"].as_object().unwrap() {
        let pub_a = world
            .published(Role::A, batch)
            .unwrap_or_else(|| panic!("{batch} published by a"));
        let pub_b = world.published(Role::B, batch).unwrap();
        assert_eq!(
            aggregate_of(&pub_a),
            aggregate_of(&pub_b),
            "{batch}: both servers publish the same"
        );
        let n = want["reports"].as_u64().unwrap();
        if batch == "sumvec" {
            assert_eq!(pub_a["reports_aggregated"], n - 2);
            assert_eq!(pub_a["rejected"]["undecryptable"], 1);
            assert_eq!(pub_a["rejected"]["duplicate_report_id"], 1);
            assert_eq!(pub_a["rejected"]["missing_on_peer"], 1);
            assert_eq!(pub_b["rejected"]["peer_rejected"], 1);
            // Server a holds the extra duplicate row; server b lacks the removed one.
            assert_eq!(pub_a["reports_total"], n + 1);
            assert_eq!(pub_b["reports_total"], n - 1);
            let total: Vec<u128> = serde_json::from_value(want["aggregate"].clone()).unwrap();
            let without_two: Vec<u128> = total
                .iter()
                .map(|t| t / n as u128 * (n as u128 - 2))
                .collect();
            assert_eq!(aggregate_of(&pub_a), without_two);
        } else {
            assert_eq!(pub_a["reports_aggregated"], n, "{batch}");
            assert_eq!(
                pub_a["aggregate"], want["aggregate"],
                "{batch}: published aggregate is the plaintext sum"
            );
        }
    }
    assert!(
        world.published(Role::A, "bad-id").is_none(),
        "unknown batch ids are never published"
    );
}

/// Both servers publish `batch` with exactly the known answer and count.
fn assert_known_answer(world: &World, expected: &serde_json::Value, batch: &str) {
    let want = &expected["batches"][batch];
    for role in Role::BOTH {
        let published = world
            .published(role, batch)
            .unwrap_or_else(|| panic!("{batch:?} published by {role}"));
        assert_eq!(published["batch_id"], batch);
        assert_eq!(
            published["aggregate"], want["aggregate"],
            "{batch:?} at {role}"
        );
        assert_eq!(
            published["reports_aggregated"], want["reports"],
            "{batch:?} at {role}"
        );
        assert_eq!(
            published["reports_total"], want["reports"],
            "{batch:?} at {role}: no extra reports"
        );
    }
}

#[test]
fn a_client_cannot_replace_extend_or_break_a_batch_with_a_lookalike_batch_id() {
    // Entries for "x/" used to land in x's directory and replace its first
    // part; "x/evil" added parts to x; a 300-byte id failed the whole run.
    let long = "z".repeat(300);
    for lookalike in ["x/", "x/evil", "x/../x", long.as_str()] {
        let (world, expected) = World::with_unknown_id(r#"{"x": 16}"#, 12, lookalike, &[]);
        let [a, b] = world.run_both("process", &[], &[]);
        ok(a);
        ok(b);
        assert_known_answer(&world, &expected, "x");
        let raw = world.private(Role::A).join(format!("{DATE}/raw"));
        let dirs: Vec<String> = std::fs::read_dir(&raw)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('_'))
            .collect();
        assert_eq!(
            dirs,
            ["batch_id=x"],
            "{lookalike:?} staged nothing of its own"
        );
    }
}

#[test]
fn batch_ids_of_any_characters_are_staged_processed_and_published_under_their_own_name() {
    let config = r#"{"a%*?#[]~é b": 16, "x": 8, "x+2F": {"vdaf": "count"}}"#;
    let (world, expected) = World::new(config, 12, &[]);
    let [a, b] = world.run_both("process", &[], &[]);
    ok(a);
    ok(b);
    for batch in ["a%*?#[]~é b", "x", "x+2F"] {
        assert_known_answer(&world, &expected, batch);
    }
}

#[test]
fn below_threshold_is_withheld_and_mismatched_report_sets_are_refused() {
    let config = r#"{"small": {"vdaf": "count", "min_batch_size": 1000}, "big": 16}"#;
    let (world, expected) = World::new(config, 24, &[]);
    world.run_both_ok(&["verify1", "verify2", "aggregate"]);
    // Server a receives an aggregate from b that claims other reports.
    let object = "aggregate/batch_id=big/aggregate.json";
    let inbox_a = world
        .inbox(Role::A)
        .join(format!("{DATE}/intermediate/external/{object}"));
    let mut message: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&inbox_a).unwrap()).unwrap();
    message["digest"] = serde_json::json!("00".repeat(32));
    world.peer_writes(Role::A, object, &serde_json::to_vec(&message).unwrap());
    let [a, b] = world.run_both("publish", &[], &[]);
    assert_eq!(a.status.code(), Some(1), "a refuses");
    let stderr = String::from_utf8_lossy(&a.stderr);
    assert!(
        stderr.contains("\"big\" refused") && stderr.contains("different reports"),
        "{stderr}"
    );
    assert!(
        world.published(Role::A, "big").is_none(),
        "nothing published for a refused batch"
    );
    let b = ok(b);
    assert_eq!(
        world.published(Role::B, "big").unwrap()["aggregate"],
        expected["batches"]["big"]["aggregate"]
    );
    for (role, out) in [(Role::A, &a), (Role::B, &b)] {
        assert!(
            world.published(role, "small").is_none(),
            "below min_batch_size: withheld"
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("withheld"));
    }
    // The withheld batch's aggregate share never left either server, and
    // neither bucket holds one that an operator could add to its own.
    for role in Role::BOTH {
        for dir in [
            world
                .inbox(role)
                .join(format!("{DATE}/intermediate/external/aggregate")),
            world
                .private(role)
                .join(format!("{DATE}/intermediate/internal/aggregate")),
        ] {
            let message: serde_json::Value = serde_json::from_slice(
                &std::fs::read(dir.join("batch_id=small/aggregate.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(message["reports_aggregated"], 24, "{role}: counts are sent");
            assert!(message["share"].is_null(), "{role}: no share in {dir:?}");
            assert!(!message["digest"].is_null(), "{role}: the digest is sent");
        }
    }
}

#[test]
fn a_peer_that_never_answers_is_a_clear_error_after_the_retry_limit() {
    let (world, _) = World::new(r#"{"x": 8}"#, 6, &[]);
    let out = world
        .server(Role::A, "process", &[])
        .env("RETRY_LIMIT", "3")
        .env("RETRY_DELAY", "0.01")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the peer's hello never arrived")
            && stderr.contains("_SUCCESS")
            && stderr.contains("after 3 retries"),
        "{stderr}"
    );
}

#[test]
fn a_server_killed_mid_run_and_restarted_publishes_the_same_answer() {
    let (world, expected) = World::new(
        r#"{"x": 32, "n": {"vdaf": "sum", "max_measurement": 50}}"#,
        30,
        &[],
    );
    // Server b has sent its hello and verifier shares only; server a finishes
    // verify1 and then waits for b's verdicts, which do not come: kill it there.
    ok(world.server(Role::B, "verify1", &[]).output().unwrap());
    let mut a = world.spawn(Role::A, "process", &[]);
    let marker = world
        .private(Role::A)
        .join(format!("{DATE}/intermediate/internal/verify1/_SUCCESS"));
    let started = std::time::Instant::now();
    while !marker.exists() {
        assert!(started.elapsed().as_secs() < 60, "verify1 did not finish");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    a.kill().unwrap();
    a.wait().unwrap();
    // What a kill mid-write leaves: staging files (`name#N`), which listings
    // skip, in a's own bucket and in what a sends b.
    let half_written = [
        world
            .private(Role::A)
            .join(format!("{DATE}/processed/batch_id=x/aggregate.parquet#1")),
        world.inbox(Role::B).join(format!(
            "{DATE}/intermediate/external/verify2/batch_id=n/part-00000.parquet#4242"
        )),
    ];
    for path in &half_written {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }
    let [a, b] = world.run_both("process", &[], &["--workers", "2"]);
    let a = ok(a);
    ok(b);
    assert!(String::from_utf8_lossy(&a.stderr).contains("verify1: already done"));
    for path in &half_written {
        assert!(!path.exists(), "{} is still there", path.display());
    }
    for batch in ["x", "n"] {
        for role in Role::BOTH {
            let published = world.published(role, batch).unwrap();
            assert_eq!(
                published["aggregate"], expected["batches"][batch]["aggregate"],
                "{batch} at {role}"
            );
            assert_eq!(
                published["reports_aggregated"],
                expected["batches"][batch]["reports"]
            );
        }
    }
}

/// Fault injection: each cycle starts both servers on the same staged date,
/// kills one of them or both with SIGKILL after a random delay, restarts what
/// it killed (the survivor keeps waiting for its peer), and requires both to
/// end with the known answers, every report counted once, and no half-written
/// object left. A half-written object that a reader took for a whole one
/// would fail the rerun (every object is checked as it is decoded).
/// `FAULT_CYCLES` (default 8) and `FAULT_SEED` (printed) choose the cycles;
/// `scripts/fault-cycles` runs hundreds.
#[test]
fn servers_killed_at_random_points_end_with_the_known_answers() {
    use rand::{RngExt, SeedableRng};
    use std::os::unix::process::ExitStatusExt;
    let seed = common::fault_seed();
    let mut rng = rand::rngs::ChaCha20Rng::seed_from_u64(seed);
    let (world, expected) = World::new(
        r#"{"x": 32, "n": {"vdaf": "sum", "max_measurement": 50}, "h": {"vdaf": "histogram", "length": 4}}"#,
        40,
        &[],
    );
    let staged = world.path("staged");
    for role in Role::BOTH {
        common::copy_tree(&world.private(role), &staged.join(role.as_str()));
    }
    let reset = || {
        for role in Role::BOTH {
            let _ = std::fs::remove_dir_all(world.path(&format!("server-{role}")));
            common::copy_tree(&staged.join(role.as_str()), &world.private(role));
        }
    };
    let check = |cycle: &str| {
        for batch in ["x", "n", "h"] {
            for role in Role::BOTH {
                let published = world.published(role, batch).unwrap_or_else(|| {
                    panic!("{cycle}: {batch} not published at {role} (FAULT_SEED={seed})")
                });
                assert_eq!(
                    (&published["aggregate"], &published["reports_aggregated"]),
                    (
                        &expected["batches"][batch]["aggregate"],
                        &expected["batches"][batch]["reports"]
                    ),
                    "{cycle}: {batch} at {role} (FAULT_SEED={seed})"
                );
            }
        }
        let debris = common::half_written_files(&world.path(""));
        assert!(
            debris.is_empty(),
            "{cycle}: left {debris:?} (FAULT_SEED={seed})"
        );
    };
    let workers = |rng: &mut rand::rngs::ChaCha20Rng| if rng.random() { "2" } else { "1" };

    // An uninterrupted run gives the span the kills are spread over.
    let started = std::time::Instant::now();
    let [a, b] = world.run_both("process", &[], &[]);
    ok(a);
    ok(b);
    let span = started.elapsed();
    check("uninterrupted");

    // Kills that found the server still running (not all do).
    let mut interrupted = 0;
    for cycle in 0..common::fault_cycles(8) {
        reset();
        let args = [
            ["--workers", workers(&mut rng)],
            ["--workers", workers(&mut rng)],
        ];
        let mut servers = [
            world.spawn(Role::A, "process", &args[0]),
            world.spawn(Role::B, "process", &args[1]),
        ];
        let delay = span.mul_f64(rng.random_range(0.0..1.2));
        let victims: &[usize] = match rng.random_range(0..3) {
            0 => &[0],
            1 => &[1],
            _ => &[0, 1],
        };
        std::thread::sleep(delay);
        for &v in victims {
            servers[v].kill().unwrap();
            let status = servers[v].wait().unwrap();
            interrupted += usize::from(status.signal() == Some(libc::SIGKILL));
            servers[v] = world.spawn(Role::BOTH[v], "process", &args[v]);
        }
        let killed: Vec<Role> = victims.iter().map(|&v| Role::BOTH[v]).collect();
        let what = format!("cycle {cycle}: killed {killed:?} after {delay:?}");
        for server in servers {
            let out = server.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{what} (FAULT_SEED={seed}): the rerun failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        check(&what);
    }
    eprintln!("{interrupted} kills interrupted a running server");
    assert!(
        interrupted > 0,
        "no kill found a server running (FAULT_SEED={seed})"
    );
}

#[test]
fn a_server_run_as_a_two_process_cluster_publishes_the_same_answer() {
    let (world, expected) = World::new(
        r#"{"x": 48, "h": {"vdaf": "histogram", "length": 5}}"#,
        40,
        &[],
    );
    // Server a runs through the launch spec users copy, jobs/process-server.sh.
    world.process_with_a_as_cluster(2, 1, &["--workers", "2"]);
    for batch in ["x", "h"] {
        for role in Role::BOTH {
            let published = world.published(role, batch).unwrap();
            assert_eq!(
                published["aggregate"], expected["batches"][batch]["aggregate"],
                "{batch} at {role}"
            );
        }
    }
}

#[test]
fn a_rerun_resends_identical_messages_and_never_changes_one_the_peer_may_have_read() {
    let (world, _) = World::new(r#"{"x": 16}"#, 12, &[]);
    let own_marker = world
        .private(Role::A)
        .join(format!("{DATE}/intermediate/internal/verify1/_SUCCESS"));
    ok(world.server(Role::A, "verify1", &[]).output().unwrap());
    // Forget that verify1 ran: the rerun writes the same bytes to the peer's inbox.
    std::fs::remove_file(&own_marker).unwrap();
    ok(world.server(Role::A, "verify1", &[]).output().unwrap());
    // Now the input changes (a report disappears): the message the peer may
    // already have read must not change under it.
    std::fs::remove_file(&own_marker).unwrap();
    let part = world.staged_parts(Role::A, "x").remove(0);
    world.edit_part(&part, Role::A, "x", |rows| {
        rows.pop();
    });
    let out = world.server(Role::A, "verify1", &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already exists with different content") && stderr.contains("cleanup"),
        "{stderr}"
    );
}

#[test]
fn a_report_the_peer_rejects_after_this_server_accepted_it_is_left_out_of_the_sum() {
    one_verdict_changed_by_each_peer(
        |row| row.status = Err(Rejection::InvalidProof),
        "peer_verdict_reject",
    );
}

#[test]
fn a_report_whose_nonce_differs_between_the_servers_is_left_out_of_the_sum() {
    one_verdict_changed_by_each_peer(|row| row.nonce = Some([0xee; 16]), "nonce_mismatch");
}

/// Each server learns from the peer's verify2 message, changed by `edit`
/// for one report that it accepted itself, that the peer sees that report
/// otherwise; both leave it out as `reason` and publish the rest exactly.
fn one_verdict_changed_by_each_peer(
    edit: fn(&mut prio_processor::storage::messages::MessageRow),
    reason: &str,
) {
    // Every client sends the same Prio2 vector, so leaving out one report
    // scales the known answer by (n-1)/n.
    let (world, expected) = World::new(r#"{"x": 16}"#, 12, &[]);
    world.run_both_ok(&["verify1", "verify2"]);
    let verdicts = |role: Role| {
        world.inbox(role).join(format!(
            "{DATE}/intermediate/external/verify2/batch_id=x/part-00000.parquet"
        ))
    };
    let read =
        |path: &Path| decode_message("verdicts", std::fs::read(path).unwrap().into()).unwrap();
    let mut rows = read(&verdicts(Role::A));
    let changed = rows.iter().position(|r| r.status.is_ok()).unwrap();
    let id = rows[changed].id.clone();
    edit(&mut rows[changed]);
    let object = "verify2/batch_id=x/part-00000.parquet";
    world.peer_writes(Role::A, object, &encode_message(&rows));
    let mut rows = read(&verdicts(Role::B));
    edit(rows.iter_mut().find(|r| r.id == id).unwrap());
    world.peer_writes(Role::B, object, &encode_message(&rows));

    let [a, b] = world.run_both("aggregate", &[], &[]);
    let a = ok(a);
    ok(b);
    assert!(String::from_utf8_lossy(&a.stderr).contains("summing the others again"));
    world.run_both_ok(&["publish"]);
    let n = expected["batches"]["x"]["reports"].as_u64().unwrap();
    let want: Vec<u128> = aggregate_of(&expected["batches"]["x"])
        .iter()
        .map(|&total| total / u128::from(n) * u128::from(n - 1))
        .collect();
    for role in Role::BOTH {
        let published = world.published(role, "x").unwrap();
        assert_eq!(aggregate_of(&published), want, "at {role}");
        assert_eq!(published["reports_aggregated"], n - 1);
        assert_eq!(published["rejected"], serde_json::json!({reason: 1}));
    }
}

/// A Prio2 and a Prio3 SumVec batch, for the tests of how verification is split.
const TWO_BATCHES: &str = r#"{"x": 32, "s": {"vdaf": "sumvec", "length": 8, "bits": 2}}"#;

/// Both of `TWO_BATCHES` are published at `role` with their plaintext sums.
/// Runs `process` on both servers at once, a with `a_args`, and checks both succeed.
fn process_both(world: &World, a_args: &[&str]) {
    let b = world.spawn(Role::B, "process", &[]);
    ok(world.server(Role::A, "process", a_args).output().unwrap());
    ok(b.wait_with_output().unwrap());
}

fn assert_known_answers(world: &World, expected: &serde_json::Value, role: Role) {
    for batch in ["x", "s"] {
        let published = world.published(role, batch).unwrap();
        assert_eq!(
            published["aggregate"], expected["batches"][batch]["aggregate"],
            "{batch} at {role}"
        );
    }
}

#[test]
fn parts_the_peer_already_answered_are_verified_in_memory_and_recomputed_after_a_restart() {
    let (world, expected) = World::new(TWO_BATCHES, 30, &[]);
    let check = |role: Role| assert_known_answers(&world, &expected, role);
    // b's verifier shares are all there before a starts, so a keeps every state in memory.
    ok(world.server(Role::B, "verify1", &[]).output().unwrap());
    process_both(&world, &["--workers", "2"]);
    let internal = world
        .private(Role::A)
        .join(format!("{DATE}/intermediate/internal"));
    let stored_states: Vec<_> = common::files_below(&internal.join("verify1"))
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert!(stored_states.is_empty(), "{stored_states:?}");
    check(Role::A);
    check(Role::B);

    // a restarts after verify1: the states it held in memory are recomputed
    // from the raw shares, and every message it resends is byte-identical.
    std::fs::remove_file(internal.join("verify2/_SUCCESS")).unwrap();
    std::fs::remove_dir_all(internal.join("aggregate")).unwrap();
    std::fs::remove_dir_all(world.private(Role::A).join(format!("{DATE}/processed"))).unwrap();
    let out = ok(world.server(Role::A, "process", &[]).output().unwrap());
    assert!(String::from_utf8_lossy(&out.stderr).contains("verify1: already done"));
    check(Role::A);
}

#[test]
fn states_stored_for_one_slicing_are_used_or_recomputed_under_another() {
    // verify1 with 2 workers stores each part's states in two slices (the
    // peer has not answered yet); verify2 then runs with 3 workers, whose
    // slices match none of them, and with 2, and both publish the known answer.
    let (world, expected) = World::new(TWO_BATCHES, 30, &[]);
    ok(world
        .server(Role::A, "verify1", &["--workers", "2"])
        .output()
        .unwrap());
    let stored: Vec<String> = common::files_below(
        &world
            .private(Role::A)
            .join(format!("{DATE}/intermediate/internal/verify1")),
    )
    .into_iter()
    .filter_map(|f| f.file_name()?.to_str().map(str::to_string))
    .filter(|f| f.ends_with(".parquet"))
    .collect();
    let parts = world.staged_parts(Role::A, "x").len() + world.staged_parts(Role::A, "s").len();
    assert_eq!(stored.len(), 2 * parts, "{stored:?}");
    assert!(stored.iter().all(|f| f.contains(".rows-")), "{stored:?}");
    process_both(&world, &["--workers", "3"]);
    let check = |role: Role| assert_known_answers(&world, &expected, role);
    check(Role::A);
    check(Role::B);
    // verify2 again, now cut as verify1 was: the stored states are used.
    let internal = world
        .private(Role::A)
        .join(format!("{DATE}/intermediate/internal"));
    std::fs::remove_dir_all(internal.join("verify2")).unwrap();
    std::fs::remove_dir_all(internal.join("aggregate")).unwrap();
    std::fs::remove_dir_all(world.private(Role::A).join(format!("{DATE}/processed"))).unwrap();
    ok(world
        .server(Role::A, "process", &["--workers", "2"])
        .output()
        .unwrap());
    check(Role::A);
}

/// Runs `command`, which must fail (exit 1) with `want` in its error; returns the error.
fn fails_with(command: &mut Command, want: &str) -> String {
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{command:?}: {stderr}");
    assert!(stderr.contains(want), "{want:?} in {stderr}");
    stderr
}

/// Runs `step` on server a alone; a refusal names the object and the mismatch.
fn refused(world: &World, step: &str, want: &str) {
    let stderr = fails_with(&mut world.server(Role::A, step, &[]), want);
    assert!(stderr.contains("refused: it"), "{stderr}");
}

#[test]
fn forged_stale_resigned_or_truncated_aggregates_in_the_inbox_are_refused_and_nothing_is_published()
{
    let (world, _) = World::new(r#"{"x": 16}"#, 12, &[]);
    world.run_both_ok(&["verify1", "verify2", "aggregate"]);
    let name = "batch_id=x/aggregate.json";
    let message = world
        .inbox(Role::A)
        .join(format!("{DATE}/intermediate/external/aggregate/{name}"));
    let sig = message.with_file_name("aggregate.json.sig");
    let (content, statement) = (
        std::fs::read(&message).unwrap(),
        std::fs::read(&sig).unwrap(),
    );
    let context = |date: &str| SignedContext {
        date: date.into(),
        object: format!("aggregate/{name}"),
        sender: Role::B,
    };
    let mut forged: serde_json::Value = serde_json::from_slice(&content).unwrap();
    forged["share"] = serde_json::json!(BASE64.encode(vec![0u8; 80]));
    let forged = serde_json::to_vec_pretty(&forged).unwrap();
    let stranger = SigningPrivateKey::generate();
    let cases: [(&str, Vec<u8>, Vec<u8>, &str); 5] = [
        (
            "a changed share",
            forged.clone(),
            statement.clone(),
            "does not match its signature",
        ),
        (
            "a truncated message",
            content[..content.len() / 2].to_vec(),
            statement.clone(),
            "does not match its signature",
        ),
        (
            "another key's signature",
            forged.clone(),
            stranger.sign(&context(DATE), &forged),
            "bound to signing key",
        ),
        (
            "the peer's message of another date",
            content.clone(),
            world.signing[1].sign(&context("2019-06-25"), &content),
            "bound to date \"2019-06-25\"",
        ),
        ("no signature", content.clone(), Vec::new(), "not signed"),
    ];
    for (what, content, statement, want) in cases {
        std::fs::write(&message, &content).unwrap();
        if statement.is_empty() {
            std::fs::remove_file(&sig).unwrap();
        } else {
            std::fs::write(&sig, &statement).unwrap();
        }
        refused(&world, "publish", want);
        assert!(
            world.published(Role::A, "x").is_none(),
            "{what}: nothing published"
        );
        assert!(
            !world
                .private(Role::A)
                .join(format!("{DATE}/processed/_SUCCESS"))
                .exists(),
            "{what}: no complete results"
        );
    }
}

#[test]
fn a_tampered_verify1_message_is_refused_before_any_verdict() {
    let (world, _) = World::new(r#"{"x": 16}"#, 12, &[]);
    let [a, b] = world.run_both("verify1", &[], &[]);
    ok(a);
    ok(b);
    // Everything but one report marked rejected by the peer: one client's value alone.
    let part = world.inbox(Role::A).join(format!(
        "{DATE}/intermediate/external/verify1/batch_id=x/part-00000.parquet"
    ));
    let mut rows = decode_message("m", std::fs::read(&part).unwrap().into()).unwrap();
    for row in rows.iter_mut().skip(1) {
        row.status = Err(Rejection::InvalidProof);
    }
    std::fs::write(&part, encode_message(&rows)).unwrap();
    refused(&world, "verify2", "does not match its signature");
    assert!(
        !world
            .inbox(Role::B)
            .join(format!("{DATE}/intermediate/external/verify2/_SUCCESS"))
            .exists(),
        "no verdicts sent"
    );
}

/// Messages are written on a thread of each worker's own while it verifies
/// on: a write that fails there still fails the run, the step is not
/// marked sent, and the thread writes nothing after it. verify1 alone, and
/// verify2 in a `process` run whose peer answered first (its slices go
/// through both steps report by report).
#[test]
fn a_message_that_cannot_be_written_fails_the_run_and_marks_nothing_sent() {
    for (step, command) in [("verify1", "verify1"), ("verify2", "process")] {
        let (world, _) = World::new(r#"{"x": 16}"#, 300, &[]);
        let parts = world.staged_parts(Role::A, "x").len();
        assert!(parts > 2, "{parts} parts");
        ok(world.server(Role::B, "verify1", &[]).output().unwrap());
        let outbox = world
            .inbox(Role::B)
            .join(format!("{DATE}/intermediate/external/{step}"));
        let in_the_way = outbox.join("batch_id=x/part-00000.parquet/dir");
        std::fs::create_dir_all(&in_the_way).unwrap();
        std::fs::write(in_the_way.join("file"), b"").unwrap();
        for workers in ["1", "2"] {
            let err = fails_with(
                &mut world.server(Role::A, command, &["--workers", workers]),
                "batch_id=x/part-00000.parquet",
            );
            assert!(!err.contains("skipped"), "{err}");
            assert!(
                !outbox.join("_SUCCESS").exists(),
                "{step}, {workers} workers"
            );
            if workers == "1" {
                // One worker writes its parts in order: the failed one is the first.
                let landed = common::files_below(&outbox.join("batch_id=x"));
                assert_eq!(landed, [in_the_way.join("file")], "{step}");
            }
        }
    }
}

#[test]
fn a_server_refuses_the_other_servers_bucket_and_an_inbox_that_is_its_outbox() {
    let (world, expected) = World::new(r#"{"x": 16}"#, 12, &[]);
    let [a, b] = world.run_both("process", &[], &[]);
    ok(a);
    ok(b);
    let before = world.published(Role::B, "x").unwrap();
    // Server a pointed at b's private bucket: it would have written its states there.
    fails_with(
        world
            .server(Role::A, "process", &[])
            .env("BUCKET_INTERNAL_PRIVATE", world.private(Role::B)),
        "BUCKET_INTERNAL_PRIVATE belongs to server b",
    );
    assert_eq!(world.published(Role::B, "x").unwrap(), before);
    assert_eq!(before["aggregate"], expected["batches"]["x"]["aggregate"]);
    fails_with(
        world
            .server(Role::A, "process", &[])
            .env("BUCKET_INTERNAL_SHARED", world.inbox(Role::B)),
        "the inbox is also the outbox",
    );
}

#[test]
fn parts_staged_for_the_other_server_are_refused() {
    let (world, _) = World::new(r#"{"x": 16}"#, 12, &[]);
    // Server b's parts in server a's bucket, as a stage with swapped outputs writes them.
    for (a, b) in world
        .staged_parts(Role::A, "x")
        .iter()
        .zip(world.staged_parts(Role::B, "x"))
    {
        std::fs::copy(b, a).unwrap();
    }
    fails_with(
        &mut world.server(Role::A, "verify1", &[]),
        "staged for server \"b\", not for this server (a)",
    );
}

#[test]
fn sums_past_2_to_the_64_are_published_exactly() {
    let config = r#"{"big": {"vdaf": "sumvec", "length": 3, "bits": 64}}"#;
    let (world, _) = World::new(config, 12, &["--pattern", "random"]);
    let [a, b] = world.run_both("process", &[], &[]);
    ok(a);
    ok(b);
    let expected: Expected =
        serde_json::from_slice(&std::fs::read(world.dump().join("expected.json")).unwrap())
            .unwrap();
    let want = &expected.batches["big"].aggregate;
    assert!(want.iter().any(|&x| x > u128::from(u64::MAX)), "{want:?}");
    for role in Role::BOTH {
        let path = world
            .private(role)
            .join(format!("{DATE}/processed/batch_id=big/aggregate.json"));
        let published = decode_published("p", &std::fs::read(path).unwrap()).unwrap();
        assert_eq!(&published.aggregate, want, "{role}");
    }
}

#[test]
fn a_short_digest_from_the_peer_is_a_refusal_not_a_panic() {
    let (world, _) = World::new(r#"{"x": 16}"#, 12, &[]);
    world.run_both_ok(&["verify1", "verify2", "aggregate"]);
    let object = "aggregate/batch_id=x/aggregate.json";
    let path = world
        .inbox(Role::A)
        .join(format!("{DATE}/intermediate/external/{object}"));
    let mut message: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    message["digest"] = serde_json::json!("ab");
    world.peer_writes(Role::A, object, &serde_json::to_vec(&message).unwrap());
    fails_with(
        &mut world.server(Role::A, "publish", &[]),
        "digest ab at the peer",
    );
}

#[test]
fn servers_that_disagree_on_the_secret_or_the_config_stop_before_any_report() {
    let (world, _) = World::new(r#"{"x": 16, "y": {"vdaf": "count"}}"#, 12, &[]);
    let with_b = |var: &str, value: &str| {
        let a = world.spawn(Role::A, "process", &[]);
        let b = world
            .server(Role::B, "process", &[])
            .env(var, value)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()]
    };
    let other_secret = BASE64.encode([9u8; 32]);
    let other_config = low_threshold(r#"{"x": 32, "y": {"vdaf": "count"}}"#);
    for (var, value, want) in [
        (
            "SHARED_SECRET",
            other_secret.as_str(),
            "SHARED_SECRET differs",
        ),
        ("DATA_CONFIG", other_config.as_str(), "batch \"x\" has"),
    ] {
        for out in with_b(var, value) {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{var}: {stderr}");
            assert!(
                stderr.contains("the servers disagree") && stderr.contains(want),
                "{var}: {stderr}"
            );
        }
        for role in Role::BOTH {
            let verify1 = world
                .inbox(role.peer())
                .join(format!("{DATE}/intermediate/external/verify1"));
            assert!(!verify1.exists(), "{var}: {role} sent no verifier share");
        }
        // Start the next case from clean inboxes.
        for role in Role::BOTH {
            let _ = std::fs::remove_dir_all(world.inbox(role));
        }
    }
}

/// What anyone who sees pings can do without a key: copies of the first `n`
/// pings in `sink`, under new ping and document ids, delivered on `date`,
/// as one sink NDJSON file.
fn replayed_pings(sink: &Path, n: usize, date: &str) -> Vec<u8> {
    let files: Vec<PathBuf> = common::files_below(sink)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .collect();
    let text: Vec<u8> = files
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect();
    let mut out = Vec::new();
    let mut copied = std::collections::HashSet::new();
    for line in text.split(|&b| b == b'\n') {
        let Ok((mut message, body)) = prio_processor::wire::ping::parse_sink_line(line) else {
            continue;
        };
        let Ok(mut ping) = serde_json::from_slice::<serde_json::Value>(&body) else {
            continue;
        };
        if ping["payload"]["prioData"].is_null() || !copied.insert(ping["id"].clone()) {
            continue;
        }
        let id = format!("00000000-0000-4000-8000-{:012}", copied.len());
        ping["id"] = id.clone().into();
        let attributes = &mut message.attributes;
        attributes.insert("document_id".into(), id.into());
        attributes.insert(
            "submission_timestamp".into(),
            format!("{date}T23:00:00.000000Z").into(),
        );
        message.payload = BASE64.encode(serde_json::to_vec(&ping).unwrap());
        out.extend(serde_json::to_vec(&message).unwrap());
        out.push(b'\n');
        if copied.len() == n {
            return out;
        }
    }
    panic!("fewer than {n} pings in {}", sink.display());
}

/// Adds `ndjson` to the world's dump as one more sink file of its date.
fn deliver(world: &World, ndjson: &[u8]) {
    let file = world.dump().join(format!(
        "sink/{}/23/telemetry/prio/4/part-replays.ndjson",
        world.date
    ));
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(file, ndjson).unwrap();
}

/// Both servers publish `batch` with the known answer, having counted
/// `replayed` copies as such and no other report beyond the known ones.
fn assert_known_answer_with_replays(world: &World, expected: &serde_json::Value, replayed: u64) {
    for (batch, want) in expected["batches"].as_object().unwrap() {
        for role in Role::BOTH {
            let published = world.published(role, batch).unwrap();
            assert_eq!(
                published["aggregate"], want["aggregate"],
                "{batch} at {role}"
            );
            assert_eq!(published["reports_aggregated"], want["reports"], "{batch}");
            let total = want["reports"].as_u64().unwrap() + replayed;
            assert_eq!(published["reports_total"], total, "{batch} at {role}");
            assert_eq!(
                published["rejected"],
                serde_json::json!({"replayed": replayed}),
                "{batch} at {role}"
            );
        }
    }
}

#[test]
fn replayed_shares_under_new_ping_ids_count_once_within_a_date_and_within_the_window() {
    let config = r#"{"sum": {"vdaf": "sum", "max_measurement": 1000},
                     "sumvec": {"vdaf": "sumvec", "length": 5, "bits": 8},
                     "prio1": {"vdaf": "prio1", "length": 6}}"#;
    let random = ["--pattern", "random"];
    let mut world = World::without_dump(config);
    let day1_sink = world.path(&format!("dump-{DATE}/sink"));
    // A day's own pings (drawn from `seed`), and `copies` copies of day 1's; staged.
    let day = |world: &mut World, date: &str, seed: &str, copies: usize| {
        world.date = date.into();
        let expected = world.generate(30, "bad-id", &[&random[..], &["--seed", seed]].concat());
        deliver(world, &replayed_pings(&day1_sink, copies, date));
        world.stage(&[]);
        expected
    };
    // Copies of day 1's own pings, delivered the same day.
    let day1 = day(&mut world, DATE, "1", 4);
    world.run_both_ok(&["process"]);
    assert_known_answer_with_replays(&world, &day1, 4);

    // The next day, copies of day 1's pings: within the default window.
    // Server a runs as two processes of two workers, b as one worker: the
    // nonce shards and the parts are spread otherwise at each, across
    // processes at a, and they still decide alike.
    let day2 = day(&mut world, "2019-06-27", "2", 3);
    world.process_with_a_as_cluster(2, 2, &[]);
    assert_known_answer_with_replays(&world, &day2, 3);

    // Two days on with a window of one day, copies of day 1 count as reports.
    let day3 = day(&mut world, "2019-06-28", "3", 2);
    let window = ["--replay-window-days", "1"];
    let [a, b] = world.run_both("process", &window, &window);
    ok(a);
    ok(b);
    for (batch, want) in day3["batches"].as_object().unwrap() {
        for role in Role::BOTH {
            let published = world.published(role, batch).unwrap();
            let reports = want["reports"].as_u64().unwrap() + 2;
            assert_eq!(published["reports_aggregated"], reports, "{role}");
            assert!(
                published["rejected"].get("replayed").is_none(),
                "{published}"
            );
        }
    }
    // Three days of results, both servers, every batch: one read.
    assert_parquet_results_match_the_json(&world, &["2019-06-26", "2019-06-27", "2019-06-28"]);
}

/// Reads every `aggregate.parquet` of the world in one DuckDB query (a
/// reader analysts use, from PyPI) and compares each row with the published
/// JSON of its date, server and batch. Skipped where DuckDB is not
/// installed, unless PRIO_REQUIRE_READERS is set (as `.ci/run` does).
fn assert_parquet_results_match_the_json(world: &World, dates: &[&str]) {
    let query = format!(
        "import duckdb, json\n\
         rows = duckdb.sql(\"select strftime(submission_date, '%Y-%m-%d'), server, batch_id, \
         index, value::varchar from read_parquet('{}/server-*/private/*/processed/*/aggregate.parquet', \
         hive_partitioning = false) order by all\").fetchall()\n\
         print(json.dumps(rows))",
        world.dir.path().display()
    );
    let out = Command::new("python3")
        .args(["-c", &query])
        .output()
        .unwrap();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            std::env::var_os("PRIO_REQUIRE_READERS").is_none(),
            "reading the results with DuckDB failed: {stderr}"
        );
        eprintln!("skipping the DuckDB check (pip install duckdb to run it): {stderr}");
        return;
    }
    let rows: Vec<(String, String, String, usize, String)> =
        serde_json::from_slice(&out.stdout).unwrap();
    let mut want = Vec::new();
    for &date in dates {
        for role in Role::BOTH {
            let processed = world.private(role).join(format!("{date}/processed"));
            for file in common::files_below(&processed) {
                if file.file_name().unwrap() != "aggregate.json" {
                    continue;
                }
                let json = decode_published("p", &std::fs::read(&file).unwrap()).unwrap();
                assert_eq!(
                    (json.submission_date.as_str(), json.server.as_str()),
                    (date, role.as_str())
                );
                for (index, value) in json.aggregate.iter().enumerate() {
                    want.push((
                        date.to_string(),
                        role.to_string(),
                        json.batch_id.clone(),
                        index,
                        value.to_string(),
                    ));
                }
            }
        }
    }
    want.sort();
    assert!(!want.is_empty());
    assert_eq!(rows, want);
}

#[test]
fn a_client_that_seals_different_nonces_for_the_two_servers_is_rejected_by_both() {
    use prio_processor::wire::client::ServerPublicKeys;
    use prio_processor::wire::config::BatchConfig;
    use prio_processor::wire::envelope::{seal, PublicKey};
    use prio_processor::wire::ping::{build_ping, encode_base64, PrioEntry, SinkMessage};
    use prio_processor::wire::vdaf::Measurement;

    // Such a report could look like a copy of one report to server a and of
    // another to server b. The VDAF derives the proof's query randomness from
    // the nonce, so its proof fails at both.
    let world = World::without_dump(r#"{"p": 8}"#);
    let expected = world.generate(20, "bad-id", &[]);
    let config = BatchConfig::from_json(&world.config).unwrap();
    let vdaf = &config.get("p").unwrap().vdaf;
    let keys = ServerPublicKeys {
        a: PublicKey::from_hex(&world.keys[0].1).unwrap(),
        b: PublicKey::from_hex(&world.keys[1].1).unwrap(),
    };
    let mut shares = vdaf
        .shard("p", &Measurement::Vector(vec![1; 8]), &[1; 16])
        .unwrap();
    shares[1].nonce = [2; 16];
    let sealed = Role::BOTH
        .map(|role| seal(keys.get(role), role, "p", &shares[role.agg_id()].encode()).unwrap());
    let entry = PrioEntry {
        batch_id: "p".into(),
        share_a: encode_base64(&sealed[0]),
        share_b: encode_base64(&sealed[1]),
    };
    let id = "00000000-0000-4000-8000-000000000001";
    let ping = build_ping(id, &format!("{DATE}T12:00:00.000Z"), &[entry]);
    let message = SinkMessage::wrap(
        &serde_json::to_vec(&ping).unwrap(),
        id,
        &format!("{DATE}T12:00:02.000000Z"),
    );
    deliver(&world, &serde_json::to_vec(&message).unwrap());
    world.stage(&[]);
    world.run_both_ok(&["process"]);
    let want = &expected["batches"]["p"];
    for role in Role::BOTH {
        let published = world.published(role, "p").unwrap();
        assert_eq!(published["aggregate"], want["aggregate"], "{role}");
        assert_eq!(published["reports_aggregated"], want["reports"], "{role}");
        assert_eq!(
            published["rejected"],
            serde_json::json!({"invalid_proof": 1}),
            "{role}"
        );
    }
}

#[test]
fn a_server_given_the_wrong_or_the_swapped_private_key_fails_loudly_naming_the_key() {
    // (a's key, b's key) as each server is given them: b's key at a, then both swapped.
    for swapped in [false, true] {
        let (world, _) = World::new(r#"{"x": 16}"#, 40, &[]);
        let keys = [&world.keys[1].0, &world.keys[usize::from(!swapped)].0];
        let [a, b] = Role::BOTH.map(|role| {
            world
                .server(role, "process", &["--private-key-hex", keys[role.agg_id()]])
                .env_remove("PUBLIC_KEY_HEX_INTERNAL")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        });
        let outputs = [a, b].map(|child| child.wait_with_output().unwrap());
        for (role, out) in Role::BOTH.into_iter().zip(outputs) {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(4),
                "{role} (swapped: {swapped}): {stderr}"
            );
            let wrong_here = role == Role::A || swapped;
            let want = if wrong_here {
                "rejected as unknown_key: PRIVATE_KEY_HEX does not hold the key"
            } else {
                "rejected as peer_rejected: the peer could not open"
            };
            assert!(
                stderr.contains(want),
                "{role} (swapped: {swapped}): {stderr}"
            );
            assert!(
                stderr.contains(&format!("server {role}: batch \"x\"")),
                "{stderr}"
            );
        }
    }
}

#[test]
fn every_step_has_help_of_its_own_with_an_example() {
    for step in ["verify1", "verify2", "aggregate", "publish"] {
        let out = ok(bin().args([step, "--help"]).output().unwrap());
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("of process: "), "{step}: {help}");
        assert!(
            help.contains(&format!("prio-processor {step} --date")),
            "{step}: {help}"
        );
    }
}

#[test]
fn a_server_that_rotates_its_key_opens_pings_sealed_to_the_new_and_the_old_key() {
    let world = World::without_dump(r#"{"s": {"vdaf": "sum", "max_measurement": 500}}"#);
    let random = ["--pattern", "random", "--seed"];
    let old_pings = world.generate(20, "bad-id", &[&random[..], &["1"]].concat());
    let old_sink = world.dump().join("sink");
    // Server a's new key: clients that picked it up seal to it, the others still to the old one.
    let new_key = generate_keypair();
    let new_dump = world.path("dump-new-key");
    let new_pings = {
        let mut cmd = bin();
        cmd.args(["generate", "--config", &world.config, "--pings", "20"])
            .args(&random[..])
            .arg("2")
            .args(["--public-key-a", &new_key.public_key().to_hex()])
            .args(["--public-key-b", &world.keys[1].1])
            .arg("--output")
            .arg(&new_dump);
        ok(cmd.output().unwrap());
        serde_json::from_slice::<serde_json::Value>(
            &std::fs::read(new_dump.join("expected.json")).unwrap(),
        )
        .unwrap()
    };
    for file in common::files_below(&new_dump.join("sink")) {
        let rel = file.strip_prefix(new_dump.join("sink")).unwrap();
        let name = rel.file_name().unwrap().to_str().unwrap();
        let to = old_sink.join(rel).with_file_name(format!("new-key-{name}"));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&file, to).unwrap();
    }
    world.stage(&[]);
    let keys = format!("{},{}", new_key.to_hex(), world.keys[0].0);
    let public = new_key.public_key().to_hex();
    let a_args = [
        "--private-key-hex",
        &keys,
        "--public-key-hex-internal",
        &public,
    ];
    let [a, b] = world.run_both("process", &a_args, &[]);
    ok(a);
    ok(b);
    let (old, new) = (&old_pings["batches"]["s"], &new_pings["batches"]["s"]);
    let reports = old["reports"].as_u64().unwrap() + new["reports"].as_u64().unwrap();
    let sum = aggregate_of(old)[0] + aggregate_of(new)[0];
    for role in Role::BOTH {
        let published = world.published(role, "s").unwrap();
        assert_eq!(
            published["reports_aggregated"], reports,
            "{role}: {published}"
        );
        assert_eq!(aggregate_of(&published), [sum], "{role}");
    }
}

#[test]
fn log_lines_name_the_server_and_its_steps_as_plain_text_or_as_json() {
    let (world, _) = World::new(r#"{"x": 8}"#, 10, &[]);
    let out = ok(world
        .server(Role::A, "verify1", &[])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .output()
        .unwrap());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("server{id=a}:pass{steps=verify1}: verify1: done"),
        "{text}"
    );
    assert!(
        !text.contains('\x1b'),
        "no colour when stderr is not a terminal: {text}"
    );

    let out = ok(world
        .server(Role::B, "verify1", &["--log-format", "json"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let done = lines
        .iter()
        .find(|l| l["fields"]["message"] == "verify1: done")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(done["level"], "INFO");
    assert_eq!(
        done["spans"],
        serde_json::json!([{"name": "server", "id": "b"}, {"name": "pass", "steps": "verify1"}])
    );
}

/// The value of the sample `name{labels}` in a Prometheus text file, which
/// must parse, and whose samples must all carry their declared type.
fn metric(file: &Path, name: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::{Scrape, Value};
    let text = std::fs::read_to_string(file).unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    for s in &scrape.samples {
        assert!(
            !matches!(s.value, Value::Untyped(_)),
            "{} has no TYPE: {text}",
            s.metric
        );
    }
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no {name}{labels:?} in {text}"));
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) => v,
        ref other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn stage_and_process_write_metrics_files_in_the_prometheus_text_format() {
    let world = World::without_dump(r#"{"x": 8, "y": {"vdaf": "count"}}"#);
    let expected = world.generate(30, "bad-id", &[]);
    let stage_file = world.path("stage.prom");
    world.stage(&["--metrics-file", stage_file.to_str().unwrap()]);
    for batch in ["x", "y"] {
        let want = expected["batches"][batch]["reports"].as_f64().unwrap();
        assert_eq!(
            metric(&stage_file, "prio_stage_entries", &[("batch_id", batch)]),
            want
        );
    }
    let duplicates = metric(&stage_file, "prio_stage_duplicates_dropped", &[]);
    assert_eq!(duplicates, expected["duplicates"].as_f64().unwrap());
    assert_eq!(
        metric(&stage_file, "prio_run_success", &[("command", "stage")]),
        1.0
    );

    let files = Role::BOTH.map(|role| world.path(&format!("process-{role}.prom")));
    let [a, b] = Role::BOTH.map(|role| {
        let file = files[role.agg_id()].to_str().unwrap().to_string();
        world.spawn(role, "process", &["--metrics-file", &file])
    });
    ok(a.wait_with_output().unwrap());
    ok(b.wait_with_output().unwrap());
    for (role, file) in Role::BOTH.into_iter().zip(&files) {
        let server = role.to_string();
        let batch = |id| [("server", server.as_str()), ("batch_id", id)];
        let want = expected["batches"]["x"]["reports"].as_f64().unwrap();
        assert_eq!(
            metric(file, "prio_batch_reports_aggregated", &batch("x")),
            want
        );
        let published = [batch("x").as_slice(), &[("status", "published")]].concat();
        assert_eq!(metric(file, "prio_batch_status", &published), 1.0);
        assert_eq!(metric(file, "prio_batch_alarm", &batch("y")), 0.0);
        assert_eq!(
            metric(file, "prio_run_success", &[("server", &server)]),
            1.0
        );
        // Every pass is there, and together they fit in the run.
        let passes: f64 = ["verify1+verify2", "aggregate", "publish"]
            .iter()
            .map(|steps| metric(file, "prio_step_duration_seconds", &[("steps", steps)]))
            .sum();
        let run = metric(file, "prio_run_duration_seconds", &[("server", &server)]);
        assert!(
            passes > 0.0 && passes <= run,
            "{passes} s of passes in a {run} s run"
        );
    }

    // A run that fails says so.
    let failed = world.path("failed.prom");
    let out = world
        .server(
            Role::A,
            "verify1",
            &["--metrics-file", failed.to_str().unwrap()],
        )
        .env("BUCKET_INTERNAL_PRIVATE", world.path("empty-bucket"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(metric(&failed, "prio_run_success", &[("server", "a")]), 0.0);
    // Also one that fails before it starts, after a successful run wrote the file.
    let out = world
        .server(
            Role::B,
            "verify1",
            &["--metrics-file", files[1].to_str().unwrap()],
        )
        .env("PRIVATE_KEY_HEX", "not hex")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        metric(&files[1], "prio_run_success", &[("server", "b")]),
        0.0
    );
}

#[test]
fn process_shows_each_pass_s_progress_as_plain_lines_off_a_terminal_and_as_a_bar_on_one() {
    let (world, expected) = World::new(r#"{"x": 512, "y": {"vdaf": "sum", "bits": 4}}"#, 30, &[]);
    let parts: usize = ["x", "y"]
        .iter()
        .map(|b| world.staged_parts(Role::A, b).len())
        .sum();
    let reports: u64 = ["x", "y"]
        .iter()
        .map(|b| expected["batches"][b]["reports"].as_u64().unwrap())
        .sum();
    assert!(parts > 2, "{parts} parts");
    let b = world.spawn(Role::B, "process", &[]);
    let a = ok(world
        .server(Role::A, "process", &["--workers", "2"])
        .env("PROGRESS_INTERVAL", "0")
        .output()
        .unwrap());
    ok(b.wait_with_output().unwrap());
    let stderr = String::from_utf8_lossy(&a.stderr);
    let mut done_so_far = Vec::new();
    for line in stderr.lines() {
        if let Some(at) = line.find("verify1+verify2: ") {
            let rest = &line[at + "verify1+verify2: ".len()..];
            if let Some((done, _)) = rest.split_once(&format!(" of {parts} parts (")) {
                done_so_far.push(done.parse::<usize>().unwrap());
            }
        }
    }
    assert_eq!(
        done_so_far,
        (1..=parts).collect::<Vec<_>>(),
        "a line a part, with the process's total: {stderr}"
    );
    for pass in ["verify1+verify2", "aggregate"] {
        let closing = format!("server{{id=a}}:pass{{steps={pass}}}: {pass}: done in ");
        let line = stderr
            .lines()
            .find(|l| l.contains(&closing))
            .unwrap_or_else(|| panic!("{closing} in {stderr}"));
        assert!(
            line.contains(&format!(", {parts} of {parts} parts, {reports} reports (")),
            "{line}"
        );
    }
    assert!(
        stderr.contains("pass{steps=publish}: publish: done in "),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&a.stdout);
    let results =
        url::Url::from_directory_path(world.private(Role::A).join(DATE).join("processed")).unwrap();
    assert!(
        stdout.contains(&format!(
            "output: {}",
            results.as_str().trim_end_matches('/')
        )),
        "{stdout}"
    );

    // On a terminal (a pseudo-terminal from script(1)), a bar instead of the lines.
    let world = World::new(r#"{"x": 8}"#, 40, &[]).0;
    let b = world.spawn(Role::B, "process", &[]);
    let a = world.server(Role::A, "process", &[]);
    let on_terminal = ok(Command::new("script")
        .args(["--quiet", "--return", "--command"])
        .arg(format!(
            "{} process --date {DATE} 2>&1",
            env!("CARGO_BIN_EXE_prio-processor")
        ))
        .arg("/dev/null")
        .envs(a.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env("PROGRESS_INTERVAL", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap());
    ok(b.wait_with_output().unwrap());
    let screen = String::from_utf8_lossy(&on_terminal.stdout);
    assert!(
        screen.contains("server A verify1+verify2") && screen.contains(" parts, "),
        "a bar: {screen}"
    );
    assert!(
        !screen.contains("verify1+verify2: 1 of "),
        "no plain lines on a terminal: {screen}"
    );
    assert!(screen.contains("verify1+verify2: done in "), "{screen}");
}

/// Pixels of exactly `colour` in a PNG screenshot.
fn pixels_of(png_file: &Path, colour: [u8; 3]) -> (usize, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_file).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut buffer).unwrap();
    let channels = frame.color_type.samples();
    let pixels = &buffer[..frame.buffer_size()];
    let matching = pixels.chunks(channels).filter(|p| p[..3] == colour).count();
    (matching, pixels.len() / channels)
}

#[test]
fn the_report_shows_each_batch_s_sum_counts_trend_and_timings_and_renders_in_chromium() {
    let config = r#"{"x<i>": 8, "h": {"vdaf": "histogram", "length": 300, "chunk_length": 20}}"#;
    let mut world = World::without_dump(config);
    let random = ["--pattern", "random"];
    let mut expected = Vec::new();
    for (date, seed) in [("2019-06-26", "1"), ("2019-06-27", "2")] {
        world.date = date.into();
        expected.push(world.generate(25, "bad-id", &[&random[..], &["--seed", seed]].concat()));
        world.stage(&[]);
        world.run_both_ok(&["process"]);
    }
    let page = world.path("report.html");
    let out = ok(bin()
        .args(["report", "--date", "2019-06-26", "--to", "2019-06-28"])
        .arg("--server-a")
        .arg(world.private(Role::A))
        .arg("--server-b")
        .arg(world.private(Role::B))
        .arg("--output")
        .arg(&page)
        .output()
        .unwrap());
    assert!(String::from_utf8_lossy(&out.stdout).contains("report: "));
    let html = std::fs::read_to_string(&page).unwrap();

    // The generator's totals, summed over the two dates here.
    for (batch, shown, length) in [("x<i>", "x&#60;i&#62;", 8), ("h", "h", 300)] {
        let sum: u128 = expected
            .iter()
            .flat_map(|e| aggregate_of(&e["batches"][batch]))
            .sum();
        let reports: u64 = expected
            .iter()
            .map(|e| e["batches"][batch]["reports"].as_u64().unwrap())
            .sum();
        let overview = format!("{shown}</a></td><td>");
        let overview = html.split(&overview).nth(1).expect("an overview row");
        assert!(
            overview.contains(&format!("<td class=\"n\">{reports}</td><td>published</td>")),
            "{overview}"
        );
        let section = html
            .split("<section class=\"batch\"")
            .find(|s| s.contains(&format!("<h2>{shown} ")))
            .unwrap_or_else(|| panic!("a section for {batch:?} in {html}"));
        assert!(
            section.contains(&format!(
                "the sum of the 2 dates published: {length} buckets adding up to {sum}."
            )),
            "{section}"
        );
        let bars = section
            .split("<figure class=\"trend\">")
            .next()
            .unwrap()
            .matches("fill=\"#1F77B4\"")
            .count();
        assert_eq!(bars, length, "a bar per bucket of {batch:?}");
        assert!(
            section.contains("<figure class=\"trend\">"),
            "a trend over the range"
        );
        assert_eq!(
            section.contains("largest buckets"),
            length > 20,
            "long vectors list their largest buckets"
        );
        for (e, date) in expected.iter().zip(["2019-06-26", "2019-06-27"]) {
            let reports = &e["batches"][batch]["reports"];
            for server in ["A", "B"] {
                let row = format!(
                    "<tr><td>{date}</td><td>{server}</td><td>published</td><td class=\"n\">{reports}</td><td class=\"n\">{reports}</td>"
                );
                assert!(section.contains(&row), "{row} in {section}");
            }
        }
    }
    assert!(!html.contains("x<i>"), "batch ids are escaped");
    assert!(
        html.contains("Not published: 2019-06-28 (server a), 2019-06-28 (server b)."),
        "{html}"
    );
    let timings = html.split("<table class=\"timings\">").nth(1).unwrap();
    for pass in ["verify1+verify2", "aggregate", "publish"] {
        assert!(timings.contains(&format!("<th>{pass}</th>")), "{timings}");
    }
    assert_eq!(timings.matches("<tr><td>2019-06-2").count(), 4, "{timings}");

    // The page as a browser shows it: Debian's Chromium, headless.
    let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        assert!(
            std::env::var_os("PRIO_REQUIRE_BROWSER").is_none(),
            "PRIO_REQUIRE_BROWSER is set but no chromium is installed"
        );
        eprintln!("skipping the browser check: no chromium");
        return;
    };
    let screenshot = world.path("report.png");
    let shot = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1100,1400",
        ])
        .arg(format!(
            "--user-data-dir={}",
            world.path("chromium").display()
        ))
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(url::Url::from_file_path(&page).unwrap().as_str())
        .output()
        .unwrap();
    assert!(shot.status.success(), "{shot:?}");
    let (bar_pixels, all) = pixels_of(&screenshot, [31, 119, 180]);
    assert_eq!(all, 1100 * 1400);
    // Two charts of bars 280 pixels high fit in the window; their bars
    // cover far more than a few thousand pixels.
    assert!(bar_pixels > 5_000, "{bar_pixels} pixels of bars");
}

#[test]
fn the_seed_system_s_16_byte_shared_secret_serves_prio1_and_the_other_vdafs() {
    let config = r#"{"p1": {"vdaf": "prio1", "length": 12}, "c": {"vdaf": "count"}}"#;
    let mut world = World::without_dump(config);
    // The seed's SHARED_SECRET is libprio's 16-byte PRG seed.
    world.shared_secret = "m/AqDal/ZSA9597GwMM+VA==".into();
    let expected = world.generate(30, "bad-id", &[]);
    world.stage(&[]);
    world.run_both_ok(&["process"]);
    for batch in ["p1", "c"] {
        assert_known_answer(&world, &expected, batch);
    }
    world.shared_secret = base64::engine::general_purpose::STANDARD.encode([7u8; 20]);
    let stderr = fails_with(
        &mut world.server(Role::A, "verify1", &[]),
        "SHARED_SECRET decodes to 20 bytes, expected 32 (or the seed system's 16)",
    );
    assert!(!stderr.contains("BwcH"), "the secret is never printed");
}

/// A sink file of one ping per libprio report (and one entry for an
/// unknown batch id, which staging counts).
fn libprio_pings(file: &common::libprio::LibprioFile, date: &str) -> Vec<u8> {
    let mut entries: Vec<serde_json::Value> = file
        .batches
        .iter()
        .flat_map(|b| {
            b.reports
                .iter()
                .map(|r| serde_json::json!({"encoding": b.batch_id, "prio": {"a": r.a, "b": r.b}}))
        })
        .collect();
    entries.push(serde_json::json!({"encoding": "bad-id", "prio": {"a": "AA==", "b": "AA=="}}));
    let mut out = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let id = format!("00000000-0000-4000-8000-{i:012}");
        let ping = serde_json::json!({"type": "prio", "id": id, "payload": {"prioData": [entry]}});
        let message = serde_json::json!({
            "attributeMap": {"document_id": id, "submission_timestamp": format!("{date}T00:00:02.000000Z")},
            "payload": BASE64.encode(serde_json::to_vec(&ping).unwrap()),
        });
        out.extend(serde_json::to_vec(&message).unwrap());
        out.push(b'\n');
    }
    out
}

#[test]
fn pings_sealed_by_libprio_of_either_generation_are_published_with_libprio_s_sums() {
    use common::libprio::{LibprioFile, GENERATIONS};
    for generation in GENERATIONS {
        let file = LibprioFile::load(generation);
        let mut world = World::without_dump(&file.config());
        // libprio's keys as it exports them (upper-case hex, not clamped)
        // and its 16-byte shared seed.
        world.keys = [&file.server_a, &file.server_b]
            .map(|k| (k.private_key_hex.clone(), k.public_key_hex.clone()));
        world.shared_secret = file.shared_seed_base64.clone();
        deliver(&world, &libprio_pings(&file, &world.date));
        world.stage(&[]);
        world.run_both_ok(&["process"]);
        for batch in &file.batches {
            let what = format!("{generation} {:?}", batch.batch_id);
            let tampered = |kind: &str| {
                let n = batch
                    .reports
                    .iter()
                    .filter(|r| r.tampered.as_deref() == Some(kind));
                n.count() as u64
            };
            for role in Role::BOTH {
                let published = world
                    .published(role, &batch.batch_id)
                    .unwrap_or_else(|| panic!("{what} published by {role}"));
                let total: Vec<u128> = batch.total.iter().map(|&x| x.into()).collect();
                assert_eq!(aggregate_of(&published), total, "{what} at {role}");
                assert_eq!(published["reports_aggregated"], batch.accepted, "{what}");
                assert_eq!(published["reports_total"], batch.reports.len(), "{what}");
                let rejected = &published["rejected"];
                let count = |reason: &str| rejected[reason].as_u64().unwrap_or(0);
                let unopened = tampered("a_ciphertext_byte") + tampered("a_other_batch_id");
                if role == Role::A {
                    assert_eq!(
                        count("undecryptable"),
                        tampered("a_ciphertext_byte"),
                        "{what}"
                    );
                    assert_eq!(
                        count("wrong_binding"),
                        tampered("a_other_batch_id"),
                        "{what}"
                    );
                } else {
                    assert_eq!(count("peer_rejected"), unopened, "{what}");
                }
                let invalid = batch.reports.len() as u64 - batch.accepted - unopened;
                assert_eq!(count("invalid_proof"), invalid, "{what} at {role}");
            }
        }
    }
}
