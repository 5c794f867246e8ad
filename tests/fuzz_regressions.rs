//! Every input the fuzzers found a panic with, or a fixed excess of memory
//! (`fuzz/regressions/TARGET/`), replayed through the same entry point as
//! its fuzz target (`prio_processor::fuzzing::run`): each must now end
//! without one. See `scripts/fuzz` for how they are found. Inputs that still
//! run out of memory or time are in `fuzz/open-findings/`: a test run has no
//! limit to catch them with. `tests/stage.rs` replays the fixed Avro ones
//! under an address-space limit.

use std::path::Path;

use prio_processor::fuzzing::{run, TARGETS};
use prio_processor::storage::input::InputFormat;

const FORMATS: usize = InputFormat::ALL.len();

#[test]
fn every_target_has_a_fuzz_target_and_every_regression_a_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (name, _) in TARGETS {
        let target = std::fs::read_to_string(root.join(format!("fuzz_targets/{name}.rs")))
            .unwrap_or_else(|_| panic!("fuzz/fuzz_targets/{name}.rs is missing"));
        assert!(
            target.contains(&format!("fuzzing::run(\"{name}\", data)")),
            "fuzz/fuzz_targets/{name}.rs does not run its target"
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
    for (name, _) in TARGETS {
        let Ok(inputs) = std::fs::read_dir(root.join(name)) else {
            continue;
        };
        for input in inputs {
            let path = input.unwrap().path();
            let mut data = std::fs::read(&path).unwrap();
            run(name, &data);
            replayed += 1;
            // An input file is also read as `stage` reads it: in ranges from a store.
            if name == "input_file" && !data.is_empty() {
                data[0] = data[0] % FORMATS as u8 + FORMATS as u8;
                run(name, &data);
            }
        }
    }
    assert!(
        replayed > 0,
        "no regression inputs under {}",
        root.display()
    );
}
