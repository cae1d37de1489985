#![no_main]
libfuzzer_sys::fuzz_target!(init: manta_fuzz::init("spawn_args"), |data: &[u8]| manta_fuzz::run("spawn_args", data));
