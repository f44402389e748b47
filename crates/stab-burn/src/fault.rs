//! Seeded, composable fault injection for experiments and tests.
//!
//! A [`FaultSchedule`] is a list of [`Fault`]s, each a [`FaultKind`] active on the steps
//! `start..start + len`. The training loop asks the schedule at each step through four hooks:
//! [`FaultSchedule::grads`] (gradient blow-ups, NaN/Inf gradients), [`FaultSchedule::lr`]
//! (learning-rate spikes), [`FaultSchedule::inputs`] (corrupted inputs) and
//! [`FaultSchedule::labels`] (flipped labels). Faults compose: every active fault of a hook's
//! category is applied, in schedule order. Random faults draw from a generator seeded by
//! (schedule seed, fault index, step), so a run is reproducible and independent of which other
//! faults are active.
//!
//! The schedule is serde-friendly for experiment configuration:
//!
//! ```
//! use stab_burn::{Fault, FaultKind, FaultSchedule};
//!
//! let schedule: FaultSchedule = serde_json::from_str(
//!     r#"{ "seed": 7, "faults": [
//!         { "kind": "gradient-scale", "factor": 300.0, "start": 120, "len": 10 },
//!         { "kind": "input-noise", "amplitude": 5.0, "start": 200, "len": 1 } ] }"#,
//! )
//! .unwrap();
//! schedule.validate().unwrap();
//! assert_eq!(schedule.faults[0], Fault::paper_gradient_blowup());
//! assert!(schedule.is_active(129) && !schedule.is_active(130));
//! ```

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::FaultError;

/// What a fault does while it is active.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FaultKind {
    /// Multiplies every gradient by `factor` (the paper's catastrophic failure: ζ = 300).
    GradientScale {
        /// The factor ζ.
        factor: f64,
    },
    /// Replaces every gradient element by NaN.
    GradientNan,
    /// Replaces every gradient element by +∞.
    GradientInf,
    /// Multiplies the learning rate by `factor`.
    LearningRateScale {
        /// The factor.
        factor: f64,
    },
    /// Adds seeded Gaussian noise of standard deviation `amplitude` to the inputs.
    InputNoise {
        /// Standard deviation of the noise.
        amplitude: f64,
    },
    /// Replaces each label y by `num_classes − 1 − y`.
    LabelFlip {
        /// Number of classes.
        num_classes: u32,
    },
}

/// One fault and its window of steps `start..start + len`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// What it does.
    #[serde(flatten)]
    pub kind: FaultKind,
    /// First step (0-based, counting every optimizer step) at which it is active.
    pub start: u64,
    /// Number of consecutive steps it stays active.
    pub len: u64,
}

impl Fault {
    /// A fault active on `start..start + len`.
    pub fn new(kind: FaultKind, start: u64, len: u64) -> Self {
        Self { kind, start, len }
    }

    /// The paper's protocol: gradients scaled by ζ = 300 on steps 120..130.
    pub fn paper_gradient_blowup() -> Self {
        Self::new(FaultKind::GradientScale { factor: 300.0 }, 120, 10)
    }

    /// `true` if the fault fires at `step`.
    pub fn is_active(&self, step: u64) -> bool {
        step >= self.start && step - self.start < self.len
    }
}

/// A seeded list of faults, applied through per-category hooks. The default schedule is empty
/// (a nominal run).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSchedule {
    /// Seed of the random faults.
    pub seed: u64,
    /// The faults, applied in this order when several are active.
    pub faults: Vec<Fault>,
}

