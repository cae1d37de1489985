//! The serving step of `manta demo`: the best trial of a tuner experiment
//! served behind the Open Inference Protocol, one request checked by the
//! demo itself, the `curl` command printed. Until the cluster tuning step
//! hands its experiment over, [`tiny_tune`] makes one in-process (two
//! trials of three epochs of the digits MLP, about a second).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use manta_serve::{ServeConfig, Server};

use crate::cli::CliError;

/// The digits dataset, built in so that the demo runs from any directory.
const DIGITS: &[u8] = include_bytes!("../ml/data/digits.csv.gz");

/// One 8x8 digit (a 0 from the UCI set, pixels scaled to 0..1), the one
/// the README's `curl` command sends.
pub const SAMPLE_DIGIT: [f32; 64] = [
    0.0, 0.0, 0.3125, 0.8125, 0.5625, 0.0625, 0.0, 0.0, 0.0, 0.0, 0.8125, 0.9375, 0.625, 0.9375,
    0.3125, 0.0, 0.0, 0.1875, 0.9375, 0.125, 0.0, 0.6875, 0.5, 0.0, 0.0, 0.25, 0.75, 0.0, 0.0, 0.5,
    0.5, 0.0, 0.0, 0.3125, 0.5, 0.0, 0.0, 0.5625, 0.5, 0.0, 0.0, 0.25, 0.6875, 0.0, 0.0625, 0.75,
    0.4375, 0.0, 0.0, 0.125, 0.875, 0.3125, 0.625, 0.75, 0.0, 0.0, 0.0, 0.0, 0.375, 0.8125, 0.625,
    0.0, 0.0, 0.0,
];

/// Runs a tiny digits experiment under `work` (created); answers its
/// experiment directory.
pub async fn tiny_tune(work: &Path, out: &mut dyn Write) -> Result<PathBuf, CliError> {
    std::fs::create_dir_all(work)?;
    let data = work.join("digits.csv.gz");
    std::fs::write(&data, DIGITS)?;
    let train = work.join("train.toml");
    std::fs::write(
        &train,
        "job = \"demo-tune\"\n[data]\npath = \"digits.csv.gz\"\nscale = 0.0625\n\
         [model]\nhidden = [64]\n[training]\nepochs = 3\nbatch_size = 32\n",
    )?;
    let dir = work.join("experiment");
    let text = format!(
        "[experiment]\nname = \"demo\"\ndir = {:?}\nmetric = \"val_accuracy\"\nmode = \"max\"\n\
         max_trials = 2\nmax_concurrent = 2\nseed = 0\ncheckpoint_every = 1\n\
         [trainable]\nkind = \"digits\"\nconfig = \"train.toml\"\nvalidation_fraction = 0.2\n\
         [space]\nlr = {{ type = \"choice\", values = [0.003, 0.01] }}\n",
        dir.display().to_string()
    );
    let config = manta_ml::tune::TuneConfig::parse(&text, "demo-tune.toml", work)?;
    writeln!(
        out,
        "\nTuning: two trials of the digits MLP (lr 0.003 and 0.01, 3 epochs each), in-process."
    )?;
    let t0 = Instant::now();
    let summary = manta_ml::tune::run(
        config,
        &manta_ml::tune::Trainables::default(),
        false,
        |_| {},
    )
    .await?;
    if let Some(b) = &summary.best {
        writeln!(
            out,
            "  best trial {} ({}): val_accuracy {:.3} in {:.1}s",
            b.trial,
            serde_json::to_string(&b.config).unwrap_or_default(),
            b.metric,
            t0.elapsed().as_secs_f64()
        )?;
    }
    Ok(dir)
}

/// Serves the best trial of the experiment in `experiment` as model
/// `digits` (scaled to zero replicas: the first request cold-starts one),
/// sends one digit itself and prints the label and the latency, prints
/// the `curl` command; then stops at once (`once`) or when `until`
/// resolves (Ctrl-C), draining.
pub async fn serve_step(
    experiment: &Path,
    once: bool,
    until: impl std::future::Future<Output = ()>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut server = None;
    // Port 8080 when free (the README's curl), else any.
    for address in ["127.0.0.1:8080", "127.0.0.1:0"] {
        let src = format!(
            "[http]\naddress = {address:?}\n[admin]\naddress = \"127.0.0.1:0\"\n\
             [[deployment]]\nmodel = \"digits\"\nversion = \"1\"\nexperiment = {:?}\n\
             max_batch_size = 16\nbatch_wait_timeout_ms = 1\n\
             autoscaling = {{ min_replicas = 0, max_replicas = 2, target_ongoing_requests = 8, upscale_delay_s = 0, downscale_delay_s = 30 }}\n",
            experiment.display().to_string()
        );
        let config = ServeConfig::parse(&src, "demo-serve.toml", experiment)
            .map_err(|e| CliError::Usage(e.to_string()))?;
        match Server::start(&config).await {
            Ok(s) => {
                server = Some(s);
                break;
            }
            Err(manta_serve::StartError::Io { .. }) if address.ends_with(":8080") => continue,
            Err(e) => return Err(CliError::Usage(format!("serving: {e}"))),
        }
    }
    let Some(server) = server else {
        return Err(CliError::Usage("serving: no address to listen on".into()));
    };
    let addr = server.local_addr();
    writeln!(
        out,
        "\nServing the best trial as model `digits` on http://{addr} (KServe v2), scaled to zero replicas."
    )?;
    let body = serde_json::json!({
        "id": "demo",
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": SAMPLE_DIGIT.to_vec()}],
        "outputs": [{"name": "label"}]
    })
    .to_string();
    let t0 = Instant::now();
    let answer = manta_serve::client::request(
        &format!("http://{addr}"),
        "POST",
        "/v2/models/digits/infer",
        Some(&body),
        None,
        Duration::from_secs(30),
    )
    .await;
    let took = t0.elapsed();
    let checked = match answer {
        Ok((200, text)) => serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["outputs"][0]["data"][0].as_i64())
            .ok_or_else(|| format!("unexpected answer: {text}")),
        Ok((status, text)) => Err(format!("HTTP {status}: {text}")),
        Err(e) => Err(e.to_string()),
    };
    let label = match checked {
        Ok(l) => l,
        Err(e) => {
            server.shutdown().await;
            return Err(CliError::Usage(format!(
                "the demo's own request failed: {e}"
            )));
        }
    };
    writeln!(
        out,
        "  one 8x8 digit (a zero) -> label {label} in {:.2} ms (cold start from zero replicas included)",
        took.as_secs_f64() * 1e3
    )?;
    let data: Vec<String> = SAMPLE_DIGIT.iter().map(|v| v.to_string()).collect();
    writeln!(
        out,
        "  try it:\n  curl -s {addr}/v2/models/digits/infer -H 'content-type: application/json' \\\n    -d '{{\"inputs\":[{{\"name\":\"input\",\"shape\":[1,64],\"datatype\":\"FP32\",\"data\":[{}]}}],\"outputs\":[{{\"name\":\"label\"}}]}}'",
        data.join(",")
    )?;
    if let Some(admin) = server.admin_addr() {
        writeln!(
            out,
            "  traffic split: curl -s {admin}/admin/models/digits/traffic   metrics: curl -s {addr}/metrics"
        )?;
    }
    if !once {
        writeln!(out, "Serving until Ctrl-C.")?;
        out.flush()?;
        until.await;
    }
    let drained = server.shutdown().await;
    writeln!(
        out,
        "Stopped serving{}.",
        if drained { "" } else { " (drain timed out)" }
    )?;
    Ok(())
}
