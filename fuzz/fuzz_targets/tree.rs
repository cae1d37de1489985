#![no_main]
libfuzzer_sys::fuzz_target!(init: manta_fuzz::init("tree"), |data: &[u8]| manta_fuzz::run("tree", data));
