#![no_main]
libfuzzer_sys::fuzz_target!(init: manta_fuzz::init("node_config"), |data: &[u8]| manta_fuzz::run("node_config", data));
