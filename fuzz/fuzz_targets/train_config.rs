#![no_main]
libfuzzer_sys::fuzz_target!(init: manta_fuzz::init("train_config"), |data: &[u8]| manta_fuzz::run("train_config", data));
