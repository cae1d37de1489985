#![no_main]
libfuzzer_sys::fuzz_target!(init: manta_fuzz::init("actor_types"), |data: &[u8]| manta_fuzz::run("actor_types", data));
