//! The single-process burn training loop: the baseline that synchronous
//! parameter-server training must reproduce, and the anchor of the training
//! benchmarks. It uses burn's own optimizers (`burn::optim`), not Manta's.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::AutodiffBackend;

use crate::data::{Batch, Dataset};
use crate::error::MlError;
use crate::model::{Mlp, ModelSpec, ParamTensor, accuracy, batch_tensors};
use crate::optim::OptimizerConfig;

/// What a reference run produced.
#[derive(Debug, Clone)]
pub struct ReferenceRun {
    /// Final parameters.
    pub params: Vec<ParamTensor>,
    /// The loss of every step.
    pub losses: Vec<f32>,
    /// Accuracy on the test set at the end.
    pub test_accuracy: f32,
    /// Wall time of the training steps.
    pub seconds: f64,
    /// Rows trained on.
    pub samples: u64,
}

/// Trains `spec` from `init` on `steps` (each step's rows, in order) with
/// burn's optimizer matching `optimizer`, on backend `B`.
pub fn train_reference<B: AutodiffBackend>(
    spec: &ModelSpec,
    init: &[ParamTensor],
    optimizer: &OptimizerConfig,
    lr: f32,
    steps: impl IntoIterator<Item = Batch>,
    test: &Dataset,
    device: &B::Device,
) -> Result<ReferenceRun, MlError> {
    let mut model = Mlp::<B>::from_params(spec, init, device)?;
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut losses = Vec::new();
    let mut samples = 0u64;
    let lr = f64::from(lr);
    let started = Instant::now();
    macro_rules! run_with {
        ($opt:expr) => {{
            let mut opt = $opt;
            for batch in steps {
                let (x, y) = batch_tensors::<B>(
                    &batch.features,
                    &batch.labels,
                    batch.cols as usize,
                    device,
                )?;
                let loss = loss_fn.forward(model.forward(x), y);
                losses.push(
                    loss.clone()
                        .into_data()
                        .convert::<f32>()
                        .to_vec::<f32>()
                        .unwrap_or_default()[0],
                );
                samples += batch.rows() as u64;
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = opt.step(lr, model, grads);
            }
        }};
    }
    match *optimizer {
        OptimizerConfig::Adam {
            beta1,
            beta2,
            epsilon,
            weight_decay,
        } => run_with!(
            AdamConfig::new()
                .with_beta_1(beta1)
                .with_beta_2(beta2)
                .with_epsilon(epsilon)
                .with_weight_decay(
                    (weight_decay != 0.0).then(|| WeightDecayConfig::new(weight_decay))
                )
                .init::<B, Mlp<B>>()
        ),
        OptimizerConfig::Sgd {
            momentum,
            dampening,
            nesterov,
            weight_decay,
        } => run_with!(
            SgdConfig::new()
                .with_momentum((momentum != 0.0).then(|| MomentumConfig {
                    momentum: f64::from(momentum),
                    dampening: f64::from(dampening),
                    nesterov,
                }))
                .with_weight_decay(
                    (weight_decay != 0.0).then(|| WeightDecayConfig::new(weight_decay))
                )
                .init::<B, Mlp<B>>()
        ),
    }
    let seconds = started.elapsed().as_secs_f64();
    let valid = model.valid();
    let test_accuracy = accuracy(&valid, test, device)?;
    Ok(ReferenceRun {
        params: model.to_params(),
        losses,
        test_accuracy,
        seconds,
        samples,
    })
}
