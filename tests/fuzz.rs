//! Every fuzz target of `manta::fuzzing` on the stable toolchain: seeded,
//! deterministic mutations of valid encodings (each target's seeds), each
//! input run with a counting allocator that holds it to the target's memory
//! bound. No coverage feedback here: that is what `fuzz/` (cargo-fuzz,
//! nightly) adds; this runs the same targets everywhere `cargo test` does.
//!
//! - `cargo test --test fuzz`: CI's short run (`MANTA_FUZZ_ITERS`, default
//!   400 inputs per target).
//! - `MANTA_FUZZ_ITERS=1000000 cargo test --release --test fuzz -- --nocapture`:
//!   a long run; `MANTA_FUZZ_TARGET=frame,opener` picks targets,
//!   `MANTA_FUZZ_SEED=N` another sequence of inputs.
//! - `MANTA_FUZZ_REPRO=target:file` runs one saved input (a failure writes
//!   its input under `target/fuzz-failures/`).
//! - `MANTA_FUZZ_WRITE_SEEDS=dir` writes every target's seeds as files
//!   (`fuzz/seeds/` for cargo-fuzz comes from this).
//!
//! The targets need the feature `fuzzing`, which this package's tests get
//! from its dev-dependency on itself. See FUZZING.md.
#![cfg(feature = "fuzzing")]
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::Instant;

use manta::cluster::fuzzing::{Rng, mutate};
use manta::fuzzing::{Target, targets};
use peakmem_alloc::{INSTRUMENTED_SYSTEM, PeakMemAlloc, PeakMemAllocTrait};

#[global_allocator]
static ALLOC: &PeakMemAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// The allocator counts every thread: the tests of this file take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

thread_local! {
    /// The target running on this thread, for the panic hook.
    static CURRENT: std::cell::Cell<&'static str> = const { std::cell::Cell::new("") };
}

/// Takes the turn and installs a panic hook that stays silent for known
/// findings (each is counted instead; see `KNOWN`).
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = manta::fuzzing::panic_message(info);
            if !manta::fuzzing::is_known(CURRENT.with(std::cell::Cell::get), msg) {
                prev(info);
            }
        }));
    });
    guard
}

/// Longest input tried (a frame is at most 64 KiB and a bit).
const MAX_LEN: usize = 70_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Failure {
    target: &'static str,
    what: String,
    input: Vec<u8>,
    saved: PathBuf,
}

/// Runs one input: `Err` with what went wrong (a panic, or the memory
/// bound exceeded), `Ok` with the peak bytes it held.
fn run_one(t: &Target, input: &[u8]) -> Result<usize, String> {
    CURRENT.with(|c| c.set(t.name));
    ALLOC.reset_peak_memory();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (t.run)(input)));
    let peak = ALLOC.get_peak_memory();
    if let Err(p) = outcome {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic".to_owned());
        return Err(format!("panicked: {msg}"));
    }
    let bound = (t.max_alloc)(input.len());
    if peak > bound {
        return Err(format!(
            "held {peak} bytes at once, over its bound of {bound} for a {}-byte input",
            input.len()
        ));
    }
    Ok(peak)
}

fn failures_dir() -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    base.join("fuzz-failures")
}

