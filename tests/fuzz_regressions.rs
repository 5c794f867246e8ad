//! Every input the fuzzers found a bug with (`fuzz/regressions/TARGET/`),
//! replayed through the same entry point as its fuzz target
//! (`prio_processor::fuzzing`): each must now end without a panic. See
//! `scripts/fuzz` for how they are found.

use std::path::Path;

use prio_processor::fuzzing::TARGETS;

#[test]
fn every_target_has_a_fuzz_target_and_every_regression_a_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (name, _) in TARGETS {
        assert!(
            root.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .exists(),
            "fuzz/fuzz_targets/{name}.rs is missing"
        );
    }
    for dir in std::fs::read_dir(root.join("regressions")).unwrap() {
        let name = dir.unwrap().file_name().into_string().unwrap();
        assert!(
            TARGETS.iter().any(|(n, _)| *n == name),
            "fuzz/regressions/{name} names no target"
        );
    }
}

#[test]
fn inputs_the_fuzzers_found_no_longer_fail() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let Ok(inputs) = std::fs::read_dir(root.join(name)) else {
            continue;
        };
        for input in inputs {
            let path = input.unwrap().path();
            target(&std::fs::read(&path).unwrap());
            replayed += 1;
        }
    }
    assert!(
        replayed > 0,
        "no regression inputs under {}",
        root.display()
    );
}
