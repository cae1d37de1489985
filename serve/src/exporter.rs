//! The Prometheus recorder behind the `metrics` facade (installed once per
//! process), and the names of the serving metrics.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::StartError;

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The process's Prometheus handle, installing the recorder on first use.
/// Fails when another global `metrics` recorder is installed.
pub fn prometheus() -> Result<PrometheusHandle, StartError> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("manta_serve_batch_size".into()),
                        BATCH_BUCKETS,
                    )
                })
                .and_then(|b| b.install_recorder())
                .map_err(|e| e.to_string())?;
            describe();
            Ok(handle)
        })
        .clone()
        .map_err(StartError::Metrics)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "manta_serve_requests_total",
        "Inference requests by model, version and HTTP status."
    );
    describe_histogram!(
        "manta_serve_request_duration_seconds",
        Unit::Seconds,
        "End-to-end inference latency (body read to answer)."
    );
    describe_counter!(
        "manta_serve_grpc_requests_total",
        "gRPC ModelInfer calls by model, version and status code."
    );
    describe_histogram!(
        "manta_serve_grpc_request_duration_seconds",
        Unit::Seconds,
        "End-to-end gRPC ModelInfer latency (decoded request to answer)."
    );
    describe_histogram!(
        "manta_serve_queue_seconds",
        Unit::Seconds,
        "Time waiting in the deployment's queue for a replica slot."
    );
    describe_histogram!(
        "manta_serve_batch_wait_seconds",
        Unit::Seconds,
        "Time from a batch's oldest request reaching the replica to the batch running."
    );
    describe_histogram!(
        "manta_serve_compute_seconds",
        Unit::Seconds,
        "Model time per batch."
    );
    describe_histogram!("manta_serve_batch_size", "Requests per batch.");
    describe_gauge!(
        "manta_serve_queue_depth",
        "Requests waiting in the deployment's queue."
    );
    describe_gauge!("manta_serve_replicas", "Replicas serving the deployment.");
}
