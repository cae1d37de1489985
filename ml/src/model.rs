//! The model: a multi-layer perceptron generic over the burn backend, and
//! its parameters as plain vectors (what parameter servers store and ship).

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::error::MlError;
use crate::rng::SplitMix64;

/// The shape of an MLP: inputs, hidden layer sizes, classes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Features per row.
    pub inputs: usize,
    /// Hidden layer widths (ReLU after each).
    pub hidden: Vec<usize>,
    /// Output classes.
    pub classes: usize,
}

/// One named parameter tensor, flattened row-major.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamTensor {
    /// `layers.{i}.weight` or `layers.{i}.bias`.
    pub name: String,
    /// Its shape (`[inputs, outputs]` for weights, as burn stores them).
    pub shape: Vec<usize>,
    /// Its values.
    #[serde(with = "crate::wire::f32s")]
    pub values: Vec<f32>,
}

impl ModelSpec {
    /// Layer widths from input to output.
    pub fn widths(&self) -> Vec<usize> {
        let mut w = vec![self.inputs];
        w.extend(&self.hidden);
        w.push(self.classes);
        w
    }

    /// Checks that every width is positive.
    pub fn validate(&self) -> Result<(), MlError> {
        if self.widths().contains(&0) {
            return Err(MlError::Config(format!(
                "model layer sizes must be positive, got {:?}",
                self.widths()
            )));
        }
        Ok(())
    }

    /// Names and shapes of every parameter, in order.
    pub fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        let w = self.widths();
        let mut out = Vec::new();
        for (i, pair) in w.windows(2).enumerate() {
            out.push((format!("layers.{i}.weight"), vec![pair[0], pair[1]]));
            out.push((format!("layers.{i}.bias"), vec![pair[1]]));
        }
        out
    }

    /// Total number of scalar parameters.
    pub fn param_count(&self) -> usize {
        self.shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// Seeded initial parameters: uniform in ±1/sqrt(fan_in), burn's (and
    /// PyTorch's) default for linear layers.
    pub fn init(&self, seed: u64) -> Vec<ParamTensor> {
        self.shapes()
            .into_iter()
            .enumerate()
            .map(|(i, (name, shape))| {
                let fan_in = self.widths()[i / 2] as f32;
                let bound = 1.0 / fan_in.sqrt();
                let mut g = SplitMix64::derive(seed, &[10, i as u64]);
                let n: usize = shape.iter().product();
                let values = (0..n).map(|_| (g.unit_f32() * 2.0 - 1.0) * bound).collect();
                ParamTensor {
                    name,
                    shape,
                    values,
                }
            })
            .collect()
    }

    /// Checks that `params` fit this model (count and shapes).
    pub fn check(&self, params: &[ParamTensor]) -> Result<(), MlError> {
        let shapes = self.shapes();
        if shapes.len() != params.len() {
            return Err(MlError::Shape {
                what: "parameter count".into(),
                expected: vec![shapes.len()],
                actual: vec![params.len()],
            });
        }
        for ((name, shape), p) in shapes.iter().zip(params) {
            if *shape != p.shape || p.values.len() != shape.iter().product::<usize>() {
                return Err(MlError::Shape {
                    what: name.clone(),
                    expected: shape.clone(),
                    actual: if p.shape.iter().product::<usize>() == p.values.len() {
                        p.shape.clone()
                    } else {
                        vec![p.values.len()]
                    },
                });
            }
        }
        Ok(())
    }
}

/// Folds a standardization of the inputs into the first layer of `params`
/// (which fit `spec`): the model then takes raw features and answers what
/// it answered for standardized ones. With the first layer `y = x W + b`
/// and `x' = (x - m) / s`: `W'[i][j] = W[i][j] / s[i]` and
/// `b'[j] = b[j] - Σ_i m[i] W[i][j] / s[i]`.
pub fn fold_standardization(
    spec: &ModelSpec,
    params: &mut [ParamTensor],
    input: &crate::data::Standardization,
) -> Result<(), MlError> {
    spec.check(params)?;
    input
        .check(spec.inputs)
        .map_err(|e| MlError::Config(format!("input standardization: {e}")))?;
    let [weight, bias, ..] = params else {
        // `check` passed: every model has at least one layer (weight, bias).
        return Err(MlError::Config("the model has no layer".into()));
    };
    let outputs = bias.values.len();
    for (i, row) in weight.values.chunks_mut(outputs).enumerate() {
        let (m, sd) = (input.mean[i], input.sd[i]);
        for (w, b) in row.iter_mut().zip(bias.values.iter_mut()) {
            *w /= sd;
            *b -= m * *w;
        }
    }
    Ok(())
}

/// A multi-layer perceptron with ReLU activations.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// The linear layers, input to output.
    pub layers: Vec<Linear<B>>,
}

impl<B: Backend> Mlp<B> {
    /// Builds the model from parameter values (checked against `spec`).
    pub fn from_params(
        spec: &ModelSpec,
        params: &[ParamTensor],
        device: &B::Device,
    ) -> Result<Self, MlError> {
        Self::from_owned_params(spec, params.to_vec(), device)
    }

