#![no_main]
libfuzzer_sys::fuzz_target!(init: manta_fuzz::init("loader_messages"), |data: &[u8]| manta_fuzz::run("loader_messages", data));
