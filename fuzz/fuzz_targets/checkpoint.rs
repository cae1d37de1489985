#![no_main]
libfuzzer_sys::fuzz_target!(init: manta_fuzz::init("checkpoint"), |data: &[u8]| manta_fuzz::run("checkpoint", data));
