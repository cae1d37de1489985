use std::time::Duration;

use manta_actors::ActorSystem;
use manta_ml::data::{Batch, ShardPlan, shard_batches};
use manta_ml::device::CpuBackend;
use manta_ml::job::{self, Env, Progress};
use manta_ml::ps::{Gradients, Mode, ParamServer, Params, PsArgs, PsMsg, Pushed};
use manta_ml::reference::train_reference;
use manta_ml::{MlError, ModelSpec, OptimizerConfig, ParamTensor, TrainConfig};

use crate::config;

fn max_diff(a: &[ParamTensor], b: &[ParamTensor]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.shape, y.shape);
        for (p, q) in x.values.iter().zip(&y.values) {
            worst = worst.max((p - q).abs());
        }
    }
    worst
}

fn spec_of(cfg: &TrainConfig) -> ModelSpec {
    ModelSpec {
        inputs: 64,
        hidden: cfg.model.hidden.clone(),
        classes: 10,
    }
}

/// The batches of every step: one per worker, concatenated (what a single
/// process would train on to see the same rows per step).
fn reference_steps(cfg: &TrainConfig) -> Vec<Batch> {
    let (train, _) = cfg.data.load_split().unwrap();
    let t = &cfg.training;
    let plan = ShardPlan {
        shards: t.loaders,
        batch_size: t.batch_size,
    };
    let per_shard: Vec<Vec<Batch>> = (0..t.loaders)
        .map(|s| shard_batches(&train, plan, s, t.seed, t.epochs).collect())
        .collect();
    (0..per_shard[0].len())
        .map(|i| {
            let mut b = per_shard[0][i].clone();
            for other in &per_shard[1..] {
                b.features.extend_from_slice(&other[i].features);
                b.labels.extend_from_slice(&other[i].labels);
            }
            b
        })
        .collect()
}

