//! What a parameter server refuses: messages naming a worker outside its
//! job, repeats within a sync round, checkpoints that do not fit the model
//! (wrong lengths, oversized, truncated) and updates past the end of its
//! version or Adam step counters. Every test goes through a real shard actor
//! and, for checkpoints, real files in a temporary directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use manta_actors::{ActorHandle, ActorSystem};
use manta_ml::optim::SlotState;
use manta_ml::ps::{CheckpointSpec, Gradients, Mode, ParamServer, Params, PsArgs, PsMsg, Pushed};
use manta_ml::{ModelSpec, OptimizerConfig, ParamTensor};
use serde::{Deserialize, Serialize};

const T: Duration = Duration::from_secs(10);

/// A 4-3-2 MLP: `layers.0.weight` (12 values), `layers.0.bias` (3),
/// `layers.1.weight` (6), `layers.1.bias` (2).
fn model() -> ModelSpec {
    ModelSpec {
        inputs: 4,
        hidden: vec![3],
        classes: 2,
    }
}

/// One sync shard over [`model`] at lr 0.1.
fn args(optimizer: OptimizerConfig, workers: u32, checkpoint: Option<&Path>) -> PsArgs {
    PsArgs {
        shard: 0,
        shards: 1,
        model: model(),
        init_seed: 0,
        optimizer,
        lr: 0.1,
        mode: Mode::Sync,
        workers,
        checkpoint: checkpoint.map(|dir| CheckpointSpec {
            dir: dir.to_path_buf(),
            every: 0,
            keep: 10,
            resume: true,
        }),
        lr_decay: Default::default(),
        steps_per_epoch: 0,
        epochs: 0,
        input: None,
    }
}

async fn spawn(system: &ActorSystem, args: PsArgs) -> ActorHandle<PsMsg> {
    system.spawn(ParamServer::new(args)).await.unwrap()
}

/// A gradient of `v` everywhere, shaped for [`model`].
fn grads(v: f32) -> Vec<Vec<f32>> {
    vec![vec![v; 12], vec![v; 3], vec![v; 6], vec![v; 2]]
}

fn gradients(worker: u32, version: u64, v: f32) -> Gradients {
    Gradients {
        worker,
        version,
        grads: grads(v),
        loss: 1.0,
        samples: 4,
    }
}

async fn push(ps: &ActorHandle<PsMsg>, g: Gradients) -> Result<Pushed, String> {
    ps.ask(|r| PsMsg::Push(g, r), T)
        .await
        .expect("the parameter server answers a push (it is alive)")
}

async fn status(ps: &ActorHandle<PsMsg>) -> manta_ml::ps::PsStatus {
    ps.ask(PsMsg::Status, T).await.unwrap()
}