impl FaultSchedule {
    /// An empty schedule with the given seed.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            faults: Vec::new(),
        }
    }

    /// Adds a fault.
    pub fn with(mut self, fault: Fault) -> Self {
        self.faults.push(fault);
        self
    }

    /// Checks every fault: finite factors, non-negative finite amplitudes, non-empty windows, at
    /// least two classes for label flipping.
    ///
    /// # Errors
    /// The first [`FaultError`] found, naming the fault by its index.
    pub fn validate(&self) -> Result<(), FaultError> {
        for (index, fault) in self.faults.iter().enumerate() {
            if fault.len == 0 {
                return Err(FaultError::EmptyWindow {
                    index,
                    start: fault.start,
                });
            }
            match fault.kind {
                FaultKind::GradientScale { factor } | FaultKind::LearningRateScale { factor }
                    if !factor.is_finite() =>
                {
                    return Err(FaultError::NonFiniteFactor {
                        index,
                        value: factor,
                    });
                }
                FaultKind::InputNoise { amplitude }
                    if !(amplitude.is_finite() && amplitude >= 0.0) =>
                {
                    return Err(FaultError::BadAmplitude {
                        index,
                        value: amplitude,
                    });
                }
                FaultKind::LabelFlip { num_classes } if num_classes < 2 => {
                    return Err(FaultError::TooFewClasses { index, num_classes });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The faults active at `step`, in schedule order.
    pub fn active(&self, step: u64) -> impl Iterator<Item = &Fault> + '_ {
        self.faults.iter().filter(move |f| f.is_active(step))
    }

    /// `true` if any fault is active at `step`.
    pub fn is_active(&self, step: u64) -> bool {
        self.active(step).next().is_some()
    }

    /// Applies the active gradient faults to `grads` (the gradients of `model`'s parameters).
    pub fn grads<M: Module>(
        &self,
        step: u64,
        grads: GradientsParams,
        model: &M,
    ) -> GradientsParams {
        let ops: Vec<GradOp> = self
            .active(step)
            .filter_map(|fault| match fault.kind {
                FaultKind::GradientScale { factor } => Some(GradOp::Scale(factor)),
                FaultKind::GradientNan => Some(GradOp::Fill(f64::NAN)),
                FaultKind::GradientInf => Some(GradOp::Fill(f64::INFINITY)),
                _ => None,
            })
            .collect();
        if ops.is_empty() {
            return grads;
        }
        let mut mapper = GradFaults { grads, ops };
        model.visit(&mut mapper);
        mapper.grads
    }

    /// The learning rate to use at `step`: `lr` times every active learning-rate factor.
    pub fn lr(&self, step: u64, lr: f64) -> f64 {
        self.active(step).fold(lr, |lr, fault| match fault.kind {
            FaultKind::LearningRateScale { factor } => lr * factor,
            _ => lr,
        })
    }

    /// Applies the active input faults (seeded Gaussian noise) to a batch of inputs.
    pub fn inputs<const D: usize>(&self, step: u64, inputs: Tensor<D>) -> Tensor<D> {
        let mut inputs = inputs;
        for (index, fault) in self.faults.iter().enumerate() {
            if let (FaultKind::InputNoise { amplitude }, true) = (fault.kind, fault.is_active(step))
            {
                let shape = inputs.dims();
                let n = shape.iter().product::<usize>();
                let mut rng = SplitMix64::new(self.seed, index as u64, step);
                let noise: Vec<f32> = (0..n).map(|_| (amplitude * rng.normal()) as f32).collect();
                let noise = Tensor::<D>::from_data(
                    TensorData::new(noise, shape),
                    (&inputs.device(), inputs.dtype()),
                );
                inputs = inputs + noise;
            }
        }
        inputs
    }

    /// Applies the active label faults: each label y becomes `num_classes − 1 − y`.
    ///
    /// Labels outside `0..num_classes` would map outside too; use
    /// [`FaultSchedule::checked_labels`] to have them reported instead.
    pub fn labels<const D: usize>(&self, step: u64, labels: Tensor<D, Int>) -> Tensor<D, Int> {
        self.active(step)
            .fold(labels, |labels, fault| match fault.kind {
                FaultKind::LabelFlip { num_classes } => {
                    labels.neg().add_scalar(i64::from(num_classes) - 1)
                }
                _ => labels,
            })
    }

    /// Like [`FaultSchedule::labels`], but first checks (with a device read, only when a label
    /// fault is active) that every label lies in `0..num_classes`.
    ///
    /// # Errors
    /// [`FaultError::LabelOutOfRange`] or [`FaultError::TensorRead`].
    pub fn checked_labels<const D: usize>(
        &self,
        step: u64,
        labels: Tensor<D, Int>,
    ) -> Result<Tensor<D, Int>, FaultError> {
        for fault in self.active(step) {
            if let FaultKind::LabelFlip { num_classes } = fault.kind {
                let data = labels
                    .clone()
                    .try_into_data()
                    .map_err(|e| FaultError::TensorRead {
                        message: e.to_string(),
                    })?
                    .convert::<i64>();
                let values = data
                    .try_into_vec::<i64>()
                    .map_err(|e| FaultError::TensorRead {
                        message: format!("{e:?}"),
                    })?;
                if let Some(&label) = values
                    .iter()
                    .find(|&&y| y < 0 || y >= i64::from(num_classes))
                {
                    return Err(FaultError::LabelOutOfRange { label, num_classes });
                }
            }
        }
        Ok(self.labels(step, labels))
    }
}

#[derive(Debug, Clone, Copy)]
enum GradOp {
    Scale(f64),
    Fill(f64),
}

struct GradFaults {
    grads: GradientsParams,
    ops: Vec<GradOp>,
}

impl GradFaults {
    fn apply<const D: usize>(&mut self, id: ParamId) {
        let Some(mut grad) = self.grads.remove::<D>(id) else {
            return;
        };
        for op in &self.ops {
            grad = match *op {
                GradOp::Scale(factor) => grad.mul_scalar(factor),
                GradOp::Fill(value) => grad.zeros_like().add_scalar(value),
            };
        }
        self.grads.register(id, grad);
    }
}

impl ModuleVisitor for GradFaults {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.apply::<D>(param.id);
    }
}

/// SplitMix64: a tiny, well-mixed generator; enough for reproducible noise.
#[derive(Debug, Clone)]
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    fn new(seed: u64, stream: u64, step: u64) -> Self {
        let mut rng = Self { state: seed };
        let a = rng.next_u64() ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let b = Self { state: a }.next_u64() ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Self { state: b }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_half_open() {
        let fault = Fault::paper_gradient_blowup();
        assert!(!fault.is_active(119));
        assert!(fault.is_active(120));
        assert!(fault.is_active(129));
        assert!(!fault.is_active(130));
    }

    #[test]
    fn learning_rate_factors_compose() {
        let schedule = FaultSchedule::new(0)
            .with(Fault::new(
                FaultKind::LearningRateScale { factor: 10.0 },
                5,
                2,
            ))
            .with(Fault::new(
                FaultKind::LearningRateScale { factor: 3.0 },
                6,
                1,
            ));
        assert_eq!(schedule.lr(4, 0.1), 0.1);
        assert_eq!(schedule.lr(5, 0.1), 0.1 * 10.0);
        assert_eq!(schedule.lr(6, 0.1), 0.1 * 10.0 * 3.0);
    }

    #[test]
    fn malformed_faults_are_named_by_index() {
        let bad = FaultSchedule::new(0)
            .with(Fault::paper_gradient_blowup())
            .with(Fault::new(
                FaultKind::GradientScale { factor: f64::NAN },
                0,
                1,
            ));
        assert!(matches!(
            bad.validate(),
            Err(FaultError::NonFiniteFactor { index: 1, .. })
        ));
        let empty = FaultSchedule::new(0).with(Fault::new(FaultKind::GradientNan, 3, 0));
        assert!(matches!(
            empty.validate(),
            Err(FaultError::EmptyWindow { index: 0, start: 3 })
        ));
        let flip =
            FaultSchedule::new(0).with(Fault::new(FaultKind::LabelFlip { num_classes: 1 }, 0, 1));
        assert!(flip.validate().is_err());
    }

    #[test]
    fn noise_streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = {
            let mut r = SplitMix64::new(1, 0, 5);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = SplitMix64::new(1, 0, 5);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let c: Vec<u64> = {
            let mut r = SplitMix64::new(1, 0, 6);
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut r = SplitMix64::new(3, 1, 0);
        let n = 20_000;
        let samples: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = samples.iter().sum::<f64>() / n as f64;
        let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.05 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }
}
