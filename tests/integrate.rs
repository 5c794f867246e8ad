//! The README's main job: `integrate` runs generate, stage and both servers
//! as separate processes, and exits 0 only when every aggregate matches.

mod common;

#[test]
fn integrate_runs_the_whole_system_to_a_green_summary() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = common::integrate_green(110, dir.path(), &[], Vec::new());
    assert!(stdout.contains("result: every published aggregate matches"));
}
