#![no_main]
libfuzzer_sys::fuzz_target!(init: manta_fuzz::init("frame"), |data: &[u8]| manta_fuzz::run("frame", data));
