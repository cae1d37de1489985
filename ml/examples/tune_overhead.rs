//! Tuner overhead figures (BENCHMARKS.md, issue 18):
//!
//! 1. no-op trials per second with the durable store (one iteration each);
//! 2. reported results per second (one trial, many iterations);
//! 3. N trials of 50 ms each at concurrency 2 against the ideal N * 25 ms;
//! 4. 1 and 2 again without persistence (`persist = false`: in-memory
//!    store, nothing written);
//! 5. with `digits`: the digits ASHA example (`examples/tune-digits.toml`,
//!    concurrency 2) against the same trials (same hyper-parameters, same
//!    seeds, as many epochs as each ran in the experiment) trained one after
//!    another in this process, without the tuner.
//!
//! `cargo run -p manta-ml --example tune_overhead [-- N_NOOP N_RESULTS N_SLOW] [digits]`
#![allow(missing_docs)]

use std::path::Path;
use std::time::{Duration, Instant};

use manta_ml::tune::{Metrics, Trainable, Trainables, TrialInfo, TuneConfig, TuneError, run};

struct Work {
    ms: u64,
}

impl Trainable for Work {
    fn step(&mut self) -> Result<Metrics, TuneError> {
        if self.ms > 0 {
            // The trial's work: what the overhead is measured against.
            std::thread::sleep(Duration::from_millis(self.ms));
        }
        Ok(Metrics::from([("score".to_string(), 1.0)]))
    }
    fn save(&mut self, _: &Path) -> Result<(), TuneError> {
        Ok(())
    }
    fn restore(&mut self, _: &Path) -> Result<(), TuneError> {
        Ok(())
    }
}

fn config(dir: &Path, trials: u64, concurrency: u64, iterations: u64) -> TuneConfig {
    config_p(dir, trials, concurrency, iterations, true)
}

fn config_p(
    dir: &Path,
    trials: u64,
    concurrency: u64,
    iterations: u64,
    persist: bool,
) -> TuneConfig {
    let text = format!(
        "[experiment]\ndir = {:?}\npersist = {persist}\nmetric = \"score\"\nmax_trials = {trials}\nmax_concurrent = {concurrency}\ncheckpoint_every = 1000000000\n[stop]\nmax_iterations = {iterations}\n[trainable]\nkind = \"rust\"\nname = \"work\"\n[space]\nx = {{ type = \"uniform\", low = 0.0, high = 1.0 }}\n",
        dir.display().to_string()
    );
    // The text above is fixed and valid.
    #[allow(clippy::unwrap_used)]
    TuneConfig::parse(&text, "bench", dir).unwrap()
}

#[tokio::main]
async fn main() -> Result<(), TuneError> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n_noop = args.first().copied().unwrap_or(2000);
    let n_results = args.get(1).copied().unwrap_or(20000);
    let n_slow = args.get(2).copied().unwrap_or(200);
    if std::env::args().any(|a| a == "digits") {
        return digits().await;
    }
    let root = std::env::temp_dir().join(format!("manta-tune-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let work = |ms: u64| {
        Trainables::new().with("work", move |_: &TrialInfo| {
            Ok(Box::new(Work { ms }) as Box<dyn Trainable>)
        })
    };
    for concurrency in [1, 4] {
        let t = Instant::now();
        let s = run(
            config(
                &root.join(format!("noop-{concurrency}")),
                n_noop,
                concurrency,
                1,
            ),
            &work(0),
            false,
            |_| {},
        )
        .await?;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "no-op trials, durable, concurrency {concurrency}: {n_noop} in {secs:.2} s = {:.0} trials/s ({} results)",
            n_noop as f64 / secs,
            s.results
        );
    }
    for concurrency in [1, 4] {
        let t = Instant::now();
        let s = run(
            config_p(&root.join("mem"), n_noop, concurrency, 1, false),
            &work(0),
            false,
            |_| {},
        )
        .await?;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "no-op trials, no persistence, concurrency {concurrency}: {n_noop} in {secs:.2} s = {:.0} trials/s ({} results)",
            n_noop as f64 / secs,
            s.results
        );
    }
    let t = Instant::now();
    let s = run(
        config_p(&root.join("mem"), 1, 1, n_results, false),
        &work(0),
        false,
        |_| {},
    )
    .await?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "results of one trial, no persistence: {} in {secs:.2} s = {:.0} results/s",
        s.results,
        s.results as f64 / secs
    );
    let t = Instant::now();
    let s = run(
        config(&root.join("results"), 1, 1, n_results),
        &work(0),
        false,
        |_| {},
    )
    .await?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "results of one trial, durable: {} in {secs:.2} s = {:.0} results/s",
        s.results,
        s.results as f64 / secs
    );
    let t = Instant::now();
    run(
        config(&root.join("slow"), n_slow, 2, 1),
        &work(50),
        false,
        |_| {},
    )
    .await?;
    let secs = t.elapsed().as_secs_f64();
    let ideal = n_slow as f64 * 0.050 / 2.0;
    println!(
        "{n_slow} trials of 50 ms at concurrency 2: {secs:.2} s, ideal {ideal:.2} s, ratio {:.3}",
        secs / ideal
    );
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

/// The digits ASHA example against its trials run one after another.
async fn digits() -> Result<(), TuneError> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut cfg = TuneConfig::load(&examples.join("tune-digits.toml"))?;
    let root = std::env::temp_dir().join(format!("manta-tune-digits-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    cfg.experiment.dir = root.clone();
    let manta_ml::tune::TrainableSpec::Digits {
        config,
        validation_fraction,
    } = cfg.trainable.clone()
    else {
        return Err(TuneError::Config(
            "tune-digits.toml: not a digits trainable".into(),
        ));
    };
    let t = Instant::now();
    let s = run(cfg.clone(), &Trainables::new(), false, |_| {}).await?;
    let tuned = t.elapsed().as_secs_f64();
    let store = manta_ml::tune::Store::open(&root)?.0;
    let trials = store.trials()?;
    let epochs: u64 = trials.iter().map(|t| t.iteration).sum();
    println!(
        "digits ASHA example: {} trials, {epochs} epochs, {} results in {tuned:.2} s (concurrency {})",
        trials.len(),
        s.results,
        cfg.experiment.max_concurrent
    );
    // The same trials, one after another, each for the epochs it ran.
    let base = manta_ml::TrainConfig::load(&config)?;
    let t = Instant::now();
    for row in &trials {
        let info = TrialInfo {
            id: row.id,
            params: row.params.clone(),
            dir: root.join("seq"),
            attempt: 0,
            max_iterations: cfg.iteration_cap(),
        };
        let mut tr = manta_ml::tune::DigitsTrainable::new(&base, &info, validation_fraction)?;
        for _ in 0..row.iteration {
            tr.step()?;
        }
    }
    let seq = t.elapsed().as_secs_f64();
    println!(
        "the same trials one after another in one process: {seq:.2} s; tuner / sequential = {:.3}",
        tuned / seq
    );
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
