//! Composition: a deployment whose replicas call another deployment
//! through its handle (e.g. preprocess -> model).
//!
//! [`chain`] wraps a first stage's [`ModelFactory`] so that each replica
//! runs its stage, then sends the rows to the `next` [`Deployment`] and
//! answers that deployment's outputs. The call goes through `next`'s
//! router, bounded queue and batching like any other request: a full
//! `next` refuses (the chained batch fails with the reason) rather than
//! queueing without bound. The replica's model runs on tokio's blocking
//! pool, so waiting for `next` there blocks that thread only, never a
//! runtime worker.

use crate::deployment::Deployment;
use crate::model::{Model, ModelFactory};

/// The first stage's factory, chained into `next`: replicas take
/// `first`'s inputs and answer `next`'s outputs. `handle` is the runtime
/// `next` runs on (`tokio::runtime::Handle::current()` where the
/// deployments are started).
pub fn chain(
    first: ModelFactory,
    next: Deployment,
    handle: tokio::runtime::Handle,
) -> ModelFactory {
    std::sync::Arc::new(move || {
        let stage = first()?;
        if stage.outputs() != next.features() {
            return Err(format!(
                "chain into {}:{}: the first stage answers {} values per row, the next takes {}",
                next.model(),
                next.version(),
                stage.outputs(),
                next.features()
            ));
        }
        Ok(Box::new(Chained {
            stage,
            next: next.clone(),
            handle: handle.clone(),
        }) as Box<dyn Model>)
    })
}

struct Chained {
    stage: Box<dyn Model>,
    next: Deployment,
    handle: tokio::runtime::Handle,
}

impl Model for Chained {
    fn features(&self) -> usize {
        self.stage.features()
    }

    fn outputs(&self) -> usize {
        self.next.outputs()
    }

    /// It waits for `next` (`Handle::block_on`), which a runtime thread
    /// must not do.
    fn may_run_inline(&self) -> bool {
        false
    }

    fn infer(&mut self, input: &[f32], rows: usize) -> Result<Vec<f32>, String> {
        let mid = self.stage.infer(input, rows)?;
        self.handle
            .block_on(self.next.infer(mid, rows))
            .map_err(|e| e.to_string())
    }
}

/// A first stage that maps every value to `x * scale + offset`
/// (`features` values per row in and out): what a config's
/// `preprocess` builds.
pub fn affine(features: usize, scale: f32, offset: f32) -> ModelFactory {
    std::sync::Arc::new(move || {
        Ok(Box::new(Affine {
            features,
            scale,
            offset,
        }) as Box<dyn Model>)
    })
}

struct Affine {
    features: usize,
    scale: f32,
    offset: f32,
}

impl Model for Affine {
    fn features(&self) -> usize {
        self.features
    }

    fn outputs(&self) -> usize {
        self.features
    }

    fn infer(&mut self, input: &[f32], _rows: usize) -> Result<Vec<f32>, String> {
        Ok(input.iter().map(|x| x * self.scale + self.offset).collect())
    }
}
