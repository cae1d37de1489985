#![no_main]
libfuzzer_sys::fuzz_target!(init: manta_fuzz::init("status_reply"), |data: &[u8]| manta_fuzz::run("status_reply", data));