    /// [`Mlp::from_params`], taking the values without copying them.
    pub fn from_owned_params(
        spec: &ModelSpec,
        params: Vec<ParamTensor>,
        device: &B::Device,
    ) -> Result<Self, MlError> {
        spec.check(&params)?;
        let mut it = params.into_iter();
        let mut layers = Vec::with_capacity(spec.hidden.len() + 1);
        while let (Some(w), Some(b)) = (it.next(), it.next()) {
            let [rows, cols] = [w.shape[0], w.shape[1]];
            let bias_len = b.shape[0];
            let w = Tensor::<B, 2>::from_data(TensorData::new(w.values, [rows, cols]), device);
            let b = Tensor::<B, 1>::from_data(TensorData::new(b.values, [bias_len]), device);
            layers.push(Linear {
                weight: Param::from_tensor(w),
                bias: Some(Param::from_tensor(b)),
            });
        }
        Ok(Self { layers })
    }

    /// Logits for a batch of rows.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let last = self.layers.len() - 1;
        let mut h = x;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(h);
            if i < last {
                h = burn::tensor::activation::relu(h);
            }
        }
        h
    }

    /// The parameter values, in [`ModelSpec::shapes`] order.
    pub fn to_params(&self) -> Vec<ParamTensor> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let w = l.weight.val();
            out.push(ParamTensor {
                name: format!("layers.{i}.weight"),
                shape: w.dims().to_vec(),
                values: tensor_values(w),
            });
            if let Some(b) = &l.bias {
                let b = b.val();
                out.push(ParamTensor {
                    name: format!("layers.{i}.bias"),
                    shape: b.dims().to_vec(),
                    values: tensor_values(b),
                });
            }
        }
        out
    }
}

fn tensor_values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    let data = t.into_data().convert::<f32>();
    // `convert::<f32>` makes the element type f32, so reading it as f32
    // cannot fail.
    #[allow(clippy::expect_used)]
    data.into_vec::<f32>()
        .expect("tensor data converted to f32")
}

/// Features and labels of `rows` rows as tensors.
pub fn batch_tensors<B: Backend>(
    features: &[f32],
    labels: &[u32],
    cols: usize,
    device: &B::Device,
) -> Result<(Tensor<B, 2>, Tensor<B, 1, Int>), MlError> {
    let rows = labels.len();
    if features.len() != rows * cols {
        return Err(MlError::Shape {
            what: "batch features".into(),
            expected: vec![rows, cols],
            actual: vec![features.len()],
        });
    }
    let x = Tensor::<B, 2>::from_data(TensorData::new(features.to_vec(), [rows, cols]), device);
    let y = Tensor::<B, 1, Int>::from_data(
        TensorData::new(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [rows]),
        device,
    );
    Ok((x, y))
}

/// Mean cross-entropy loss of a batch and the gradient of every parameter,
/// in [`ModelSpec::shapes`] order.
pub fn loss_and_grads<B: AutodiffBackend>(
    model: &Mlp<B>,
    features: &[f32],
    labels: &[u32],
    cols: usize,
    device: &B::Device,
) -> Result<(f32, Vec<Vec<f32>>), MlError> {
    let (x, y) = batch_tensors::<B>(features, labels, cols, device)?;
    let logits = model.forward(x);
    let loss = CrossEntropyLossConfig::new()
        .init(device)
        .forward(logits, y);
    let loss_value = tensor_values(loss.clone().detach())[0];
    let mut grads = loss.backward();
    let mut out = Vec::new();
    // Gradients are *removed* from the container: a tensor still shared
    // with it cannot be read without a copy, and burn-ndarray then copies
    // element by element (it was ~40% of a training step's CPU time).
    for l in &model.layers {
        let w = l.weight.val();
        let n = w.dims().iter().product();
        out.push(
            w.grad_remove(&mut grads)
                .map(tensor_values)
                .unwrap_or_else(|| vec![0.0; n]),
        );
        if let Some(b) = &l.bias {
            let b = b.val();
            let n = b.dims()[0];
            out.push(
                b.grad_remove(&mut grads)
                    .map(tensor_values)
                    .unwrap_or_else(|| vec![0.0; n]),
            );
        }
    }
    Ok((loss_value, out))
}

/// Fraction of `data`'s rows whose predicted class is right.
pub fn accuracy<B: Backend>(
    model: &Mlp<B>,
    data: &Dataset,
    device: &B::Device,
) -> Result<f32, MlError> {
    if data.is_empty() {
        return Ok(0.0);
    }
    let (x, _) = batch_tensors::<B>(&data.features, &data.labels, data.cols, device)?;
    let pred = model.forward(x).argmax(1);
    let pred: Vec<i64> = {
        let d = pred.into_data().convert::<i64>();
        // Converted to i64 just above.
        #[allow(clippy::expect_used)]
        d.into_vec::<i64>().expect("predictions converted to i64")
    };
    let right = pred
        .iter()
        .zip(&data.labels)
        .filter(|(p, l)| **p == **l as i64)
        .count();
    Ok(right as f32 / data.len() as f32)
}
