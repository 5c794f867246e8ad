//! `cleanup` deletes one date (or all) from the private bucket and the inbox,
//! and nothing else; `--dry-run` only lists.

use std::path::Path;
use std::process::Command;

mod common;

fn write(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"x").unwrap();
}

fn cleanup(dir: &Path, args: &[&str]) -> String {
    let out = common::succeeded(
        Command::new(env!("CARGO_BIN_EXE_prio-processor"))
            .arg("cleanup")
            .args(args)
            .env("BUCKET_INTERNAL_PRIVATE", dir.join("private"))
            .env("BUCKET_INTERNAL_SHARED", dir.join("inbox"))
            .output()
            .unwrap(),
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn remaining(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = common::files_below(dir)
        .iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    files.sort();
    files
}

#[test]
fn cleanup_removes_one_date_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for f in [
        "private/2019-06-26/raw/batch_id=x/part-00000.parquet",
        "private/2019-06-26/raw/_SUCCESS",
        "private/2019-06-27/raw/_SUCCESS",
        "inbox/2019-06-26/intermediate/external/verify1/_SUCCESS",
        "inbox/2019-06-27/intermediate/external/verify1/_SUCCESS",
        "outbox/2019-06-26/intermediate/external/verify1/_SUCCESS",
        "private-other/2019-06-26/raw/_SUCCESS",
    ] {
        write(&d.join(f));
    }
    let before = remaining(d);
    let listed = cleanup(d, &["--date", "2019-06-26", "--dry-run"]);
    assert_eq!(listed.matches("would delete").count(), 3, "{listed}");
    assert_eq!(remaining(d), before, "a dry run deletes nothing");

    let said = cleanup(d, &["--date", "2019-06-26"]);
    assert!(
        said.contains("BUCKET_INTERNAL_PRIVATE: deleted 2 objects")
            && said.contains("BUCKET_INTERNAL_SHARED: deleted 1 objects"),
        "{said}"
    );
    assert_eq!(
        remaining(d),
        [
            "inbox/2019-06-27/intermediate/external/verify1/_SUCCESS",
            "outbox/2019-06-26/intermediate/external/verify1/_SUCCESS",
            "private-other/2019-06-26/raw/_SUCCESS",
            "private/2019-06-27/raw/_SUCCESS",
        ]
    );
    cleanup(d, &["--all"]);
    assert_eq!(
        remaining(d),
        [
            "outbox/2019-06-26/intermediate/external/verify1/_SUCCESS",
            "private-other/2019-06-26/raw/_SUCCESS"
        ]
    );
}

#[test]
fn keep_raw_keeps_the_staged_shares_for_a_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for f in [
        "private/2019-06-26/raw/batch_id=x/part-00000.parquet",
        "private/2019-06-26/raw/_SUCCESS",
        "private/2019-06-26/intermediate/internal/verify1/_SUCCESS",
        "private/2019-06-26/processed/_SUCCESS",
        "private/2019-06-27/raw/_SUCCESS",
        "private/2019-06-27/processed/_SUCCESS",
        "inbox/2019-06-26/intermediate/external/verify1/_SUCCESS",
    ] {
        write(&d.join(f));
    }
    let listed = cleanup(d, &["--date", "2019-06-26", "--keep-raw", "--dry-run"]);
    assert!(
        listed.contains("2 objects would be deleted") && listed.contains("2 staged objects"),
        "{listed}"
    );
    let said = cleanup(d, &["--date", "2019-06-26", "--keep-raw"]);
    assert!(said.contains("deleted 2 objects"), "{said}");
    cleanup(d, &["--all", "--keep-raw"]);
    assert_eq!(
        remaining(d),
        [
            "private/2019-06-26/raw/_SUCCESS",
            "private/2019-06-26/raw/batch_id=x/part-00000.parquet",
            "private/2019-06-27/raw/_SUCCESS",
        ]
    );
}
