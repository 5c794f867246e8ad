//! The README's main job: `integrate` runs generate, stage and both servers
//! as separate processes, and exits 0 only when every aggregate matches.

use std::process::Command;

#[test]
fn integrate_runs_the_whole_system_to_a_green_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_prio-processor"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["integrate", "--pings", "40", "--workers", "2", "--work-dir"])
        .arg(dir.path())
        .env_remove("DATA_CONFIG")
        .env_remove("SHARED_SECRET")
        .env_remove("STAGING_SECRET")
        .env_remove("PRIVATE_KEY_HEX_A")
        .env_remove("PRIVATE_KEY_HEX_B")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.matches("  yes  ").count(),
        5,
        "four batch ids match and bad-id is skipped:\n{stdout}"
    );
    assert!(stdout.contains("result: every published aggregate matches"));
}
