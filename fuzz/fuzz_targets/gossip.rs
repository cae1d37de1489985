#![no_main]
libfuzzer_sys::fuzz_target!(init: manta_fuzz::init("gossip"), |data: &[u8]| manta_fuzz::run("gossip", data));
