#![no_main]
libfuzzer_sys::fuzz_target!(init: manta_fuzz::init("hex"), |data: &[u8]| manta_fuzz::run("hex", data));