/// A two-worker job's shard takes pushes, push-pulls and worker-done
/// messages only from workers 0 and 1; anything naming another id is
/// refused (with an error where the message has a reply) and counted, and
/// never completes a round or the job. Within a round a worker counts once:
/// its first push is the one averaged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parameter_server_counts_only_the_workers_of_its_job_and_each_once() {
    let system = ActorSystem::new();
    let ps = spawn(&system, args(OptimizerConfig::sgd(0.0), 2, None)).await;
    // Worker 7 is not one of the job's two: refused, nothing held for it.
    match push(&ps, gradients(7, 0, 100.0)).await {
        Err(why) => assert!(
            why.contains("worker 7") && why.contains("workers 0..2"),
            "{why}"
        ),
        other => panic!("a push from worker 7 was taken: {other:?}"),
    }
    // Worker 0's push is held for worker 1's.
    assert_eq!(
        push(&ps, gradients(0, 0, 1.0)).await,
        Ok(Pushed {
            accepted: true,
            version: 0
        })
    );
    // The observer id (u32::MAX) cannot push either: a push-pull from it is
    // refused and answered at once with the current parameters.
    let g = gradients(u32::MAX, 0, 100.0);
    match ps.ask(|r| PsMsg::PushPull(g, r), T).await.unwrap() {
        Params { version: 0, .. } => {}
        other => panic!("{other:?}"),
    }
    // A second push of worker 0 for the same round does not replace or add
    // to its first.
    match push(&ps, gradients(0, 0, 5.0)).await {
        Err(why) => assert!(
            why.contains("worker 0") && why.contains("already pushed for version 0"),
            "{why}"
        ),
        other => panic!("a repeated push was taken: {other:?}"),
    }
    // Done messages: an outsider's is refused, worker 0's counts once.
    for worker in [9, 0, 0] {
        ps.tell(PsMsg::WorkerDone { worker }).unwrap();
    }
    let s = status(&ps).await;
    assert_eq!(s.version, 0, "no round completed without worker 1");
    assert_eq!((s.done_workers, s.done), (1, false));
    assert_eq!(
        (s.foreign, s.duplicates, s.rejected),
        (3, 2, 3),
        "foreign: push 7, push-pull u32::MAX, done 9; duplicates: push and done of worker 0; rejected: the three refused pushes"
    );
    // Worker 1 completes the round: the average of worker 0's first
    // gradient (1) and worker 1's (3).
    assert_eq!(
        push(&ps, gradients(1, 0, 3.0)).await,
        Ok(Pushed {
            accepted: true,
            version: 1
        })
    );
    let Params { version, params } = ps
        .ask(
            |reply| PsMsg::Pull {
                worker: 0,
                min_version: 1,
                reply,
            },
            T,
        )
        .await
        .unwrap();
    assert_eq!(version, 1);
    for (p, i) in params.iter().zip(&model().init(0)) {
        for (v, w) in p.values.iter().zip(&i.values) {
            assert!((v - (w - 0.1 * 2.0)).abs() < 1e-6, "{v} vs {w}");
        }
    }
    let s = status(&ps).await;
    assert_eq!(s.samples, 8, "two pushes of 4 rows behind the update");
}

/// The checkpoint layout, field for field (postcard is positional).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointFile {
    magic: String,
    model: ModelSpec,
    shard: u32,
    shards: u32,
    version: u64,
    samples: u64,
    params: Vec<ParamTensor>,
    optimizer: Vec<Option<SlotState>>,
}

fn read(path: &Path) -> CheckpointFile {
    postcard::from_bytes(&std::fs::read(path).unwrap()).unwrap()
}

fn write(path: &Path, file: &CheckpointFile) {
    std::fs::write(path, postcard::to_allocvec(file).unwrap()).unwrap();
}

/// Trains a fresh shard of `args` two sync steps (one worker), writing a
/// checkpoint after each: the paths of version 1's and version 2's.
async fn two_checkpoints(system: &ActorSystem, args: PsArgs) -> (PathBuf, PathBuf) {
    let ps = spawn(system, args).await;
    let mut paths = Vec::new();
    for version in 0..2 {
        assert!(
            push(&ps, gradients(0, version, 0.5 + version as f32))
                .await
                .is_ok_and(|p| p.accepted)
        );
        let path = ps.ask(PsMsg::Checkpoint, T).await.unwrap().unwrap();
        paths.push(PathBuf::from(path));
    }
    ps.stop(manta_actors::ExitReason::Normal);
    (paths.remove(0), paths.remove(0))
}

fn adam_moments(slot: &mut Option<SlotState>) -> (&mut i32, &mut Vec<f32>, &mut Vec<f32>) {
    match slot {
        Some(SlotState::Adam {
            time,
            moment1,
            moment2,
        }) => (time, moment1, moment2),
        other => panic!("not an Adam slot: {other:?}"),
    }
}

type Corruption = (
    &'static str,
    fn(&mut CheckpointFile),
    &'static [&'static str],
);

