//! What a replica runs: a [`Model`] mapping rows of `f32` features to rows
//! of `f32` outputs, and the digits MLP from a manta-ml checkpoint.

use std::path::Path;
use std::sync::Arc;

use burn::backend::NdArray;
use burn::backend::ndarray::NdArrayDevice;
use burn::tensor::{Tensor, TensorData};
use manta_ml::{Mlp, ModelSpec, ParamTensor};

/// A model a replica runs on batches: `rows` rows of
/// [`features`](Model::features) values in, `rows` rows of
/// [`outputs`](Model::outputs) values out, both row-major.
pub trait Model: Send + 'static {
    /// Values per input row.
    fn features(&self) -> usize;
    /// Values per output row (logits, one per class).
    fn outputs(&self) -> usize;
    /// Runs one batch. `input.len()` is `rows * features()`; the answer
    /// must hold `rows * outputs()` values.
    fn infer(&mut self, input: &[f32], rows: usize) -> Result<Vec<f32>, String>;
    /// Whether `infer` may run on a runtime thread when its calls are
    /// short (a few tens of microseconds: the replica measures them and
    /// falls back to tokio's blocking pool at the first longer one).
    /// `false` for a model that blocks on something else (another
    /// deployment, a lock, I/O): it always runs on the blocking pool.
    fn may_run_inline(&self) -> bool {
        true
    }
}

/// Builds a replica's model (each replica builds its own).
pub type ModelFactory = Arc<dyn Fn() -> Result<Box<dyn Model>, String> + Send + Sync>;

/// The MLP of manta-ml on burn's CPU backend.
pub struct MlpModel {
    spec: ModelSpec,
    mlp: Mlp<NdArray>,
    device: NdArrayDevice,
}

impl MlpModel {
    /// The model from its parameters (checked against `spec`).
    pub fn new(spec: &ModelSpec, params: Vec<ParamTensor>) -> Result<Self, manta_ml::MlError> {
        let device = NdArrayDevice::Cpu;
        let mlp = Mlp::<NdArray>::from_owned_params(spec, params, &device)?;
        Ok(Self {
            spec: spec.clone(),
            mlp,
            device,
        })
    }
}

impl Model for MlpModel {
    fn features(&self) -> usize {
        self.spec.inputs
    }

    fn outputs(&self) -> usize {
        self.spec.classes
    }

    fn infer(&mut self, input: &[f32], rows: usize) -> Result<Vec<f32>, String> {
        let x = Tensor::<NdArray, 2>::from_data(
            TensorData::new(input.to_vec(), [rows, self.spec.inputs]),
            &self.device,
        );
        let y = self.mlp.forward(x);
        y.into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| format!("reading the model's output: {e:?}"))
    }
}

/// The maximum size of one checkpoint file a deployment reads (1 GiB).
pub const MAX_CHECKPOINT_BYTES: u64 = 1 << 30;

/// A factory of MLP replicas sharing `params` (kept in memory: a new
/// replica, a cold start included, copies them and builds the layers,
/// milliseconds for the digits model). Checks once that they build.
pub fn mlp_factory(
    spec: ModelSpec,
    params: Vec<ParamTensor>,
) -> Result<ModelFactory, manta_ml::MlError> {
    mlp_factory_shared(spec, Arc::new(params))
}

/// An MLP's shape and parameters as loaded: what replicas on other nodes
/// are sent ([`crate::remote`]).
#[derive(Debug, Clone)]
pub struct MlpWeights {
    /// The shape.
    pub spec: ModelSpec,
    /// The parameters.
    pub params: Arc<Vec<ParamTensor>>,
}

/// [`mlp_factory`] over parameters already shared.
pub fn mlp_factory_shared(
    spec: ModelSpec,
    params: Arc<Vec<ParamTensor>>,
) -> Result<ModelFactory, manta_ml::MlError> {
    MlpModel::new(&spec, params.to_vec())?;
    Ok(Arc::new(move || {
        MlpModel::new(&spec, params.to_vec())
            .map(|m| Box::new(m) as Box<dyn Model>)
            .map_err(|e| e.to_string())
    }))
}

/// A factory for MLP replicas from the best trial of the tuner experiment
/// in `dir` (its newest checkpoint; see
/// [`manta_ml::tune::store::best_checkpoint`]), and that trial. Errors
/// name the directory: no store, no finished trial, no checkpoint, a
/// checkpoint that is not a digits MLP.
pub fn mlp_from_experiment(
    dir: &Path,
) -> Result<(ModelFactory, manta_ml::tune::store::BestCheckpoint), manta_ml::tune::TuneError> {
    let best = manta_ml::tune::store::best_checkpoint(dir)?;
    let (spec, params) = manta_ml::tune::digits::checkpoint_model(&best.checkpoint)?;
    let factory = mlp_factory(spec, params)?;
    Ok((factory, best))
}

/// A factory for MLP replicas from the checkpoints under `dir` (a
/// training run's directory or the configured checkpoint directory, see
/// [`manta_ml::ps::load_saved_model`]); the file is read once, here.
/// Answers the factory and the checkpoint's version.
pub fn mlp_from_checkpoint(dir: &Path) -> Result<(ModelFactory, u64), manta_ml::MlError> {
    let saved = manta_ml::ps::load_saved_model(dir, MAX_CHECKPOINT_BYTES)?;
    let factory = mlp_factory(saved.model, saved.params)?;
    Ok((factory, saved.version))
}

/// [`mlp_from_checkpoint`], with the weights (for replicas on other
/// nodes).
pub fn mlp_weights_from_checkpoint(
    dir: &Path,
) -> Result<(ModelFactory, MlpWeights, u64), manta_ml::MlError> {
    let saved = manta_ml::ps::load_saved_model(dir, MAX_CHECKPOINT_BYTES)?;
    let weights = MlpWeights {
        spec: saved.model,
        params: Arc::new(saved.params),
    };
    let factory = mlp_factory_shared(weights.spec.clone(), Arc::clone(&weights.params))?;
    Ok((factory, weights, saved.version))
}

/// [`mlp_from_experiment`], with the weights (for replicas on other
/// nodes).
pub fn mlp_weights_from_experiment(
    dir: &Path,
) -> Result<
    (
        ModelFactory,
        MlpWeights,
        manta_ml::tune::store::BestCheckpoint,
    ),
    manta_ml::tune::TuneError,
> {
    let best = manta_ml::tune::store::best_checkpoint(dir)?;
    let (spec, params) = manta_ml::tune::digits::checkpoint_model(&best.checkpoint)?;
    let weights = MlpWeights {
        spec,
        params: Arc::new(params),
    };
    let factory = mlp_factory_shared(weights.spec.clone(), Arc::clone(&weights.params))?;
    Ok((factory, weights, best))
}
