#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| prio_processor::fuzzing::run("input_file", data));
