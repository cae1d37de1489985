//! Config files, checkpoints and the `manta serve` runner.

use std::io::Write;
use std::sync::{Arc, Mutex};

use manta_serve::{ServeConfig, StartError};

use crate::common::{self, WAIT, post};

#[test]
fn config_errors_name_the_file_and_the_problem() {
    let base = std::path::Path::new("/base");
    let parse = |src: &str| ServeConfig::parse(src, "serve.toml", base);
    let e = parse("[[deployment]]\nmodel = \"m\"\ncheckpoint = \"c\"\nreplica = 2\n");
    assert!(
        matches!(&e, Err(StartError::Config(m)) if m.contains("serve.toml") && m.contains("replica")),
        "{e:?}"
    );
    let e = parse("[http]\naddress = \"127.0.0.1:0\"\n");
    assert!(
        matches!(&e, Err(StartError::Config(m)) if m.contains("no [[deployment]]")),
        "{e:?}"
    );
    let e = parse("[[deployment]]\nmodel = \"m\"\ncheckpoint = \"c\"\nreplicas = 0\n");
    assert!(
        matches!(&e, Err(StartError::Config(m)) if m.contains("replicas must be at least 1")),
        "{e:?}"
    );
    let e = parse(
        "[[deployment]]\nmodel = \"m\"\ncheckpoint = \"c\"\n[[deployment]]\nmodel = \"m\"\ncheckpoint = \"d\"\n",
    );
    assert!(
        matches!(&e, Err(StartError::Config(m)) if m.contains("m:1 is configured twice")),
        "{e:?}"
    );
    let ok = parse("[[deployment]]\nmodel = \"m\"\ncheckpoint = \"c\"\nmax_batch_size = 4\n");
    match ok {
        Ok(c) => {
            assert_eq!(c.deployments[0].checkpoint, Some(base.join("c")));
            assert_eq!(c.deployments[0].options().max_batch_size, 4);
            assert_eq!(c.http.address, "127.0.0.1:8080");
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn saved_models_load_back_and_bad_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let params = common::write_checkpoint(dir.path(), 5);
    let loaded = manta_ml::ps::load_saved_model(dir.path(), 1 << 30);
    match loaded {
        Ok(s) => {
            assert_eq!(s.model, common::digits_spec());
            assert_eq!(s.version, 7);
            assert_eq!(s.params, params);
        }
        Err(e) => panic!("{e}"),
    }
    // The size bound is applied before reading.
    let small = manta_ml::ps::load_saved_model(dir.path(), 100);
    assert!(
        matches!(&small, Err(e) if e.to_string().contains("more than the 100")),
        "{small:?}"
    );
    // A cut file is refused, naming it.
    let file = dir.path().join("ps-0-of-1/ckpt-000000000007.bin");
    let bytes = std::fs::read(&file).unwrap_or_default();
    assert!(std::fs::write(&file, &bytes[..bytes.len() / 2]).is_ok());
    let cut = manta_ml::ps::load_saved_model(dir.path(), 1 << 30);
    assert!(
        matches!(&cut, Err(e) if e.to_string().contains("ckpt-000000000007.bin")),
        "{cut:?}"
    );
    let none = manta_ml::ps::load_saved_model(&dir.path().join("missing"), 1 << 30);
    assert!(none.is_err());
}

/// Lines written by the runner, and a signal per line.
#[derive(Clone)]
struct Lines {
    text: Arc<Mutex<String>>,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
}

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let s = String::from_utf8_lossy(buf).into_owned();
        if let Ok(mut t) = self.text.lock() {
            t.push_str(&s);
        }
        let _ = self.tx.send(s);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_prints_its_address_serves_and_drains_on_stop() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    common::write_checkpoint(&dir.path().join("ckpt"), 2);
    let path = dir.path().join("serve.toml");
    let written = std::fs::write(
        &path,
        "[http]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[[deployment]]\nmodel = \"digits\"\ncheckpoint = \"ckpt\"\nreplicas = 2\n",
    );
    assert!(written.is_ok());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let text = Arc::new(Mutex::new(String::new()));
    let mut out = Lines {
        text: text.clone(),
        tx,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(async move {
        manta_serve::cli::run(&path, &mut out, async {
            let _ = stop_rx.await;
        })
        .await
    });
    let addr = tokio::time::timeout(WAIT, async {
        let mut seen = String::new();
        while let Some(chunk) = rx.recv().await {
            seen.push_str(&chunk);
            let line = seen
                .lines()
                .find(|l| l.starts_with("serving on http://") && l.ends_with(')'));
            if let Some(rest) = line.and_then(|l| l.strip_prefix("serving on http://")) {
                return rest.split_whitespace().next().map(str::to_owned);
            }
        }
        None
    })
    .await;
    let addr = match addr {
        Ok(Some(a)) => a,
        other => panic!("no address printed: {other:?}"),
    };
    let (s, _, v) = post(
        &format!("http://{addr}/v2/models/digits/infer"),
        common::infer_body(1, 64, 0.25),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(stop_tx.send(()).is_ok());
    let done = tokio::time::timeout(WAIT, runner).await;
    assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
    let text = text.lock().map(|t| t.clone()).unwrap_or_default();
    assert!(text.contains("deployment digits:1: 2 replicas"), "{text}");
    assert!(text.ends_with("draining\nstopped\n"), "{text}");
}

/// Composition in the config: `next` + `preprocess` put a first stage in
/// front of a deployment with a model; raw pixels (0..16) sent to the
/// composed deployment answer what the scaled ones (0..1) answer from the
/// model itself. Every misuse is a config error naming the deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_composed_deployment_in_the_config_feeds_its_next_one() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    common::write_checkpoint(&dir.path().join("ckpt"), 2);
    let src = "[http]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
        [[deployment]]\nmodel = \"pixels\"\nnext = \"digits\"\npreprocess = { scale = 0.0625 }\nmax_batch_size = 4\n\
        [[deployment]]\nmodel = \"digits\"\ncheckpoint = \"ckpt\"\nreplicas = 2\n";
    let config =
        ServeConfig::parse(src, "serve.toml", dir.path()).unwrap_or_else(|e| panic!("config: {e}"));
    assert_eq!(config.deployments[0].next.as_deref(), Some("digits:1"));
    let server = manta_serve::Server::start(&config)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    let base = format!("http://{}", server.local_addr());
    let raw: Vec<f32> = (0..64).map(|i| ((i * 7) % 17) as f32).collect();
    let body = |data: Vec<f32>| {
        serde_json::json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": data}]})
            .to_string()
    };
    let (s, _, composed) = post(&format!("{base}/v2/models/pixels/infer"), body(raw.clone())).await;
    assert_eq!(s, 200, "{composed}");
    assert_eq!(composed["model_name"], "pixels");
    let scaled: Vec<f32> = raw.iter().map(|x| x * 0.0625).collect();
    let (s, _, direct) = post(&format!("{base}/v2/models/digits/infer"), body(scaled)).await;
    assert_eq!(s, 200, "{direct}");
    assert_eq!(composed["outputs"], direct["outputs"]);
    // Its metadata is the composition's: pixels in, digits' outputs out.
    let (s, _, meta) = crate::common::get(&format!("{base}/v2/models/pixels")).await;
    assert_eq!(s, 200);
    assert_eq!(meta["inputs"][0]["shape"], serde_json::json!([-1, 64]));
    assert_eq!(meta["outputs"][0]["shape"], serde_json::json!([-1, 10]));
    assert!(server.shutdown().await);

    let base_dir = std::path::Path::new("/base");
    let parse = |src: &str| ServeConfig::parse(src, "serve.toml", base_dir);
    let model = "[[deployment]]\nmodel = \"m\"\ncheckpoint = \"c\"\n";
    for (extra, needle) in [
        (
            "[[deployment]]\nmodel = \"p\"\nnext = \"x\"\n",
            "next = \"x\" names no configured deployment",
        ),
        (
            "[[deployment]]\nmodel = \"p\"\nnext = \"m:2\"\n",
            "names no configured deployment",
        ),
        (
            "[[deployment]]\nmodel = \"p\"\nnext = \"m\"\ncheckpoint = \"c\"\n",
            "excludes `checkpoint` and `experiment`",
        ),
        (
            "[[deployment]]\nmodel = \"p\"\ncheckpoint = \"c\"\npreprocess = { scale = 2.0 }\n",
            "`preprocess` needs `next`",
        ),
        (
            "[[deployment]]\nmodel = \"p\"\nnext = \"m\"\npreprocess = { scale = nan }\n",
            "must be finite",
        ),
        (
            "[[deployment]]\nmodel = \"p\"\nnext = \"m\"\n[[deployment]]\nmodel = \"q\"\nnext = \"p\"\n",
            "itself composed",
        ),
        (
            "[[deployment]]\nmodel = \"p\"\nnext = \"m\"\npreprocess = { factor = 2.0 }\n",
            "factor",
        ),
    ] {
        let e = parse(&format!("{model}{extra}"));
        assert!(
            matches!(&e, Err(StartError::Config(m)) if m.contains("serve.toml") && m.contains(needle)),
            "{extra}: {e:?}"
        );
    }
}
