#![no_main]
libfuzzer_sys::fuzz_target!(init: manta_fuzz::init("opener"), |data: &[u8]| manta_fuzz::run("opener", data));