#[test]
fn every_target_keeps_its_invariants_and_memory_bound() {
    let _turn = exclusive();
    let all = targets();
    if let Ok(dir) = std::env::var("MANTA_FUZZ_WRITE_SEEDS") {
        for t in &all {
            let d = PathBuf::from(&dir).join(t.name);
            std::fs::create_dir_all(&d).unwrap();
            for (i, s) in (t.seeds)().iter().enumerate() {
                std::fs::write(d.join(format!("seed-{i}")), s).unwrap();
            }
        }
        return;
    }
    if let Ok(spec) = std::env::var("MANTA_FUZZ_REPRO") {
        let (name, file) = spec.split_once(':').expect("MANTA_FUZZ_REPRO=target:file");
        let t = all
            .iter()
            .find(|t| t.name == name)
            .expect("a target of that name");
        let input = std::fs::read(file).unwrap();
        (t.run)(&[]); // warm-up: thread-local state is not the input's
        match run_one(t, &input) {
            Ok(peak) => println!("{name}: ok, {peak} bytes at peak"),
            Err(e) => panic!("{name}: {e}"),
        }
        return;
    }
    let iters = env_usize("MANTA_FUZZ_ITERS", 400);
    let seed = env_usize("MANTA_FUZZ_SEED", 16) as u64;
    let only: Option<Vec<String>> = std::env::var("MANTA_FUZZ_TARGET")
        .ok()
        .map(|v| v.split(',').map(str::to_owned).collect());
    let mut failures: Vec<Failure> = Vec::new();
    let started = Instant::now();
    for t in &all {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|n| n == t.name))
        {
            continue;
        }
        let t0 = Instant::now();
        let corpus = (t.seeds)();
        assert!(!corpus.is_empty(), "{}: no seeds", t.name);
        // Warm-up: the runtime, sockets and registries a target keeps for
        // its later inputs are not any one input's memory.
        (t.run)(&corpus[0]);
        (t.run)(&[]);
        let mut rng = Rng(seed
            ^ t.name
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))));
        let (mut peak_max, mut ran, mut failed, mut known) = (0usize, 0usize, false, 0usize);
        for i in 0..iters + corpus.len() {
            // The seeds as they are first, then mutations of them (now and
            // then of nothing at all).
            let input = if i < corpus.len() {
                corpus[i].clone()
            } else if rng.below(64) == 0 {
                let n = rng.below(256);
                (0..n).map(|_| rng.byte()).collect()
            } else {
                let mut x = corpus[rng.below(corpus.len())].clone();
                let other = &corpus[rng.below(corpus.len())];
                mutate(&mut rng, &mut x, other, MAX_LEN);
                x
            };
            ran += 1;
            match run_one(t, &input) {
                Ok(peak) => peak_max = peak_max.max(peak),
                Err(what) if manta::fuzzing::is_known(t.name, &what) => known += 1,
                Err(what) => {
                    let dir = failures_dir();
                    let _ = std::fs::create_dir_all(&dir);
                    let saved = dir.join(format!("{}-{}.bin", t.name, failures.len()));
                    let _ = std::fs::write(&saved, &input);
                    failures.push(Failure {
                        target: t.name,
                        what,
                        input,
                        saved,
                    });
                    failed = true;
                    break;
                }
            }
        }
        println!(
            "{:<16} {:>8} inputs {:>8.2?} peak {:>9} bytes{}{}",
            t.name,
            ran,
            t0.elapsed(),
            peak_max,
            if known > 0 {
                format!("  ({known} hit a known finding)")
            } else {
                String::new()
            },
            if failed { "  FAILED" } else { "" }
        );
    }
    manta::fuzzing::cleanup();
    println!("all targets: {:.2?}", started.elapsed());
    if !failures.is_empty() {
        let report: Vec<String> = failures
            .iter()
            .map(|f| {
                let shown = if f.input.len() > 512 {
                    format!("{}... ({} bytes)", hex(&f.input[..512]), f.input.len())
                } else {
                    hex(&f.input)
                };
                format!(
                    "{}: {}\n  input: {shown}\n  saved: {} (rerun: MANTA_FUZZ_REPRO={}:{})",
                    f.target,
                    f.what,
                    f.saved.display(),
                    f.target,
                    f.saved.display()
                )
            })
            .collect();
        panic!(
            "{} target(s) failed:\n{}",
            failures.len(),
            report.join("\n")
        );
    }
}

/// The saved reproducers of `fuzz/regressions/<target>/`: each still
/// failing must be a [`KNOWN`](manta::fuzzing::KNOWN) finding; one that
/// passes is fixed (its entry in `KNOWN` can go).
#[test]
fn regressions_stay_fixed_or_known() {
    let _turn = exclusive();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let Ok(dirs) = std::fs::read_dir(&root) else {
        return;
    };
    let mut bad = Vec::new();
    for dir in dirs.flatten() {
        let name = dir.file_name().to_string_lossy().into_owned();
        let t = manta::fuzzing::target(&name)
            .unwrap_or_else(|| panic!("fuzz/regressions/{name}: no such target"));
        let mut files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        files.sort_by_key(|f| f.file_name());
        for f in files {
            let input = std::fs::read(f.path()).unwrap();
            let shown = format!("{name}/{}", f.file_name().to_string_lossy());
            (t.run)(&[]);
            match run_one(&t, &input) {
                Ok(_) => println!("{shown}: passes"),
                Err(what) if manta::fuzzing::is_known(&name, &what) => {
                    println!("{shown}: still open (known): {what}")
                }
                Err(what) => bad.push(format!("{shown}: {what}")),
            }
        }
    }
    manta::fuzzing::cleanup();
    assert!(bad.is_empty(), "regressions:\n{}", bad.join("\n"));
}
