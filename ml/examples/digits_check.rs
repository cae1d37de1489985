//! Trains the digits MLP with given hyper-parameters on several split seeds
//! and prints each seed's accuracy, the mean and the worst: the check a
//! tuned digits config has to pass on seeds it was not tuned on.
//!
//! ```text
//! cargo run --release -p manta-ml --example digits_check -- \
//!     '{"lr": 0.001, "hidden": 512, "batch_size": 16, "epochs": 36}' 1-10 [VALIDATION_FRACTION]
//! ```
//!
//! Several configs, one JSON object per line of a file: `@FILE` instead of
//! the object. With a validation fraction above 0 the metric is the mean
//! final `val_accuracy` (test rows untouched: use it to choose a config on
//! seeds you then exclude); with 0 (the default) the model trains on every
//! training row and the metric is `test_accuracy`.

use std::path::Path;
use std::sync::Mutex;

use manta_ml::TrainConfig;
use manta_ml::tune::{DigitsTrainable, Params, Trainable, TrialInfo};

fn run(base: &TrainConfig, params: &Params, seed: u64, vf: f64) -> Result<f64, String> {
    let mut p = params.clone();
    p.insert("split_seed".into(), seed.into());
    let info = TrialInfo {
        id: seed,
        params: p,
        dir: std::env::temp_dir(),
        attempt: 0,
        max_iterations: None,
    };
    let mut t = DigitsTrainable::new(base, &info, vf).map_err(|e| e.to_string())?;
    let n = t.max_iterations().unwrap_or(1);
    let mut last = None;
    for _ in 0..n {
        last = Some(t.step().map_err(|e| e.to_string())?);
    }
    let m = last.ok_or("no epochs")?;
    let key = if vf > 0.0 {
        "val_accuracy"
    } else {
        "test_accuracy"
    };
    m.get(key).copied().ok_or_else(|| format!("no {key}"))
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let spec = args
        .first()
        .ok_or("usage: digits_check PARAMS|@FILE [A-B] [VAL]")?;
    let seeds = args.get(1).map_or("1-10", String::as_str);
    let (a, b) = seeds.split_once('-').unwrap_or((seeds, seeds));
    let (a, b): (u64, u64) = (
        a.parse().map_err(|_| "seeds: A-B")?,
        b.parse().map_err(|_| "seeds: A-B")?,
    );
    let vf: f64 = args
        .get(2)
        .map_or(Ok(0.0), |s| s.parse().map_err(|_| "VAL"))?;
    let configs: Vec<Params> = match spec.strip_prefix('@') {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| format!("{f}: {e}"))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| format!("{l}: {e}")))
            .collect::<Result<_, _>>()?,
        None => vec![serde_json::from_str(spec).map_err(|e| e.to_string())?],
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/train-digits.toml");
    let base = TrainConfig::load(&root).map_err(|e| e.to_string())?;
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    for params in configs {
        let started = std::time::Instant::now();
        let seeds: Vec<u64> = (a..=b).collect();
        let next = Mutex::new(0usize);
        let out = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    loop {
                        let i = {
                            let mut n = next
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            *n += 1;
                            *n - 1
                        };
                        let Some(&seed) = seeds.get(i) else { break };
                        let r = run(&base, &params, seed, vf);
                        out.lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push((seed, r));
                    }
                });
            }
        });
        let mut out = out
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        out.sort_by_key(|x| x.0);
        let accs: Vec<f64> = out
            .iter()
            .map(|(s, r)| r.clone().map_err(|e| format!("seed {s}: {e}")))
            .collect::<Result<_, _>>()?;
        let mean = accs.iter().sum::<f64>() / accs.len() as f64;
        let worst = accs.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "{} mean {mean:.4} worst {worst:.4} [{}] {:.1}s",
            serde_json::to_string(&params).map_err(|e| e.to_string())?,
            accs.iter()
                .map(|x| format!("{x:.3}"))
                .collect::<Vec<_>>()
                .join(" "),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
