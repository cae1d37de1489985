//! Devices and backends: `cpu` (burn NdArray) by default, `cuda:N`
//! (burn-cuda) behind the `cuda` feature. Training code is generic over the
//! backend; [`with_backend`] picks the concrete one at run time.

use std::fmt;
use std::str::FromStr;

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::error::MlError;

/// The CPU training backend: NdArray with autodiff.
pub type CpuBackend = burn::backend::Autodiff<burn::backend::NdArray<f32>>;

/// burn-cuda, re-exported for callers that build CUDA devices (feature `cuda`).
#[cfg(feature = "cuda")]
pub use burn_cuda;

/// The CUDA training backend (feature `cuda`).
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Autodiff<burn_cuda::Cuda<f32, i32>>;

/// Where tensors live: `cpu`, or `cuda:N` (`cuda` means `cuda:0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The CPU (burn NdArray).
    #[default]
    Cpu,
    /// NVIDIA GPU number N.
    Cuda(usize),
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse().map(DeviceSpec::Cuda).map_err(|_| {
                    format!(
                        "device `{s}`: the GPU number after `cuda:` must be a non-negative integer"
                    )
                }),
                None => Err(format!(
                    "unknown device `{s}`: expected `cpu`, `cuda` or `cuda:N`"
                )),
            },
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

/// A computation that runs on whichever backend the device needs.
pub trait OnBackend {
    /// What it produces.
    type Output;
    /// Runs on backend `B` and its device.
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

/// Runs `task` on the backend of `spec`. Asking for CUDA in a build without
/// the `cuda` feature, or on a host without a usable NVIDIA driver, is an
/// error; the CPU path never touches CUDA.
pub fn with_backend<T: OnBackend>(spec: DeviceSpec, task: T) -> Result<T::Output, MlError> {
    match spec {
        DeviceSpec::Cpu => Ok(task.run::<CpuBackend>(burn::backend::ndarray::NdArrayDevice::Cpu)),
        DeviceSpec::Cuda(n) => cuda::run(n, task),
    }
}

/// Checks that `spec` can be used here, without training anything: for CUDA
/// this loads the driver and runs one tiny kernel.
pub fn check_device(spec: DeviceSpec) -> Result<(), MlError> {
    match spec {
        DeviceSpec::Cpu => Ok(()),
        DeviceSpec::Cuda(n) => cuda::probe(n),
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::collections::BTreeMap;
    use std::panic::AssertUnwindSafe;
    use std::sync::Mutex;

    use burn::tensor::Tensor;

    use super::{CudaBackend, OnBackend};
    use crate::error::MlError;

    /// Probe results per GPU: cubecl panics (rather than returning an error)
    /// when the driver or the device is missing, so the first use of each
    /// device runs under `catch_unwind` once.
    static PROBED: Mutex<BTreeMap<usize, Result<(), String>>> = Mutex::new(BTreeMap::new());

    pub(super) fn probe(n: usize) -> Result<(), MlError> {
        let mut probed = PROBED.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = probed
            .entry(n)
            .or_insert_with(|| {
                std::panic::catch_unwind(AssertUnwindSafe(|| {
                    let device = burn_cuda::CudaDevice::new(n);
                    let t = Tensor::<CudaBackend, 1>::from_floats([1.0, 2.0], &device);
                    let s: f32 = t.sum().into_scalar();
                    s
                }))
                .map_err(|p| manta_actors::panic_text(p.as_ref()))
                .and_then(|s| {
                    if (s - 3.0).abs() < 1e-6 {
                        Ok(())
                    } else {
                        Err(format!("a test kernel computed {s} instead of 3"))
                    }
                })
            })
            .clone();
        outcome.map_err(|reason| MlError::Device {
            device: format!("cuda:{n}"),
            reason: format!(
                "no usable NVIDIA GPU {n} (driver, libraries or device missing): {reason}"
            ),
        })
    }

    pub(super) fn run<T: OnBackend>(n: usize, task: T) -> Result<T::Output, MlError> {
        probe(n)?;
        Ok(task.run::<CudaBackend>(burn_cuda::CudaDevice::new(n)))
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::OnBackend;
    use crate::error::MlError;

    fn missing(n: usize) -> MlError {
        MlError::Device {
            device: format!("cuda:{n}"),
            reason: "this build has no CUDA support; rebuild with `--features cuda`".into(),
        }
    }

    pub(super) fn probe(n: usize) -> Result<(), MlError> {
        Err(missing(n))
    }

    pub(super) fn run<T: OnBackend>(n: usize, _task: T) -> Result<T::Output, MlError> {
        Err(missing(n))
    }
}
