//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use stab_models::LossModel;

/// The plain (non-autodiff) CPU device.
pub fn cpu() -> Device {
    Device::flex()
}

/// One AdamW step; returns the new model and the loss before the step.
pub fn train_step<M: LossModel>(
    model: M,
    optim: &mut ModuleOptimizer,
    batch: &M::Batch,
    lr: f64,
) -> (M, f32) {
    let loss = model.loss(batch);
    let value = loss.clone().into_scalar::<f32>();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    (optim.step(lr, model, grads), value)
}

/// Value of a one-element loss tensor.
pub fn scalar(loss: Tensor<1>) -> f32 {
    loss.into_scalar::<f32>()
}

/// `/work/shared/data` seen from this crate: `<workspace>/../shared/data`.
pub fn shared_data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}
