//! Measurements for the gradient signals: global gradient norm and gradient agreement.
//!
//! Both reduce on the device and read one small tensor back. Non-finite gradients give a
//! non-finite measurement, which the controller rejects with its own reason.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::error::{SignalError, StoreError};
use crate::running_state::RunningStateSnapshot;

/// Global L2 norm of the gradients of `model`'s trainable parameters, ‖g‖₂ = √Σ g².
///
/// # Errors
/// [`SignalError::NoGradients`] if `grads` covers no trainable parameter of `model`,
/// [`SignalError::TensorRead`] if the result cannot be read.
pub fn gradient_norm<M: Module>(grads: &GradientsParams, model: &M) -> Result<f64, SignalError> {
    let mut reducer = Reducer {
        first: grads,
        second: None,
        sums: Vec::new(),
    };
    model.visit(&mut reducer);
    let sums = reducer.finish()?;
    let values = read(sums, "gradient norm")?;
    Ok(values[0].sqrt())
}

/// Cosine similarity between two gradients of the same model, ⟨a, b⟩ / (‖a‖ ‖b‖), over the
/// trainable parameters both cover. Defined as 0 when either gradient is exactly zero (no
/// direction, no agreement), and NaN when either contains NaN or ±∞.
///
/// # Errors
/// [`SignalError::NoGradients`] if the gradients share no trainable parameter of `model`,
/// [`SignalError::TensorRead`] if the result cannot be read.
pub fn gradient_cosine<M: Module>(
    a: &GradientsParams,
    b: &GradientsParams,
    model: &M,
) -> Result<f64, SignalError> {
    let mut reducer = Reducer {
        first: a,
        second: Some(b),
        sums: Vec::new(),
    };
    model.visit(&mut reducer);
    let sums = reducer.finish()?;
    let values = read(sums, "gradient cosine")?;
    let (dot, aa, bb) = (values[0], values[1], values[2]);
    if !(dot.is_finite() && aa.is_finite() && bb.is_finite()) {
        return Ok(f64::NAN);
    }
    if aa == 0.0 || bb == 0.0 {
        return Ok(0.0);
    }
    Ok((dot / (aa.sqrt() * bb.sqrt())).clamp(-1.0, 1.0))
}

/// Size of an update, ‖θ_after − θ_before‖₂ over the trainable parameters the two models share
/// (running statistics are not parameters). The update gate judges it: a step too large for its
/// gradient (a learning-rate spike) shows here and nowhere else before the probe.
///
/// Reduces on the device and reads one number back; costs one subtraction per parameter.
///
/// # Errors
/// [`SignalError::NoGradients`] if the models share no trainable parameter,
/// [`SignalError::TensorRead`] if the result cannot be read.
pub fn update_norm<M: Module>(before: &M, after: &M) -> Result<f64, SignalError> {
    struct Collect(HashMap<ParamId, Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.insert(param.id, param.val().flatten::<1>(0, D - 1));
        }
    }
    struct Differences {
        before: HashMap<ParamId, Tensor<1>>,
        sums: Vec<Tensor<1>>,
    }
    impl ModuleVisitor for Differences {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(old) = self.before.remove(&param.id) {
                let new = param.val().flatten::<1>(0, D - 1);
                self.sums.push((new - old).square().sum());
            }
        }
    }
    let mut collect = Collect(HashMap::new());
    before.visit(&mut collect);
    let mut differences = Differences {
        before: collect.0,
        sums: Vec::new(),
    };
    after.visit(&mut differences);
    if differences.sums.is_empty() {
        return Err(SignalError::NoGradients);
    }
    let total = Tensor::cat(differences.sums, 0).sum();
    let values = read(total, "update norm")?;
    Ok(values[0].sqrt())
}

