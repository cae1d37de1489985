#![no_main]
libfuzzer_sys::fuzz_target!(init: manta_fuzz::init("duration"), |data: &[u8]| manta_fuzz::run("duration", data));