/// Each corruption of the newest checkpoint is refused when a shard starts
/// (the error names the file, the tensor or vector, and the lengths
/// expected and found); the shard resumes from the older, intact one and
/// keeps training.
async fn refuses_each(optimizer: OptimizerConfig, cases: &[Corruption]) {
    let dir = tempfile::tempdir().unwrap();
    let system = ActorSystem::new();
    let a = args(optimizer, 1, Some(dir.path()));
    let (_v1, v2) = two_checkpoints(&system, a.clone()).await;
    let intact = read(&v2);
    for (what, corrupt, expect) in cases {
        let mut file = intact.clone();
        corrupt(&mut file);
        write(&v2, &file);
        let ps = spawn(&system, a.clone()).await;
        let s = status(&ps).await;
        assert_eq!(
            s.restored_from,
            Some(1),
            "{what}: resumed from the intact checkpoint"
        );
        let why = s.refused_checkpoints.join("\n");
        assert!(
            why.contains(&v2.display().to_string()),
            "{what}: the error names the file: {why}"
        );
        for e in *expect {
            assert!(why.contains(e), "{what}: `{e}` missing from: {why}");
        }
        // Still serving: the next update applies.
        assert_eq!(
            push(&ps, gradients(0, s.version, 1.0)).await,
            Ok(Pushed {
                accepted: true,
                version: s.version + 1
            }),
            "{what}"
        );
        ps.stop(manta_actors::ExitReason::Normal);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adam_checkpoint_whose_vectors_do_not_fit_the_model_is_refused() {
    refuses_each(
        OptimizerConfig::adam(),
        &[
            (
                "a parameter one value short",
                |f| {
                    f.params[1].values.pop();
                },
                &["layers.0.bias", "parameter values: expected 3, found 2"],
            ),
            (
                "a parameter of another shape, same size",
                |f| f.params[2].shape = vec![2, 3],
                &["layers.1.weight", "shape: expected [3, 2], found [2, 3]"],
            ),
            (
                "a first moment one value short",
                |f| {
                    adam_moments(&mut f.optimizer[2]).1.pop();
                },
                &["layers.1.weight", "moment1: expected 6, found 5"],
            ),
            (
                "a second moment one value long",
                |f| adam_moments(&mut f.optimizer[0]).2.push(0.5),
                &["layers.0.weight", "moment2: expected 12, found 13"],
            ),
            (
                "a negative step count",
                |f| *adam_moments(&mut f.optimizer[3]).0 = -3,
                &["layers.1.bias", "step count -3"],
            ),
            (
                "SGD state in an Adam shard",
                |f| f.optimizer[1] = Some(SlotState::Sgd { velocity: None }),
                &["layers.0.bias", "SGD state", "Adam"],
            ),
            (
                "a tensor missing",
                |f| {
                    f.params.pop();
                },
                &["parameter tensors: expected 4, found 3"],
            ),
        ],
    )
    .await;
}

/// A momentum velocity of the wrong length used to be restored and then
/// panic the shard (`copy_from_slice`) on the next push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_momentum_checkpoint_with_a_short_velocity_is_refused_not_a_panic_later() {
    refuses_each(
        OptimizerConfig::sgd(0.9),
        &[(
            "a velocity one value short",
            |f| match &mut f.optimizer[0] {
                Some(SlotState::Sgd { velocity: Some(v) }) => {
                    v.pop();
                }
                other => panic!("{other:?}"),
            },
            &["layers.0.weight", "velocity: expected 12, found 11"],
        )],
    )
    .await;
}

/// A checkpoint file larger than any checkpoint of this shard can be is
/// refused from its size, without being read; one with bytes after its end,
/// or cut short, is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_padded_or_truncated_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let system = ActorSystem::new();
    let a = args(OptimizerConfig::adam(), 1, Some(dir.path()));
    let (_v1, v2) = two_checkpoints(&system, a.clone()).await;
    let intact = std::fs::read(&v2).unwrap();
    let padded = |n: usize| {
        let mut b = intact.clone();
        b.resize(b.len() + n, 0);
        b
    };
    let cases: [(&str, Vec<u8>, &[&str]); 3] = [
        (
            "16 MiB of zeros after a valid checkpoint",
            padded(16 << 20),
            &["bytes, more than the", "this shard"],
        ),
        (
            "8 bytes after a valid checkpoint",
            padded(8),
            &["8 bytes after"],
        ),
        (
            "cut short",
            intact[..intact.len() / 2].to_vec(),
            &["not a readable checkpoint"],
        ),
    ];
    for (what, bytes, expect) in cases {
        std::fs::write(&v2, &bytes).unwrap();
        let ps = spawn(&system, a.clone()).await;
        let s = status(&ps).await;
        assert_eq!(s.restored_from, Some(1), "{what}");
        let why = s.refused_checkpoints.join("\n");
        assert!(why.contains(&v2.display().to_string()), "{what}: {why}");
        for e in expect {
            assert!(why.contains(e), "{what}: `{e}` missing from: {why}");
        }
        ps.stop(manta_actors::ExitReason::Normal);
    }
    // The intact file loads again: the bound is not below real checkpoints.
    std::fs::write(&v2, &intact).unwrap();
    let ps = spawn(&system, a).await;
    let s = status(&ps).await;
    assert_eq!((s.restored_from, s.refused_checkpoints.len()), (Some(2), 0));
}

