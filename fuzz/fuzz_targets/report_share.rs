#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| prio_processor::fuzzing::run("report_share", data));
