//! What people look at: CSV and JSON exports, the best trial, SVG plots
//! (metric against iteration for every trial; best metric over time), and
//! the live table of the terminal.
//!
//! Files written to the experiment directory at the end of a run:
//! `results.csv` (trial, iteration, time, metric, then every metric
//! reported), `trials.csv`, `summary.json` (the [`Summary`]),
//! `plots/metric_vs_iteration.svg`, `plots/best_over_time.svg`, and the
//! same two as PNG (`.png`, drawn by [`super::png`]: curves, grid and
//! numbered axes; the titles and axis names are in the SVGs).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::TuneError;
use super::actors::{Best, Event, Summary, TrialState};
use super::config::{MetricMode, TuneConfig};
use super::space::Params;
use super::store::{ResultRow, Store, TrialRow};

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

fn param_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `results.csv`.
pub fn results_csv(results: &[ResultRow]) -> String {
    let names: BTreeSet<&String> = results.iter().flat_map(|r| r.metrics.keys()).collect();
    let mut out = String::from("trial,iteration,time,metric");
    for n in &names {
        out.push(',');
        out.push_str(&csv_field(n));
    }
    out.push('\n');
    for r in results {
        let _ = write!(
            out,
            "{},{},{:.3},{}",
            r.trial,
            r.iteration,
            r.time,
            opt(r.metric)
        );
        for n in &names {
            out.push(',');
            out.push_str(&opt(r.metrics.get(*n).copied()));
        }
        out.push('\n');
    }
    out
}

/// `trials.csv`.
pub fn trials_csv(trials: &[TrialRow]) -> String {
    let names: BTreeSet<&String> = trials.iter().flat_map(|t| t.params.keys()).collect();
    let mut out = String::from(
        "trial,state,node,attempts,iteration,last_metric,best_metric,best_iteration,test_accuracy",
    );
    for n in &names {
        out.push(',');
        out.push_str(&csv_field(n));
    }
    out.push_str(",error\n");
    for t in trials {
        let _ = write!(
            out,
            "{},{},{},{},{},{},{},{},{}",
            t.id,
            t.state,
            csv_field(t.node.as_deref().unwrap_or("")),
            t.attempts,
            t.iteration,
            opt(t.last_metric),
            opt(t.best_metric),
            t.best_iteration.map(|i| i.to_string()).unwrap_or_default(),
            opt(t.test_accuracy)
        );
        for n in &names {
            out.push(',');
            out.push_str(&csv_field(
                &t.params.get(*n).map(param_text).unwrap_or_default(),
            ));
        }
        out.push(',');
        out.push_str(&csv_field(t.error.as_deref().unwrap_or("")));
        out.push('\n');
    }
    out
}

/// The best trial of `trials`: the one serving deploys
/// ([`super::store::best_served`]: scored at its newest checkpoint), so
/// `manta tune` and `manta serve --experiment` name the same trial; an
/// experiment without checkpoints ranks trials by their best result.
pub fn best(
    trials: &[TrialRow],
    mode: MetricMode,
    store: &Store,
) -> Result<Option<Best>, TuneError> {
    if let Some(c) = super::store::best_served(store, mode)?
        && let Some(t) = trials.iter().find(|t| t.id == c.trial)
    {
        return Ok(Some(Best {
            trial: c.trial,
            config: t.params.clone(),
            metric: c.metric,
            iteration: Some(c.iteration),
            test_accuracy: c.metrics.get("test_accuracy").copied().or(t.test_accuracy),
            checkpoint: Some(c.checkpoint.display().to_string()),
        }));
    }
    let Some(t) = trials
        .iter()
        .filter(|t| t.best_metric.is_some_and(|m| !m.is_nan()))
        .max_by(|a, b| {
            let s = |t: &TrialRow| mode.score(t.best_metric.unwrap_or(f64::NAN));
            s(a).total_cmp(&s(b)).then(b.id.cmp(&a.id))
        })
    else {
        return Ok(None);
    };
    Ok(Some(Best {
        trial: t.id,
        config: t.params.clone(),
        metric: t.best_metric.unwrap_or(f64::NAN),
        iteration: t.best_iteration,
        test_accuracy: t.test_accuracy,
        checkpoint: store
            .latest_checkpoint(t.id)?
            .map(|(_, p)| p.display().to_string()),
    }))
}

fn write(path: &Path, text: &str) -> Result<(), TuneError> {
    std::fs::write(path, text).map_err(|e| TuneError::io(path, e))
}