async fn equivalence(extra: &str) -> (f32, f32, f32) {
    let cfg = config(extra);
    let mut epochs_seen = Vec::new();
    let report = manta_ml::train(&cfg, Env::InProcess, |p| {
        if let Progress::Epoch { epoch, .. } = p {
            epochs_seen.push(*epoch);
        }
    })
    .await
    .unwrap();
    // Progress reports the latest epoch reached when it looks (a loaded
    // machine may skip one), always increasing, ending at the last.
    assert!(
        epochs_seen.windows(2).all(|w| w[0] < w[1])
            && epochs_seen.last() == Some(&cfg.training.epochs),
        "epochs reported: {epochs_seen:?}"
    );
    let (_, test) = cfg.data.load_split().unwrap();
    let spec = spec_of(&cfg);
    let reference = train_reference::<CpuBackend>(
        &spec,
        &spec.init(cfg.training.seed),
        &cfg.optimizer,
        cfg.training.lr,
        reference_steps(&cfg),
        &test,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(report.steps, reference.losses.len() as u64);
    (
        max_diff(&report.final_params, &reference.params),
        report.test_accuracy,
        reference.test_accuracy,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_ps_with_one_worker_matches_the_single_process_burn_loop_adam() {
    let (diff, ps, single) = equivalence(
        "[model]\nhidden = [32]\n[training]\nepochs = 3\nbatch_size = 32\nlr = 0.002\n",
    )
    .await;
    // Same rows in the same order, burn's Adam update replicated exactly:
    // only float rounding differs (measured: ~1e-7).
    assert!(diff < 1e-4, "parameters differ by {diff}");
    assert!(
        (ps - single).abs() <= 1.0 / 360.0 + 1e-6,
        "accuracy {ps} vs {single}"
    );
}

/// Gradients of small models run inline on a multi-thread runtime, those of
/// larger ones in place after handing the thread's other tasks away
/// (`block_in_place`), and both on the blocking pool on a current-thread
/// runtime: every way gives the same training.
#[test]
fn a_current_thread_runtime_trains_the_same_as_a_multi_thread_one() {
    for (hidden, inline) in [(16, true), (2048, false)] {
        let cfg = config(&format!(
            "[model]\nhidden = [{hidden}]\n[training]\nepochs = 1\nbatch_size = 32\n"
        ));
        assert_eq!(
            spec_of(&cfg).param_count() * 32 <= manta_ml::worker::INLINE_WORK,
            inline,
            "hidden {hidden} takes the path this test means it to"
        );
        let run = |rt: tokio::runtime::Runtime| {
            rt.block_on(manta_ml::train(&cfg, Env::InProcess, |_| {}))
                .unwrap()
        };
        let single = run(tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap());
        let multi = run(tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap());
        assert!(single.steps > 0);
        assert_eq!(single.steps, multi.steps);
        assert_eq!(
            max_diff(&single.final_params, &multi.final_params),
            0.0,
            "hidden {hidden}: sync training is deterministic whatever the runtime"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_ps_sharded_with_sgd_momentum_matches_the_single_process_burn_loop() {
    let (diff, ps, single) = equivalence(
        "[model]\nhidden = [32, 16]\n[optimizer]\nkind = \"sgd\"\nmomentum = 0.9\n[training]\nepochs = 3\nlr = 0.05\nps_shards = 3\n",
    )
    .await;
    assert!(diff < 1e-4, "parameters differ by {diff}");
    assert!(
        (ps - single).abs() <= 1.0 / 360.0 + 1e-6,
        "accuracy {ps} vs {single}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_ps_with_two_workers_tracks_the_single_process_loop_on_the_same_rows() {
    // Each step averages two workers' mean gradients; a single process
    // computes the mean over both batches at once. They are equal when the
    // batches are equally large (all but the last step of an epoch), so the
    // results agree closely but not to the last bit.
    let (diff, ps, single) = equivalence(
        "[model]\nhidden = [32]\n[training]\nepochs = 8\nworkers = 2\nloaders = 2\nlr = 0.004\n",
    )
    .await;
    assert!(diff < 2e-2, "parameters differ by {diff}");
    assert!((ps - single).abs() <= 0.01, "accuracy {ps} vs {single}");
    assert!(ps > 0.9, "accuracy {ps}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_training_converges_within_its_staleness_bound() {
    let cfg = config(
        "[model]\nhidden = [64]\n[training]\nepochs = 15\nworkers = 3\nloaders = 3\nmode = \"async\"\nstaleness = 2\nlr = 0.002\n",
    );
    let report = manta_ml::train(&cfg, Env::InProcess, |_| {}).await.unwrap();
    assert_eq!(report.mode, "async");
    assert!(
        report.test_accuracy >= 0.95,
        "async accuracy {}",
        report.test_accuracy
    );
    // Every batch was either applied or dropped as too stale.
    let (train, _) = cfg.data.load_split().unwrap();
    let bpe = ShardPlan {
        shards: 3,
        batch_size: 32,
    }
    .batches_per_epoch(train.len()) as u64;
    assert_eq!(report.steps + report.rejected_pushes, 3 * 15 * bpe);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_parameter_server_resumes_from_its_checkpoint_and_training_reaches_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&format!(
        "[model]\nhidden = [128]\n[training]\nepochs = 40\nworkers = 2\nloaders = 2\n[checkpoint]\ndir = {:?}\nevery = 50\n",
        dir.path().display().to_string()
    ));
    let running = job::start(&cfg, Env::InProcess).await.unwrap();
    let ps = running.ps(0).await.unwrap();
    let v = ps
        .ask(|r| PsMsg::WaitVersion(300, r), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(v >= 300);
    ps.kill();
    let report = running.finish(|_| {}).await.unwrap();
    let resumed = report
        .resumed_from
        .expect("the restarted shard loaded a checkpoint");
    assert!(
        resumed >= 250 && resumed % 50 == 0,
        "resumed from {resumed}"
    );
    assert!(
        report.test_accuracy >= 0.97,
        "accuracy {}",
        report.test_accuracy
    );
    assert_eq!(
        report.steps,
        40 * 23,
        "every step done once the server is back"
    );
    let run = std::path::PathBuf::from(report.checkpoint.clone().unwrap());
    assert!(run.starts_with(dir.path()));
    assert!(
        run.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("run-")
    );
    let files: Vec<_> = std::fs::read_dir(run.join("ps-0-of-1")).unwrap().collect();
    assert!(
        !files.is_empty() && files.len() <= 3,
        "{} checkpoint files kept",
        files.len()
    );
}

/// A one-shard sync parameter server for a 4-3-2 MLP (23 values in four
/// tensors) with plain SGD at lr 0.1, expecting `workers` workers.
async fn small_sgd_ps(
    system: &ActorSystem,
    workers: u32,
) -> (manta_actors::ActorHandle<PsMsg>, ModelSpec) {
    let model = ModelSpec {
        inputs: 4,
        hidden: vec![3],
        classes: 2,
    };
    let ps = system
        .spawn(ParamServer::new(PsArgs {
            shard: 0,
            shards: 1,
            model: model.clone(),
            init_seed: 0,
            optimizer: OptimizerConfig::sgd(0.0),
            lr: 0.1,
            mode: Mode::Sync,
            workers,
            checkpoint: None,
            lr_decay: Default::default(),
            steps_per_epoch: 0,
            epochs: 0,
            input: None,
        }))
        .await
        .unwrap();
    (ps, model)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parameter_server_rejects_malformed_pushes_and_keeps_serving() {
    let system = ActorSystem::new();
    let (ps, model) = small_sgd_ps(&system, 1).await;
    let t = Duration::from_secs(5);
    let wrong = vec![vec![0.0; 12], vec![0.0; 3], vec![0.0; 5], vec![0.0; 2]];
    let reply = ps
        .ask(
            |r| {
                PsMsg::Push(
                    Gradients {
                        worker: 0,
                        version: 0,
                        grads: wrong,
                        loss: 1.0,
                        samples: 1,
                    },
                    r,
                )
            },
            t,
        )
        .await
        .unwrap();
    match reply {
        Err(why) => assert!(
            why.contains("layers.1.weight") && why.contains("5 values"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    let nan = vec![vec![f32::NAN; 12], vec![0.0; 3], vec![0.0; 6], vec![0.0; 2]];
    let refused = ps
        .ask(
            |r| {
                PsMsg::Push(
                    Gradients {
                        worker: 0,
                        version: 0,
                        grads: nan,
                        loss: 1.0,
                        samples: 1,
                    },
                    r,
                )
            },
            t,
        )
        .await
        .unwrap();
    assert!(
        refused
            .as_ref()
            .is_err_and(|why| why.contains("NaN or infinity")),
        "{refused:?}"
    );
    // Still alive, still at version 0, and a good push is applied.
    let good = vec![vec![1.0; 12], vec![1.0; 3], vec![1.0; 6], vec![1.0; 2]];
    match ps
        .ask(
            |r| {
                PsMsg::Push(
                    Gradients {
                        worker: 0,
                        version: 0,
                        grads: good,
                        loss: 1.0,
                        samples: 1,
                    },
                    r,
                )
            },
            t,
        )
        .await
        .unwrap()
    {
        Ok(Pushed {
            accepted: true,
            version: 1,
        }) => {}
        other => panic!("{other:?}"),
    }
    match ps
        .ask(
            |reply| PsMsg::Pull {
                worker: 0,
                min_version: 0,
                reply,
            },
            t,
        )
        .await
        .unwrap()
    {
        Params { version: 1, params } => {
            let init = model.init(0);
            assert!((params[0].values[0] - (init[0].values[0] - 0.1)).abs() < 1e-6);
        }
        other => panic!("{other:?}"),
    }
}

fn config_err(text: &str) -> String {
    TrainConfig::parse(text, "bad.toml", std::path::Path::new("."))
        .unwrap_err()
        .to_string()
}

#[tokio::test]
async fn bad_configs_and_devices_are_clear_errors() {
    let data = format!(
        "[data]\npath = {:?}\n",
        crate::digits().path.display().to_string()
    );
    let e = config_err(&format!("{data}[training]\nepochz = 3\n"));
    assert!(
        e.starts_with("bad.toml: TOML parse error at line 4") && e.contains("epochz"),
        "{e}"
    );
    let e = config_err(&format!("{data}[training]\nworkers = 2\nloaders = 3\n"));
    assert!(
        e.contains("training.loaders: must equal training.workers (2)"),
        "{e}"
    );
    let e = config_err(&format!("{data}[training]\nlr = -1.0\n"));
    assert!(e.contains("training.lr: must be a positive number"), "{e}");
    let e = config_err(&format!("{data}[training]\ndevice = \"tpu\"\n"));
    assert!(e.contains("unknown device `tpu`"), "{e}");
    let e = config_err(&format!("{data}[training]\ndevice = \"cuda:x\"\n"));
    assert!(e.contains("GPU number"), "{e}");
    let e = config_err(&format!("{data}[model]\nhidden = [0]\n"));
    assert!(e.contains("model.hidden"), "{e}");
    let e = config_err(&format!(
        "{data}[optimizer]\nkind = \"adam\"\nbeta1 = 1.5\n"
    ));
    assert!(e.contains("beta1"), "{e}");
    let cfg = TrainConfig::parse(
        "[data]\npath = \"/nonexistent/digits.csv\"\n",
        "x.toml",
        std::path::Path::new("."),
    )
    .unwrap();
    let e = manta_ml::train(&cfg, Env::InProcess, |_| {})
        .await
        .unwrap_err();
    // Parsing does not read the data; starting the job does, and says which file.
    assert!(e.to_string().contains("/nonexistent/digits.csv"), "{e}");
    let cuda = config("[training]\ndevice = \"cuda:0\"\n");
    let e = manta_ml::train(&cuda, Env::InProcess, |_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, MlError::Device { .. }), "{e}");
    #[cfg(not(feature = "cuda"))]
    assert!(
        e.to_string().contains("rebuild with `--features cuda`"),
        "{e}"
    );
    let e = config_err(&format!("{data}[training]\nbatch_size = 0\n"));
    assert!(e.contains("training.batch_size"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_run_never_resumes_an_old_one_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let text = |resume: bool| {
        format!(
            "[model]\nhidden = [16]\n[training]\nepochs = 2\n[checkpoint]\ndir = {:?}\nevery = 10\nresume = {resume}\n",
            dir.path().display().to_string()
        )
    };
    let first = manta_ml::train(&config(&text(false)), Env::InProcess, |_| {})
        .await
        .unwrap();
    let second = manta_ml::train(&config(&text(false)), Env::InProcess, |_| {})
        .await
        .unwrap();
    assert_ne!(
        first.checkpoint, second.checkpoint,
        "each run writes its own directory"
    );
    assert_eq!(second.resumed_from, None);
    assert_eq!(
        second.steps, first.steps,
        "the second run trained from scratch"
    );
    assert!(second.final_loss.is_finite());
    // Asked to resume, a run continues the newest one: already complete.
    let third = manta_ml::train(&config(&text(true)), Env::InProcess, |_| {})
        .await
        .unwrap();
    assert_eq!(third.checkpoint, second.checkpoint);
    assert_eq!(third.resumed_from, Some(second.steps));
}

/// `PushPull`: one message per step carries a worker's gradients and brings
/// back the parameters of the next version, answered (sync mode) only once
/// every worker has pushed; stale and malformed pushes are counted and
/// still answered with the current parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_pull_answers_with_the_next_version_once_every_worker_has_pushed() {
    let system = ActorSystem::new();
    let (ps, model) = small_sgd_ps(&system, 2).await;
    let t = Duration::from_secs(5);
    let grads = |v: f32| vec![vec![v; 12], vec![v; 3], vec![v; 6], vec![v; 2]];
    let push_pull = |worker: u32, version: u64, grads: Vec<Vec<f32>>| {
        let g = Gradients {
            worker,
            version,
            grads,
            loss: 1.0,
            samples: 4,
        };
        move |r| PsMsg::PushPull(g, r)
    };
    let status = || async { ps.ask(PsMsg::Status, t).await.unwrap() };
    // Worker 0 pushes for version 0; its answer waits for worker 1. The
    // status asked after it proves the push was handled (same mailbox).
    let first = ps.ask(push_pull(0, 0, grads(1.0)), t);
    tokio::pin!(first);
    assert!(futures::poll!(&mut first).is_pending());
    let s = status().await;
    assert_eq!((s.version, s.rejected), (0, 0));
    assert!(
        futures::poll!(&mut first).is_pending(),
        "answered before every worker pushed"
    );
    // A malformed push from worker 1 is counted and answered at once with
    // version 0; it does not count as worker 1's push.
    match ps
        .ask(push_pull(1, 0, vec![vec![0.0; 12]]), t)
        .await
        .unwrap()
    {
        Params { version: 0, .. } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(status().await.rejected, 1);
    assert!(futures::poll!(&mut first).is_pending());
    // Worker 1's real push completes version 0: both get version 1, the
    // initial parameters minus lr times the average gradient (1 and 3).
    let second = ps.ask(push_pull(1, 0, grads(3.0)), t).await.unwrap();
    let first = first.await.unwrap();
    let init = model.init(0);
    for reply in [first, second] {
        match reply {
            Params { version: 1, params } => {
                for (p, i) in params.iter().zip(&init) {
                    for (v, w) in p.values.iter().zip(&i.values) {
                        assert!((v - (w - 0.1 * 2.0)).abs() < 1e-6, "{v} vs {w}");
                    }
                }
            }
            other => panic!("{other:?}"),
        }
    }
    // A stale push (version 0 again) is dropped, counted, and answered with
    // the current version without waiting.
    match ps.ask(push_pull(0, 0, grads(9.0)), t).await.unwrap() {
        Params { version: 1, .. } => {}
        other => panic!("{other:?}"),
    }
    let s = status().await;
    assert_eq!((s.version, s.rejected, s.samples), (1, 2, 8));
}

/// `data.standardize` and `training.lr_decay = "cosine"` in a real job:
/// the run directory keeps the statistics, the saved model (what serving
/// loads) has them folded in and classifies raw features with the job's
/// test accuracy; the cosine rate changes what the parameter server
/// computes; a damaged statistics file is an error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standardized_cosine_job_saves_a_model_that_serves_raw_features() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |decay: &'static str, dir: std::path::PathBuf| {
        let cfg = config(&format!(
            "standardize = true\n[model]\nhidden = [32]\n[training]\nepochs = 3\nlr = 0.003\nlr_decay = \"{decay}\"\n[checkpoint]\ndir = {:?}\nevery = 0\n",
            dir.display().to_string()
        ));
        async move {
            let report = manta_ml::train(&cfg, Env::InProcess, |_| {}).await.unwrap();
            (cfg, report)
        }
    };
    let (cfg, report) = run("cosine", tmp.path().join("cos")).await;
    let run_dir = std::path::PathBuf::from(report.checkpoint.clone().unwrap());
    assert!(run_dir.join(manta_ml::ps::INPUT_FILE).is_file());
    let saved = manta_ml::ps::load_saved_model(&run_dir, 1 << 30).unwrap();
    let raw = manta_ml::DatasetSpec {
        standardize: false,
        ..cfg.data.clone()
    };
    let (_, raw_test) = raw.load_split().unwrap();
    let device = Default::default();
    let m = manta_ml::Mlp::<CpuBackend>::from_params(&saved.model, &saved.params, &device).unwrap();
    let served = manta_ml::model::accuracy(&m, &raw_test, &device).unwrap();
    assert!(report.test_accuracy > 0.85, "{report:?}");
    assert!(
        (served - report.test_accuracy).abs() <= 1.5 / raw_test.len() as f32,
        "served on raw features {served}, the job's test accuracy {}",
        report.test_accuracy
    );
    // Without the decay the same job ends elsewhere.
    let (_, flat) = run("none", tmp.path().join("flat")).await;
    let flat = manta_ml::ps::load_saved_model(
        std::path::Path::new(flat.checkpoint.as_deref().unwrap()),
        1 << 30,
    )
    .unwrap();
    assert_eq!(flat.version, saved.version);
    assert!(max_diff(&flat.params, &saved.params) > 1e-4);
    // A damaged statistics file is named, never silently ignored.
    std::fs::write(
        run_dir.join(manta_ml::ps::INPUT_FILE),
        b"{\"standardize\": 1}",
    )
    .unwrap();
    let e = manta_ml::ps::load_saved_model(&run_dir, 1 << 30)
        .unwrap_err()
        .to_string();
    assert!(e.contains(manta_ml::ps::INPUT_FILE), "{e}");
}
