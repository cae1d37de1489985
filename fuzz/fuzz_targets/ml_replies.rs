#![no_main]
libfuzzer_sys::fuzz_target!(init: manta_fuzz::init("ml_replies"), |data: &[u8]| manta_fuzz::run("ml_replies", data));
