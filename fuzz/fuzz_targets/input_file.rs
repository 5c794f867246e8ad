#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| prio_processor::fuzzing::input_file(data));
