//! What every cargo-fuzz target of Manta shares: the target table of
//! `manta::fuzzing`, a counting allocator that holds each input to its
//! target's memory bound, and the handling of known findings.

use std::sync::OnceLock;

use manta::fuzzing::Target;
use peakmem_alloc::{INSTRUMENTED_SYSTEM, PeakMemAlloc, PeakMemAllocTrait};

#[global_allocator]
static ALLOC: &PeakMemAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

static TARGET: OnceLock<Target> = OnceLock::new();

/// Before the first input: finds the target, lets known findings pass
/// (unless `MANTA_FUZZ_STRICT` is set) and warms up what it keeps between
/// inputs (runtime, sockets, registries), so that no input is charged
/// for it.
pub fn init(name: &'static str) {
    let t = manta::fuzzing::target(name).unwrap_or_else(|| panic!("no fuzz target {name}"));
    manta::fuzzing::hook_known(name);
    if let Some(first) = (t.seeds)().first() {
        manta::fuzzing::run_tolerating_known(&t, first);
    }
    let _ = TARGET.set(t);
}

/// One input, held to the target's memory bound.
pub fn run(name: &'static str, data: &[u8]) {
    let t = TARGET.get_or_init(|| manta::fuzzing::target(name).expect("a target"));
    ALLOC.reset_peak_memory();
    manta::fuzzing::run_tolerating_known(t, data);
    let peak = ALLOC.get_peak_memory();
    let bound = (t.max_alloc)(data.len());
    assert!(
        peak <= bound,
        "{name}: a {}-byte input held {peak} bytes at once, over its bound of {bound}",
        data.len()
    );
}
