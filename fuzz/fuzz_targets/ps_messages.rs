#![no_main]
libfuzzer_sys::fuzz_target!(init: manta_fuzz::init("ps_messages"), |data: &[u8]| manta_fuzz::run("ps_messages", data));
