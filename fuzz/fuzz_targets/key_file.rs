#![no_main]
libfuzzer_sys::fuzz_target!(init: manta_fuzz::init("key_file"), |data: &[u8]| manta_fuzz::run("key_file", data));