/// `after` with every trainable parameter moved back towards `before`:
/// θ_before + factor · (θ_after − θ_before), the clipped update the update gate lets through
/// once its patience is spent (`StepProtocol::update_clip`). Parameters keep their ids and
/// whether they require a gradient; running statistics and parameters `before` does not have are
/// left as `after` has them.
pub fn scale_update<M: Module>(before: &M, after: M, factor: f64) -> M {
    struct Collect(HashMap<ParamId, Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            // The values only: no autodiff graph.
            let value = param.val().inner();
            self.0.insert(param.id, value.flatten::<1>(0, D - 1));
        }
    }
    struct Scale {
        before: HashMap<ParamId, Tensor<1>>,
        factor: f64,
    }
    impl ModuleMapper for Scale {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let Some(old) = self.before.remove(&param.id) else {
                return param;
            };
            let factor = self.factor;
            param.map(|new| {
                // As the optimizer writes a parameter: computed on the inner values, then a
                // leaf again with the parameter's own settings.
                let require_grad = new.is_require_grad();
                let checkpointing = new.gradient_checkpointing_strategy();
                let new = new.inner();
                let old = old.reshape(new.shape());
                let mut scaled = Tensor::from_inner(old.clone() + (new - old).mul_scalar(factor));
                if let Some(strategy) = checkpointing {
                    scaled = scaled.with_gradient_checkpointing_strategy(strategy);
                }
                if require_grad {
                    scaled = scaled.require_grad();
                }
                scaled
            })
        }
    }
    let mut collect = Collect(HashMap::new());
    before.visit(&mut collect);
    after.map(&mut Scale {
        before: collect.0,
        factor,
    })
}

/// `grads` with every gradient of `model`'s trainable parameters multiplied by `factor`: the
/// clipped gradient the gate lets through once its patience is spent
/// (`StepProtocol::gradient_clip`).
pub fn scale_gradients<M: Module>(
    grads: GradientsParams,
    model: &M,
    factor: f64,
) -> GradientsParams {
    struct Scale {
        grads: GradientsParams,
        factor: f64,
    }
    impl ModuleVisitor for Scale {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                self.grads
                    .register::<D>(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    let mut scale = Scale { grads, factor };
    model.visit(&mut scale);
    scale.grads
}

/// Gradients of `loss(model)` computed without leaving a trace in `model`'s running statistics.
///
/// For the gradient-agreement signal a second, reference minibatch goes through the model in
/// training mode; its forward would update BatchNorm running statistics like a training step.
/// This captures them first and writes them back afterwards, so the reference costs a forward
/// and a backward but changes nothing.
///
/// # Errors
/// A [`StoreError`] if the running statistics cannot be written back.
pub fn reference_gradients<M: Module>(
    model: &M,
    loss: impl FnOnce(&M) -> Tensor<1>,
) -> Result<GradientsParams, StoreError> {
    let running = RunningStateSnapshot::capture(model);
    let grads = loss(model).backward();
    let grads = GradientsParams::from_grads(grads, model);
    running.restore(model.clone())?;
    Ok(grads)
}

/// Sums per parameter, stacked as `[n, k]` with k = 1 (Σa²) or 3 (Σab, Σa², Σb²).
struct Reducer<'a> {
    first: &'a GradientsParams,
    second: Option<&'a GradientsParams>,
    sums: Vec<Tensor<1>>,
}

impl Reducer<'_> {
    fn add<const D: usize>(&mut self, id: ParamId) {
        let Some(a) = self.first.get::<D>(id) else {
            return;
        };
        let a = a.flatten::<1>(0, D - 1);
        match self.second {
            None => self.sums.push(a.square().sum()),
            Some(second) => {
                let Some(b) = second.get::<D>(id) else {
                    return;
                };
                let b = b.flatten::<1>(0, D - 1);
                let dot = (a.clone() * b.clone()).sum();
                self.sums.push(Tensor::cat(
                    vec![dot, a.square().sum(), b.square().sum()],
                    0,
                ));
            }
        }
    }

    /// Σ over parameters, as one small tensor.
    fn finish(self) -> Result<Tensor<1>, SignalError> {
        let width = if self.second.is_some() { 3 } else { 1 };
        if self.sums.is_empty() {
            return Err(SignalError::NoGradients);
        }
        let n = self.sums.len();
        Ok(Tensor::cat(self.sums, 0)
            .reshape([n, width])
            .sum_dim(0)
            .reshape([width]))
    }
}

impl ModuleVisitor for Reducer<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.add::<D>(param.id);
    }
}

fn read(tensor: Tensor<1>, quantity: &'static str) -> Result<Vec<f64>, SignalError> {
    let error = |message: String| SignalError::TensorRead { quantity, message };
    let data = tensor.try_into_data().map_err(|e| error(e.to_string()))?;
    let data = data
        .convert::<f64>()
        .try_into_vec::<f64>()
        .map_err(|e| error(format!("{e:?}")))?;
    Ok(data)
}
