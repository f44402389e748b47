//! What one guarded step did.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use stab_core::{Action, Counters, Decision, StepRecord};

/// What the guard did with a proposal: stab-core's [`Action`] (commit, restore, rewind, reset
/// the optimizer, skip a gated gradient, observe, calibrate, unprobed, stop).
pub type StepAction = Action;

/// The report of one guarded step: the decision with its measurement, innovation and
/// reference (stab-core's [`StepRecord`]), what was done, and the running counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// The step index t (0-based, every proposal counts).
    pub step: u64,
    /// What the guard did.
    pub action: StepAction,
    /// The controller's record; `None` for an unprobed or calibration step.
    pub record: Option<StepRecord>,
    /// Decisions so far.
    pub counters: Counters,
    /// Where the step's time went.
    pub timings: StepTimings,
    /// The update's size ‖θ_prop − θ_t‖ the update gate judged (measured steps with the update
    /// gate on; `None` otherwise).
    pub update_norm: Option<f64>,
}

/// Wall-clock time of each phase of a guarded step.
///
/// Measured on the host without extra device synchronization: on an asynchronous backend (wgpu,
/// CUDA) a phase that only submits work looks cheap, and the work is paid by the next phase that
/// reads from the device, usually `measure` (the probe reads its loss back). The sum is the
/// step's cost either way; the Flex CPU backend runs synchronously.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTimings {
    /// The optimizer's update (`ModuleOptimizer::step`).
    pub optimizer: Duration,
    /// Taking the measurement: the probe on the proposal, or the gradient signal before the step
    /// (including a reference gradient for agreement).
    pub measure: Duration,
    /// Saving the accepted state (and fingerprinting it with `verify_restores`).
    pub snapshot: Duration,
    /// Restoring the last accepted state (and checking its fingerprint).
    pub restore: Duration,
}

impl StepTimings {
    /// The guard's own share: measurement, snapshot and restore.
    pub fn control(&self) -> Duration {
        self.measure + self.snapshot + self.restore
    }

    /// All phases together.
    pub fn total(&self) -> Duration {
        self.optimizer + self.control()
    }
}

impl StepReport {
    /// The decision, if the step was measured.
    pub fn decision(&self) -> Option<Decision> {
        self.record.as_ref().map(|r| r.decision)
    }

    /// The measurement y(θ_prop), if the step was measured.
    pub fn measurement(&self) -> Option<f64> {
        self.record.as_ref().map(|r| r.measurement)
    }

    /// The innovation ν, if the step was measured (NaN for a non-finite measurement).
    pub fn innovation(&self) -> Option<f64> {
        self.record.as_ref().map(|r| r.innovation)
    }

    /// The reference ŷ before the decision, if the step was measured.
    pub fn reference(&self) -> Option<f64> {
        self.record.as_ref().map(|r| r.reference)
    }

    /// `true` if the controller rejected the proposal (whether or not it was rolled back).
    pub fn is_rejection(&self) -> bool {
        self.record
            .as_ref()
            .is_some_and(|r| !r.decision.is_accepted())
    }

    /// `true` if the proposal was discarded and a saved state brought back (restore, rewind,
    /// optimizer reset, stop).
    pub fn rolled_back(&self) -> bool {
        self.action.discards_proposal()
    }
}

/// The model to continue training with, and the report of the step.
#[derive(Debug)]
pub struct GuardedStep<M> {
    /// The proposal if committed (or unprobed, or observed), otherwise the restored state.
    pub model: M,
    /// What happened.
    pub report: StepReport,
}
