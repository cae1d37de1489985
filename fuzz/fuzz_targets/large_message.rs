#![no_main]
libfuzzer_sys::fuzz_target!(init: manta_fuzz::init("large_message"), |data: &[u8]| manta_fuzz::run("large_message", data));
