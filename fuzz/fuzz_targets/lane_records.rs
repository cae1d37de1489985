#![no_main]
libfuzzer_sys::fuzz_target!(init: manta_fuzz::init("lane_records"), |data: &[u8]| manta_fuzz::run("lane_records", data));
