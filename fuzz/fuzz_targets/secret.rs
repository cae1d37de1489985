#![no_main]
libfuzzer_sys::fuzz_target!(init: manta_fuzz::init("secret"), |data: &[u8]| manta_fuzz::run("secret", data));
