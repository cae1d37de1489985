//! Tuner overhead figures (BENCHMARKS.md, issue 18):
//!
//! 1. no-op trials per second with the durable store (one iteration each);
//! 2. reported results per second (one trial, many iterations);
//! 3. N trials of 50 ms each at concurrency 2 against the ideal N * 25 ms.
//!
//! `cargo run -p manta-ml --example tune_overhead [-- N_NOOP N_RESULTS N_SLOW]`
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
    let text = format!(
        "[experiment]\ndir = {:?}\nmetric = \"score\"\nmax_trials = {trials}\nmax_concurrent = {concurrency}\ncheckpoint_every = 1000000000\n[stop]\nmax_iterations = {iterations}\n[trainable]\nkind = \"rust\"\nname = \"work\"\n[space]\nx = {{ type = \"uniform\", low = 0.0, high = 1.0 }}\n",
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