/// Writes the exports and plots, and returns the summary.
pub(crate) fn finish(store: &Store, cfg: &TuneConfig, wall: f64) -> Result<Summary, TuneError> {
    let dir = &cfg.experiment.dir;
    let trials = store.trials()?;
    let results = store.results()?;
    let mut counts = BTreeMap::new();
    for t in &trials {
        *counts.entry(t.state.clone()).or_insert(0u64) += 1;
    }
    if !cfg.experiment.persist {
        return Ok(Summary {
            best: best(&trials, cfg.experiment.mode, store)?,
            trials: counts,
            results: results.len() as u64,
            wall_seconds: wall,
            experiment_dir: dir.display().to_string(),
            metric: cfg.experiment.metric.clone(),
            mode: match cfg.experiment.mode {
                MetricMode::Max => "max".into(),
                MetricMode::Min => "min".into(),
            },
            files: Vec::new(),
        });
    }
    let mut files = Vec::new();
    let mut put = |name: &str, text: &str| -> Result<(), TuneError> {
        let p = dir.join(name);
        write(&p, text)?;
        files.push(p.display().to_string());
        Ok(())
    };
    put("results.csv", &results_csv(&results))?;
    put("trials.csv", &trials_csv(&trials))?;
    let plots = dir.join("plots");
    std::fs::create_dir_all(&plots).map_err(|e| TuneError::io(&plots, e))?;
    let created = store.created_at()?;
    let a = plots.join("metric_vs_iteration.svg");
    plot_curves(&a, &results, &cfg.experiment.metric)?;
    let b = plots.join("best_over_time.svg");
    plot_best(
        &b,
        &results,
        created,
        cfg.experiment.mode,
        &cfg.experiment.metric,
    )?;
    let mut files_all = files;
    files_all.push(a.display().to_string());
    files_all.push(b.display().to_string());
    for p in png_plots(&plots, &results, created, cfg.experiment.mode)? {
        files_all.push(p.display().to_string());
    }
    let summary = Summary {
        best: best(&trials, cfg.experiment.mode, store)?,
        trials: counts,
        results: results.len() as u64,
        wall_seconds: wall,
        experiment_dir: dir.display().to_string(),
        metric: cfg.experiment.metric.clone(),
        mode: match cfg.experiment.mode {
            MetricMode::Max => "max".into(),
            MetricMode::Min => "min".into(),
        },
        files: files_all,
    };
    let json =
        serde_json::to_string_pretty(&summary).map_err(|e| TuneError::Config(e.to_string()))?;
    write(&dir.join("summary.json"), &json)?;
    Ok(summary)
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> TuneError {
    TuneError::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    }
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
        (l.min(v), h.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if (hi - lo).abs() < 1e-12 {
        (lo - 0.5, hi + 0.5)
    } else {
        let pad = (hi - lo) * 0.05;
        (lo - pad, hi + pad)
    }
}

/// Every trial's (iteration, metric) points.
fn curves(results: &[ResultRow]) -> BTreeMap<u64, Vec<(f64, f64)>> {
    let mut by_trial: BTreeMap<u64, Vec<(f64, f64)>> = BTreeMap::new();
    for r in results {
        if let Some(m) = r.metric {
            by_trial
                .entry(r.trial)
                .or_default()
                .push((r.iteration as f64, m));
        }
    }
    by_trial
}

/// The best metric so far at each result (seconds since `start`).
fn best_so_far(results: &[ResultRow], start: f64, mode: MetricMode) -> Vec<(f64, f64)> {
    let mut rows: Vec<(f64, f64)> = results
        .iter()
        .filter_map(|r| r.metric.map(|m| ((r.time - start).max(0.0), m)))
        .collect();
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut best: Option<f64> = None;
    rows.into_iter()
        .map(|(t, m)| {
            let b = match best {
                Some(b) if mode.score(b) >= mode.score(m) => b,
                _ => m,
            };
            best = Some(b);
            (t, b)
        })
        .collect()
}

/// The PNG twins of the SVG plots ([`super::png`]: no fonts needed).
pub fn png_plots(
    dir: &Path,
    results: &[ResultRow],
    start: f64,
    mode: MetricMode,
) -> Result<Vec<std::path::PathBuf>, TuneError> {
    let by_trial = curves(results);
    let (ylo, yhi) = range(by_trial.values().flatten().map(|p| p.1));
    let xmax = by_trial.values().flatten().map(|p| p.0).fold(1.0, f64::max);
    let series: Vec<Vec<(f64, f64)>> = by_trial.into_values().collect();
    let a = dir.join("metric_vs_iteration.png");
    let img = super::png::line_chart(&series, (0.0, xmax * 1.02), (ylo, yhi), (900, 560), 1);
    std::fs::write(&a, img.to_png()).map_err(|e| TuneError::io(&a, e))?;
    let pts = best_so_far(results, start, mode);
    let (ylo, yhi) = range(pts.iter().map(|p| p.1));
    let xmax = pts.last().map_or(1.0, |p| p.0.max(1e-3));
    let b = dir.join("best_over_time.png");
    let img = super::png::line_chart(&[pts], (0.0, xmax * 1.02), (ylo, yhi), (900, 560), 2);
    std::fs::write(&b, img.to_png()).map_err(|e| TuneError::io(&b, e))?;
    Ok(vec![a, b])
}

/// The metric against the iteration, one line per trial.
pub fn plot_curves(path: &Path, results: &[ResultRow], metric: &str) -> Result<(), TuneError> {
    let by_trial = curves(results);
    let (ylo, yhi) = range(by_trial.values().flatten().map(|p| p.1));
    let xmax = by_trial.values().flatten().map(|p| p.0).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{metric} by iteration, every trial"),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax * 1.02, ylo..yhi)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("iteration")
        .y_desc(metric)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    for (i, (_, pts)) in by_trial.iter().enumerate() {
        let color = Palette99::pick(i).mix(0.8);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(1)))
            .map_err(|e| plot_err(path, e))?;
    }
    root.present().map_err(|e| plot_err(path, e))
}

