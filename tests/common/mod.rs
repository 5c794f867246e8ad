//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a subset

pub mod libprio;
pub mod storage_servers;

use std::path::{Path, PathBuf};

/// Every file below `dir`, sorted by path.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A hostfile with `n` free loopback ports, for a timely cluster of `n` processes.
pub fn hostfile(dir: &Path, n: usize) -> PathBuf {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let hosts: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let path = dir.join("hosts.txt");
    std::fs::write(&path, hosts.join("\n")).unwrap();
    path
}

/// Runs `prio-processor integrate --pings N --workers 2 --work-dir DIR ARGS`
/// with fresh keys and secrets (none inherited from this environment) and
/// `envs`; asserts the green summary (four batch ids match, `bad-id`
/// skipped) and returns its stdout.
pub fn integrate_green(
    pings: usize,
    work_dir: &Path,
    args: &[&str],
    envs: Vec<(String, String)>,
) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_prio-processor"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["integrate", "--pings", &pings.to_string(), "--workers", "2"])
        .arg("--work-dir")
        .arg(work_dir)
        .args(args)
        .envs(envs);
    for var in [
        "DATA_CONFIG",
        "SHARED_SECRET",
        "STAGING_SECRET",
        "PRIVATE_KEY_HEX_A",
        "PRIVATE_KEY_HEX_B",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.matches("  yes  ").count(),
        4,
        "four batch ids match:\n{stdout}"
    );
    assert_eq!(
        stdout.matches("  skip   not in the config").count(),
        1,
        "bad-id is skipped:\n{stdout}"
    );
    assert_eq!(
        stdout.matches("    published sum [").count(),
        4,
        "the sums checked are shown:\n{stdout}"
    );
    assert!(
        !stdout.contains("withheld"),
        "enough pings that every batch publishes:\n{stdout}"
    );
    stdout
}

/// Copies every file below `from` to the same place below `to`.
pub fn copy_tree(from: &Path, to: &Path) {
    for file in files_below(from) {
        let target = to.join(file.strip_prefix(from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&file, &target).unwrap();
    }
}

/// Files below `dir` named as a killed writer leaves them on local disk:
/// `NAME#DIGITS`, written before the rename that publishes `NAME`.
pub fn half_written_files(dir: &Path) -> Vec<PathBuf> {
    files_below(dir)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.rsplit_once('#')
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect()
}

/// The seed of a randomised test: `FAULT_SEED` when set (to replay a
/// failure), else a fresh one, printed so that a failure can be replayed.
pub fn fault_seed() -> u64 {
    let seed = std::env::var("FAULT_SEED")
        .ok()
        .map(|s| s.parse().expect("FAULT_SEED is a whole number"))
        .unwrap_or_else(rand::random);
    eprintln!("FAULT_SEED={seed}");
    seed
}

/// How many kill cycles a fault test runs: `FAULT_CYCLES`, else `default`.
pub fn fault_cycles(default: usize) -> usize {
    std::env::var("FAULT_CYCLES")
        .ok()
        .map(|s| s.parse().expect("FAULT_CYCLES is a whole number"))
        .unwrap_or(default)
}

/// `out`, after asserting that its command succeeded (its stderr otherwise).
pub fn succeeded(out: std::process::Output) -> std::process::Output {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