/// A shard restored at the last version a `u64` holds, or with Adam step
/// counts at `i32::MAX`, refuses the next update with an error instead of
/// overflowing (which panicked the shard), and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_at_their_limit_refuse_the_update_instead_of_overflowing() {
    let dir = tempfile::tempdir().unwrap();
    let system = ActorSystem::new();
    let a = args(OptimizerConfig::adam(), 1, Some(dir.path()));
    let (_v1, v2) = two_checkpoints(&system, a.clone()).await;
    let intact = read(&v2);

    let mut at_max = intact.clone();
    at_max.version = u64::MAX;
    write(&v2, &at_max);
    let ps = spawn(&system, a.clone()).await;
    assert_eq!(status(&ps).await.restored_from, Some(u64::MAX));
    match push(&ps, gradients(0, u64::MAX, 1.0)).await {
        Err(why) => assert!(why.contains("version") && why.contains("overflow"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(status(&ps).await.version, u64::MAX, "still serving");
    ps.stop(manta_actors::ExitReason::Normal);

    let mut steps_max = intact;
    for slot in &mut steps_max.optimizer {
        *adam_moments(slot).0 = i32::MAX;
    }
    write(&v2, &steps_max);
    let ps = spawn(&system, a).await;
    assert_eq!(status(&ps).await.restored_from, Some(2));
    match push(&ps, gradients(0, 2, 1.0)).await {
        Err(why) => assert!(
            why.contains("Adam step count") && why.contains("overflow"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    let s = status(&ps).await;
    assert_eq!(s.version, 2, "nothing applied");
    // The parameters are those of the checkpoint, untouched by the refusal.
    let Params { params, .. } = ps
        .ask(
            |reply| PsMsg::Pull {
                worker: 0,
                min_version: 0,
                reply,
            },
            T,
        )
        .await
        .unwrap();
    assert_eq!(*params, read(&v2).params);
}

/// Serving from a checkpoint directory whose newest run was stopped before
/// its first save (an empty `run-*`, as Ctrl-C leaves it) reads the newest
/// run that has a checkpoint in every shard; with none, the error names
/// the directory.
#[test]
fn an_empty_newest_run_is_passed_over_for_the_newest_complete_one() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = manta_ml::ModelSpec {
        inputs: 4,
        hidden: vec![3],
        classes: 2,
    };
    let params = spec.init(5);
    manta_ml::ps::save_model(&tmp.path().join("run-0001"), &spec, &params, 9).unwrap();
    std::fs::create_dir_all(tmp.path().join("run-0002")).unwrap();
    std::fs::create_dir_all(tmp.path().join("run-0003/ps-0-of-1")).unwrap();
    let saved = manta_ml::ps::load_saved_model(tmp.path(), 1 << 20).unwrap();
    assert_eq!((saved.version, saved.params), (9, params));
    std::fs::remove_dir_all(tmp.path().join("run-0001")).unwrap();
    let e = manta_ml::ps::load_saved_model(tmp.path(), 1 << 20)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("run-0003") && e.contains("no run-* directory holds a checkpoint"),
        "{e}"
    );
}