/// The best metric so far against seconds since the experiment started.
pub fn plot_best(
    path: &Path,
    results: &[ResultRow],
    start: f64,
    mode: MetricMode,
    metric: &str,
) -> Result<(), TuneError> {
    let pts = best_so_far(results, start, mode);
    let (ylo, yhi) = range(pts.iter().map(|p| p.1));
    let xmax = pts.last().map_or(1.0, |p| p.0.max(1e-3));
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("best {metric} so far"), ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax * 1.02, ylo..yhi)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(metric)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    chart
        .draw_series(LineSeries::new(pts, BLUE.stroke_width(2)))
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))
}

/// The live table: folds events into rows and renders them.
#[derive(Debug, Default)]
pub struct LiveTable {
    rows: BTreeMap<u64, LiveRow>,
    best: Option<f64>,
}

#[derive(Debug, Clone)]
struct LiveRow {
    params: Params,
    state: TrialState,
    iteration: u64,
    metric: Option<f64>,
}

impl LiveTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes an event in.
    pub fn apply(&mut self, ev: &Event) {
        match ev {
            Event::Started {
                trial,
                params,
                from_iteration,
                ..
            } => {
                let r = self.rows.entry(*trial).or_insert(LiveRow {
                    params: params.clone(),
                    state: TrialState::Running,
                    iteration: *from_iteration,
                    metric: None,
                });
                r.state = TrialState::Running;
            }
            Event::Result {
                trial,
                iteration,
                metric,
                best,
            } => {
                if let Some(r) = self.rows.get_mut(trial) {
                    r.iteration = *iteration;
                    if metric.is_some() {
                        r.metric = *metric;
                    }
                }
                self.best = *best;
            }
            Event::Ended { trial, state, .. } => {
                if let Some(r) = self.rows.get_mut(trial) {
                    r.state = *state;
                }
            }
        }
    }

    /// The table as text: running trials and the last `tail` others.
    pub fn render(&self, tail: usize) -> String {
        let mut out = format!(
            "{:>5}  {:<10}  {:>5}  {:>10}  {:>10}  params\n",
            "trial", "state", "iter", "metric", "best"
        );
        let done: Vec<_> = self
            .rows
            .iter()
            .filter(|(_, r)| r.state != TrialState::Running)
            .collect();
        let skip = done.len().saturating_sub(tail);
        let shown = self
            .rows
            .iter()
            .filter(|(_, r)| r.state == TrialState::Running)
            .chain(done.into_iter().skip(skip));
        for (id, r) in shown {
            let params: Vec<String> = r
                .params
                .iter()
                .map(|(k, v)| match v.as_f64() {
                    Some(x) if !v.is_i64() => format!("{k}={x:.4e}"),
                    _ => format!("{k}={}", param_text(v)),
                })
                .collect();
            let _ = writeln!(
                out,
                "{id:>5}  {:<10}  {:>5}  {:>10}  {:>10}  {}",
                r.state.as_str(),
                r.iteration,
                r.metric.map(|m| format!("{m:.4}")).unwrap_or_default(),
                self.best.map(|m| format!("{m:.4}")).unwrap_or_default(),
                params.join(" ")
            );
        }
        out
    }
}
