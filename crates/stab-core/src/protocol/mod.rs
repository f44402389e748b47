//! The step protocol: Algorithm 1 and its recovery actions as a state machine with no I/O.
//!
//! A driver (the closure [`crate::Supervisor`], stab-burn's `Guard`, your own loop) owns the
//! model, the optimizer and a [`crate::SnapshotStore`]; the protocol owns every decision. Each
//! step is three calls:
//!
//! 1. [`StepProtocol::begin_step`] with the gradient's norm (if the driver computes it): the
//!    protocol answers [`StepPlan::Skip`] (the gradient gate rejected it: do not step the
//!    optimizer) or [`StepPlan::Propose`] (step the optimizer; measure the proposal if asked).
//! 2. [`StepProtocol::decide`] with the measurement: the protocol answers with a [`Directive`]:
//!    keep the proposal, commit it (and update the snapshot ring), restore the last accepted
//!    state, rewind to an older snapshot, reset the optimizer's state, or stop.
//! 3. [`StepProtocol::complete`] once the driver has obeyed, with the fingerprint of the state it
//!    continues from (if it computes them): the protocol checks restores bit for bit and returns
//!    the step's [`StepRecord`].
//!
//! Start with [`StepProtocol::start`] (the initial save) and [`StepProtocol::complete`].
//!
//! The protocol owns the probe cadence, calibration of signals that start from their first
//! measurement, observe (log-only) mode, the decision rule, the safety monitor, the drift
//! detector, the gradient gate, the snapshot ring and the escalation ladder. It is tested once,
//! against a reference model, and every driver inherits its behaviour.

mod ladder;
mod ring;
mod state;

use serde::{Deserialize, Serialize};

use crate::config::{ControllerConfig, Rung};
use crate::controller::{Controller, Counters};
use crate::decision::{Decision, RejectionReason};
use crate::detect::{DriftDetector, GateVerdict, NormGate, ScaleFreeThreshold};
use crate::error::StabError;
use crate::monitor::{SafetyMonitor, SafetyViolation};
use crate::record::{Action, StepRecord};
use crate::snapshot::SlotId;

use ladder::Ladder;
pub use ring::RingUpdate;
use ring::{ControllerState, Ring, SlotMeta};
pub use state::{PROTOCOL_STATE_VERSION, ProtocolState, ProtocolStateError};

/// Whether the protocol acts on its decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Algorithm 1 with recovery: commit accepted proposals, restore or rewind rejected ones.
    #[default]
    Enforce,
    /// Measure and decide exactly as `Enforce` would, but keep every proposal and save nothing:
    /// an unguarded baseline with the same records (the gate and the ladder stay silent).
    Observe,
}

/// What the driver should do after [`StepProtocol::begin_step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepPlan {
    /// Step the optimizer; then measure the proposal if `measure`, and call
    /// [`StepProtocol::decide`].
    Propose {
        /// Measure the proposal this step (the probe cadence).
        measure: bool,
    },
    /// The gradient gate rejected the gradient: do not step the optimizer, keep the state, call
    /// [`StepProtocol::complete`].
    Skip,
}

/// What the driver must do with the proposal (or the state) before [`StepProtocol::complete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Directive {
    /// Keep the proposal (unprobed step, observe mode) or the state (gate skip); no store work.
    Keep,
    /// Save the proposal into [`SlotId::CURRENT`], then copy each `promote` pair and copy the
    /// current slot into each `retain` slot, in that order.
    Commit(RingUpdate),
    /// Discard the proposal; restore [`SlotId::CURRENT`].
    Restore,
    /// Discard the proposal; restore [`SlotId::CURRENT`], clear the optimizer's state (moments,
    /// step counts), and save the result into [`SlotId::CURRENT`].
    ResetOptimizer,
    /// Discard the proposal; rewind the store to `slot` (it becomes the current snapshot and the
    /// state to continue from), then release each slot of `release`.
    Rewind {
        /// The snapshot to continue from.
        slot: SlotId,
        /// Slots holding states younger than the target, no longer rewind targets.
        release: Vec<SlotId>,
    },
    /// The ladder is exhausted: discard the proposal, restore [`SlotId::CURRENT`] and end the
    /// run (after [`StepProtocol::complete`], [`StepProtocol::exhausted`] says why).
    Stop,
}

/// What the driver reports back with [`StepProtocol::complete`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Completion {
    /// Fingerprint of the state the driver continues from (after a commit: the saved proposal;
    /// after a restore or rewind: the restored state; after an optimizer reset: the reset state).
    /// `None` if the driver does not fingerprint.
    pub fingerprint: Option<u64>,
    /// After an optimizer reset: the fingerprint of the restored state *before* its optimizer
    /// state was cleared, checked against the last accepted state like any restore.
    pub restored_fingerprint: Option<u64>,
}

impl Completion {
    /// A completion with the state's fingerprint.
    pub fn fingerprinted(fingerprint: u64) -> Self {
        Self {
            fingerprint: Some(fingerprint),
            restored_fingerprint: None,
        }
    }
}

/// What one step came to.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    /// The step index t (0-based; every step counts, skipped and unprobed ones included).
    pub step: u64,
    /// What was done.
    pub action: Action,
    /// The decision's record; `None` for an unprobed or calibration step.
    pub record: Option<StepRecord>,
}

/// Why a run stopped: the escalation ladder had no rung left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryExhausted {
    /// The step at which it stopped.
    pub step: u64,
    /// Rejections in a row at that point.
    pub consecutive_rejections: u64,
    /// The rule that rejected the last proposal.
    pub reason: Option<RejectionReason>,
    /// Rungs the ladder had (those this driver can carry out).
    pub rungs: usize,
    /// Position of the last accepted state, which the driver holds.
    pub last_accepted_position: u64,
}

impl std::fmt::Display for RecoveryExhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "recovery exhausted at step {}: {} rejections in a row",
            self.step, self.consecutive_rejections
        )?;
        if let Some(reason) = &self.reason {
            write!(f, " (the last: {reason})")?;
        }
        write!(
            f,
            " after all {} rungs of the escalation ladder; the last accepted state (position {}) \
             is kept",
            self.rungs, self.last_accepted_position
        )
    }
}

/// Where the protocol is in its three-call cycle.
#[derive(Debug)]
enum Phase {
    /// Before [`StepProtocol::start`].
    Unstarted,
    /// Waiting for `begin_step`.
    Idle,
    /// `begin_step` answered `Propose`.
    Proposing { measure: bool },
    /// A directive is out; waiting for `complete`.
    Directed(Box<Pending>),
    /// The ladder ran out.
    Stopped,
}

#[derive(Debug)]
struct Pending {
    directive: Directive,
    action: Action,
    record: Option<StepRecord>,
    /// For commits and resets: the ring update whose slots receive the fingerprint.
    update: Option<RingUpdate>,
    /// For restores and rewinds: the fingerprint the restored state must have.
    expected: Option<u64>,
    /// `false` for the initial save, which is not a step.
    advances: bool,
}

/// Algorithm 1 with drift detection, the gradient gate, the snapshot ring and the escalation
/// ladder, as a state machine (see the module documentation).
#[derive(Debug)]
pub struct StepProtocol {
    config: ControllerConfig,
    mode: Mode,
    can_reset_optimizer: bool,
    monitor_enabled: bool,
    controller: Option<Controller>,
    monitor: Option<SafetyMonitor>,
    drift: Option<DriftDetector>,
    gate: Option<NormGate>,
    update_gate: Option<NormGate>,
    acceptance: Option<ScaleFreeThreshold>,
    ring: Ring,
    ladder: Ladder,
    step: u64,
    phase: Phase,
    gate_streak: u64,
    /// Gradients let through after the gate's patience, in a row (no gradient passing on its own
    /// between them).
    gate_passes: u64,
    /// This step's gradient scale when the gate lets a gradient through clipped.
    gradient_clip: Option<f64>,
    update_streak: u64,
    /// Updates let through after the update gate's patience, in a row.
    update_passes: u64,
    step_norm: Option<f64>,
    unprobed_norms: Vec<f64>,
    exhausted: Option<RecoveryExhausted>,
}

impl StepProtocol {
    /// A protocol for `config` in `mode`. `initial_measurement` is y(θ₀); `None` makes the first
    /// measured step calibrate the signal (its measurement becomes y(θ₀)).
    ///
    /// # Errors
    /// An invalid configuration or a non-finite initial measurement.
    pub fn new(
        config: &ControllerConfig,
        mode: Mode,
        initial_measurement: Option<f64>,
    ) -> Result<Self, StabError> {
        config.validate()?;
        let mut protocol = Self {
            config: config.clone(),
            mode,
            can_reset_optimizer: false,
            monitor_enabled: true,
            controller: None,
            monitor: None,
            drift: config
                .drift
                .enabled
                .then(|| DriftDetector::new(&config.drift)),
            gate: config.gate.enabled.then(|| NormGate::new(&config.gate)),
            update_gate: config
                .update_gate
                .enabled
                .then(|| NormGate::new(&config.update_gate)),
            acceptance: None,
            ring: Ring::new(&config.ring),
            ladder: Ladder::new(&config.ladder),
            step: 0,
            phase: Phase::Unstarted,
            gate_streak: 0,
            gate_passes: 0,
            gradient_clip: None,
            update_streak: 0,
            update_passes: 0,
            step_norm: None,
            unprobed_norms: Vec::new(),
            exhausted: None,
        };
        protocol.keep_usable_rungs();
        if let Some(y0) = initial_measurement {
            protocol.start_controller(y0)?;
        }
        Ok(protocol)
    }

    /// Tells the protocol whether the driver can clear its optimizer's state (the
    /// [`Rung::ResetOptimizer`] rung is passed over otherwise).
    pub fn with_optimizer_reset(mut self, supported: bool) -> Self {
        self.set_optimizer_reset(supported);
        self
    }

    /// [`StepProtocol::with_optimizer_reset`] on a protocol already in place (a driver's field).
    pub fn set_optimizer_reset(&mut self, supported: bool) {
        self.can_reset_optimizer = supported;
        self.keep_usable_rungs();
    }

    /// The rungs of the escalation ladder this driver can carry out, lowest first: the
    /// configuration's, less [`Rung::ResetOptimizer`] when the driver cannot reset its optimizer
    /// and less [`Rung::Rewind`] when the ring keeps no snapshot to rewind to. A rung dropped is
    /// never climbed nor counted; [`StepProtocol::dropped_rungs`] says which and why.
    pub fn rungs(&self) -> &[Rung] {
        self.ladder.rungs()
    }

    /// The configured rungs this protocol dropped from its ladder, each with why.
    pub fn dropped_rungs(&self) -> Vec<(Rung, &'static str)> {
        if !self.config.ladder.enabled {
            return Vec::new();
        }
        self.config
            .ladder
            .rungs
            .iter()
            .filter_map(|&rung| self.unusable(rung).map(|why| (rung, why)))
            .collect()
    }

    /// Why a rung cannot act with this driver and ring, if it cannot.
    fn unusable(&self, rung: Rung) -> Option<&'static str> {
        match rung {
            Rung::ResetOptimizer if !self.can_reset_optimizer => {
                Some("the driver cannot reset its optimizer's state")
            }
            Rung::Rewind if self.config.ring.ages.is_empty() => {
                Some("the snapshot ring keeps no older state to rewind to")
            }
            _ => None,
        }
    }

    fn keep_usable_rungs(&mut self) {
        let (can_reset, can_rewind) = (self.can_reset_optimizer, !self.config.ring.ages.is_empty());
        self.ladder.keep_rungs(|rung| match rung {
            Rung::ResetOptimizer => can_reset,
            Rung::Rewind => can_rewind,
        });
    }

    /// Turns the runtime safety monitor off (it is cheap; this exists for benchmarks). Restores
    /// are still checked against their fingerprints.
    pub fn without_monitor(mut self) -> Self {
        self.disable_monitor();
        self
    }

    /// [`StepProtocol::without_monitor`] on a protocol already in place (a driver's field).
    pub fn disable_monitor(&mut self) {
        self.monitor_enabled = false;
        self.monitor = None;
    }

    /// The runtime safety monitor, once the controller has started (`None` when it is turned
    /// off): its running maximum of accepted measurements is the envelope of Proposition 7.5.
    pub fn monitor(&self) -> Option<&SafetyMonitor> {
        self.monitor.as_ref()
    }

    fn start_controller(&mut self, y0: f64) -> Result<(), StabError> {
        self.controller = Some(Controller::from_config(&self.config, y0)?);
        if self.config.scale_free() {
            self.acceptance = Some(ScaleFreeThreshold::new(&self.config.acceptance, y0));
        }
        self.refresh_threshold();
        if self.monitor_enabled {
            self.monitor = Some(SafetyMonitor::new(y0));
        }
        Ok(())
    }

    /// Sets the controller's ε to the scale-free ε_t of the current reference (no-op for an
    /// absolute ε).
    fn refresh_threshold(&mut self) {
        if let (Some(acceptance), Some(controller)) = (&self.acceptance, self.controller.as_mut()) {
            let epsilon = acceptance.epsilon(controller.reference());
            controller.set_threshold(epsilon);
        }
    }

    /// The scale-free threshold, when ε follows the scale of the run and the controller has
    /// started.
    pub fn acceptance(&self) -> Option<&ScaleFreeThreshold> {
        self.acceptance.as_ref()
    }

    /// The directive of the initial save: the initial state is the first accepted one (and the
    /// first entry of every ring level). Call [`StepProtocol::complete`] after obeying it.
    ///
    /// # Errors
    /// [`StabError::OutOfOrder`] if the protocol has already started.
    pub fn start(&mut self) -> Result<Directive, StabError> {
        if !matches!(self.phase, Phase::Unstarted) {
            return Err(self.out_of_order("start"));
        }
        let (directive, update) = match self.mode {
            Mode::Observe => (Directive::Keep, None),
            Mode::Enforce => {
                let update = self.ring.commit(self.meta(0, 0));
                (Directive::Commit(update.clone()), Some(update))
            }
        };
        self.phase = Phase::Directed(Box::new(Pending {
            directive: directive.clone(),
            action: Action::Commit,
            record: None,
            update,
            expected: None,
            advances: false,
        }));
        Ok(directive)
    }

    /// Opens step t. `gradient_norm` is the global L2 norm of the step's gradient, if the driver
    /// computes it (the gradient gate needs it; without it the gate is not consulted).
    ///
    /// # Errors
    /// [`StabError::OutOfOrder`] if the previous step is not complete, [`StabError::Stopped`]
    /// once the ladder has run out.
    pub fn begin_step(&mut self, gradient_norm: Option<f64>) -> Result<StepPlan, StabError> {
        match self.phase {
            Phase::Idle => {}
            Phase::Stopped => {
                return Err(StabError::Stopped(Box::new(
                    self.exhausted.clone().expect("a stopped protocol says why"),
                )));
            }
            _ => return Err(self.out_of_order("begin_step")),
        }
        let measure = (self.step + 1).is_multiple_of(self.config.probe_interval);
        self.step_norm = gradient_norm;
        self.gradient_clip = None;
        self.refresh_threshold();
        if let (Some(norm), Some(gate), Some(controller), Mode::Enforce) = (
            gradient_norm,
            self.gate.as_ref(),
            self.controller.as_mut(),
            self.mode,
        ) && let GateVerdict::Reject {
            norm,
            score,
            limit,
            test,
        } = gate.check(norm)
        {
            if self.gate_streak < self.config.gate.patience {
                self.gate_streak += 1;
                let mut record = controller.reject_gradient(RejectionReason::GradientGate {
                    norm,
                    score,
                    limit,
                    test,
                });
                record.step = self.step;
                if let Some(monitor) = &mut self.monitor {
                    monitor.check_decision(&record)?;
                }
                self.phase = Phase::Directed(Box::new(Pending {
                    directive: Directive::Keep,
                    action: Action::Skip,
                    record: Some(record),
                    update: None,
                    expected: None,
                    advances: true,
                }));
                return Ok(StepPlan::Skip);
            }
            // Patience spent: let this one through, clipped to the gate's ceiling (a raw blow-up
            // would poison the optimizer's moments); the probe decides.
            self.gate_streak = 0;
            self.gate_passes += 1;
            // (The gate rejected it, so it lies above the ceiling; a non-finite one cannot be
            // scaled.)
            self.gradient_clip = gate
                .ceiling()
                .filter(|_| norm.is_finite())
                .map(|ceiling| ceiling / norm);
            if self.gate_passes >= self.config.gate.restart_after
                && let Some(gate) = self.gate.as_mut()
            {
                // The norms changed for good: start over from the ones that follow.
                gate.restart();
                self.gate_passes = 0;
            }
        } else {
            self.gate_streak = 0;
            if gradient_norm.is_some() {
                self.gate_passes = 0;
            }
        }
        self.phase = Phase::Proposing { measure };
        Ok(StepPlan::Propose { measure })
    }

    /// After [`StepProtocol::begin_step`] answered [`StepPlan::Propose`]: the factor in (0, 1) to
    /// scale this step's gradient by before the optimizer step, when the gradient gate's
    /// patience is spent and it lets an outsized gradient through clipped to its ceiling (see
    /// [`crate::GateConfig`]). `None`: use the gradient as it is. A driver that cannot scale its
    /// gradient lets it through raw.
    pub fn gradient_clip(&self) -> Option<f64> {
        self.gradient_clip
    }

    /// After the optimizer proposed on a measured step, given the update's norm
    /// ‖θ_prop − θ_t‖: the factor in (0, 1) to scale the update by before the probe measures
    /// it, θ_t + factor · (θ_prop − θ_t), when the update gate's patience is spent and it lets an
    /// outsized update through *clipped to its ceiling* (see [`crate::GateConfig`]). `None`:
    /// measure the proposal as it is. Pass the unscaled norm to
    /// [`StepProtocol::decide_with_update`] afterwards: the step is the gate's let-through either
    /// way. A driver that cannot scale its update lets it through raw.
    ///
    /// Changes no state: asking twice gives the same answer.
    pub fn update_clip(&self, update_norm: f64) -> Option<f64> {
        if !matches!(self.phase, Phase::Proposing { measure: true })
            || self.mode != Mode::Enforce
            || self.controller.is_none()
            || self.update_streak < self.config.update_gate.patience
            || !update_norm.is_finite()
        {
            return None;
        }
        let gate = self.update_gate.as_ref()?;
        // A rejected finite norm lies above the ceiling, which is positive: the factor is in
        // (0, 1).
        match gate.check(update_norm) {
            GateVerdict::Reject { .. } => gate.ceiling().map(|ceiling| ceiling / update_norm),
            GateVerdict::Pass => None,
        }
    }

    /// Decides on the proposal of the current step. `measurement` is y(θ_prop) when
    /// [`StepPlan::Propose`] asked for a measurement (`None` otherwise). A non-finite
    /// measurement is a rejection, not an error.
    ///
    /// # Errors
    /// [`StabError::OutOfOrder`], [`StabError::MissingMeasurement`], a non-finite calibration
    /// measurement, or a [`SafetyViolation`].
    pub fn decide(&mut self, measurement: Option<f64>) -> Result<Directive, StabError> {
        self.decide_with_update(measurement, None)
    }

    /// [`StepProtocol::decide`] with the norm of the update the optimizer proposed,
    /// ‖θ_prop − θ_t‖ (parameters only), if the driver computes it: the update gate judges it on
    /// measured steps (a step too large for its gradient, such as a learning-rate spike), beside
    /// the measurement. Without it the update gate is not consulted.
    ///
    /// # Errors
    /// As [`StepProtocol::decide`].
    pub fn decide_with_update(
        &mut self,
        measurement: Option<f64>,
        update_norm: Option<f64>,
    ) -> Result<Directive, StabError> {
        let Phase::Proposing { measure } = self.phase else {
            return Err(self.out_of_order("decide"));
        };
        let step = self.step;
        if !measure {
            if let Some(norm) = self.step_norm {
                self.unprobed_norms.push(norm);
            }
            return Ok(self.direct(Directive::Keep, Action::Unprobed, None, None, None));
        }
        let y = measurement.ok_or(StabError::MissingMeasurement { step })?;
        if self.controller.is_none() {
            self.start_controller(y)?;
            return Ok(self.commit_directive(Action::Calibrate, None));
        }
        // ε_t was set in `begin_step` (nothing has moved ŷ since).
        let controller = self.controller.as_mut().expect("started above");
        let (innovation, mut decision) = controller.evaluate(y);
        let position = step + 1;
        let escalation = self.ladder.level();
        // A finite update the update gate finds outsized while its patience lasts makes a
        // rejection, the gate's own or the probe's, the proposal's fault and not the state's: it
        // is restored without climbing the ladder (a rewind would only give away progress of a
        // healthy state). The patience bounds such runs; after it the update is let through
        // clipped and the probe decides. A non-finite update is judged as before: the gate
        // rejects it only when the probe did not, and the ladder counts it.
        let mut update_gated = false;
        let mut proposal_at_fault = false;
        if let (Some(norm), Some(gate)) = (update_norm, self.update_gate.as_mut())
            && (decision.is_accepted() || norm.is_finite())
        {
            match gate.check(norm) {
                GateVerdict::Pass => self.update_passes = 0,
                GateVerdict::Reject {
                    norm,
                    score,
                    limit,
                    test,
                } if self.update_streak < self.config.update_gate.patience => {
                    update_gated = true;
                    proposal_at_fault = norm.is_finite();
                    if decision.is_accepted() {
                        decision = Decision::Rejected {
                            reason: RejectionReason::UpdateGate {
                                norm,
                                score,
                                limit,
                                test,
                            },
                        };
                    }
                }
                GateVerdict::Reject { .. } => {
                    // Patience spent: let through (clipped by the driver), the probe decides.
                    // After `restart_after` such steps in a row, whatever the probe said of
                    // them, the update sizes changed for good.
                    self.update_passes += 1;
                    if self.update_passes >= self.config.update_gate.restart_after {
                        gate.restart();
                        self.update_passes = 0;
                    }
                }
            }
        }
        self.update_streak = if update_gated {
            self.update_streak + 1
        } else {
            0
        };
        if decision.is_accepted()
            && let Some(drift) = &self.drift
            && let Some(alarm) =
                drift.check(innovation, controller.threshold(), escalation, position)
        {
            decision = Decision::Rejected {
                reason: RejectionReason::DriftAlarm {
                    statistic: alarm.statistic,
                    threshold: alarm.threshold,
                    onset: alarm.onset,
                },
            };
        }
        let mut record = controller.apply(y, innovation, decision);
        record.step = step;
        if let Some(monitor) = &mut self.monitor {
            monitor.check_decision(&record)?;
        }
        let accepted = decision.is_accepted();
        if accepted {
            let epsilon = controller.threshold();
            if let Some(drift) = &mut self.drift {
                drift.accept(innovation, epsilon, escalation, position);
            }
            if let Some(acceptance) = &mut self.acceptance {
                acceptance.accept(y);
            }
            if let (Some(gate), Some(norm)) = (&mut self.update_gate, update_norm) {
                gate.accept(norm);
            }
            if let Some(gate) = &mut self.gate {
                for norm in self.unprobed_norms.drain(..).chain(self.step_norm) {
                    gate.accept(norm);
                }
            }
        } else {
            self.unprobed_norms.clear();
        }
        if self.mode == Mode::Observe {
            let action = if accepted {
                Action::Commit
            } else {
                Action::Observe
            };
            record.action = action;
            return Ok(self.direct(Directive::Keep, action, Some(record), None, None));
        }
        if accepted {
            self.ladder.on_accept();
            return Ok(self.commit_directive(Action::Commit, Some(record)));
        }
        if proposal_at_fault {
            return Ok(self.restore(record));
        }
        Ok(self.recover(record))
    }

    /// Gives up the step opened by [`StepProtocol::begin_step`] before [`StepProtocol::decide`]
    /// (the driver's optimizer step or measurement failed): nothing is decided, the step index
    /// advances, and the driver continues from its last accepted state.
    ///
    /// # Errors
    /// [`StabError::OutOfOrder`] unless a proposal was expected.
    pub fn abandon_step(&mut self) -> Result<(), StabError> {
        if !matches!(self.phase, Phase::Proposing { .. }) {
            return Err(self.out_of_order("abandon_step"));
        }
        self.phase = Phase::Idle;
        self.step_norm = None;
        self.step += 1;
        Ok(())
    }

    /// Obeys nothing itself: records what the driver did and checks it. Returns what the step
    /// came to.
    ///
    /// # Errors
    /// [`StabError::OutOfOrder`], or [`SafetyViolation::InexactRestore`] when a restored state's
    /// fingerprint differs from the one saved.
    pub fn complete(&mut self, completion: Completion) -> Result<Completed, StabError> {
        let Phase::Directed(pending) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            let error = self.out_of_order("complete");
            return Err(error);
        };
        let Pending {
            directive,
            action,
            record,
            update,
            expected,
            advances,
        } = *pending;
        let step = self.step;
        // Commits and resets (whose update is empty) record the new current state's fingerprint.
        if let Some(update) = &update {
            self.ring.set_fingerprint(update, completion.fingerprint);
        }
        let restored = match directive {
            Directive::ResetOptimizer => completion.restored_fingerprint,
            _ => completion.fingerprint,
        };
        if let (Some(expected), Some(actual)) = (expected, restored)
            && expected != actual
        {
            self.phase = Phase::Directed(Box::new(Pending {
                directive,
                action,
                record,
                update,
                expected: Some(expected),
                advances,
            }));
            return Err(SafetyViolation::InexactRestore {
                step,
                expected,
                actual,
            }
            .into());
        }
        if matches!(directive, Directive::Stop) {
            self.phase = Phase::Stopped;
        }
        if advances {
            self.step += 1;
        }
        Ok(Completed {
            step,
            action,
            record,
        })
    }

    /// Sets the fingerprint of the initial state (every slot still holding it), for a driver that
    /// learns how to fingerprint after [`StepProtocol::start`]. Has no effect once a step has
    /// been taken.
    pub fn fingerprint_initial_state(&mut self, fingerprint: u64) {
        if self.step == 0 {
            self.ring.set_initial_fingerprint(fingerprint);
        }
    }

    /// The fingerprint recorded for the last accepted state (slot 0), when the driver
    /// fingerprints: what a state brought back from the store outside the protocol's own
    /// directives (a driver giving up a step, [`StepProtocol::abandon_step`]) must match.
    pub fn current_fingerprint(&self) -> Option<u64> {
        self.ring.current().and_then(|current| current.fingerprint)
    }

    /// Why the run stopped, once the ladder has run out.
    pub fn exhausted(&self) -> Option<&RecoveryExhausted> {
        self.exhausted.as_ref()
    }

    /// The decision counters (zero before the controller has started).
    pub fn counters(&self) -> Counters {
        self.controller
            .as_ref()
            .map_or_else(Counters::default, Controller::counters)
    }

    /// The controller, once started.
    pub fn controller(&self) -> Option<&Controller> {
        self.controller.as_ref()
    }

    /// The reference ŷ, once the controller has started.
    pub fn reference(&self) -> Option<f64> {
        self.controller.as_ref().map(Controller::reference)
    }

    /// The configuration.
    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Index of the next step.
    pub fn next_step(&self) -> u64 {
        self.step
    }

    /// The drift detector's statistic S (0 when the detector is off).
    pub fn drift_statistic(&self) -> f64 {
        self.drift.as_ref().map_or(0.0, DriftDetector::statistic)
    }

    /// The ladder's current level (rungs fired and not cooled down).
    pub fn ladder_level(&self) -> u32 {
        self.ladder.level()
    }

    /// Positions of the states held in each slot (slot 0 first; `None`: empty).
    pub fn slot_positions(&self) -> Vec<Option<u64>> {
        self.ring.positions()
    }

    /// Slots a store needs for this configuration.
    pub fn slots(&self) -> usize {
        self.config.ring.slots()
    }

    fn out_of_order(&self, called: &'static str) -> StabError {
        let expected = match &self.phase {
            Phase::Unstarted => "start",
            Phase::Idle => "begin_step",
            Phase::Proposing { .. } => "decide",
            Phase::Directed(_) => "complete",
            Phase::Stopped => "nothing (the run stopped)",
        };
        StabError::OutOfOrder { called, expected }
    }

    fn controller_state(&self) -> ControllerState {
        ControllerState {
            signal: self.controller.as_ref().map(Controller::signal_state),
            drift: self.drift.clone(),
            acceptance: self.acceptance.clone(),
        }
    }

    fn meta(&self, position: u64, depth: u64) -> SlotMeta {
        SlotMeta {
            position,
            depth,
            fingerprint: None,
            controller: self.controller_state(),
        }
    }

    fn direct(
        &mut self,
        directive: Directive,
        action: Action,
        record: Option<StepRecord>,
        update: Option<RingUpdate>,
        expected: Option<u64>,
    ) -> Directive {
        self.phase = Phase::Directed(Box::new(Pending {
            directive: directive.clone(),
            action,
            record,
            update,
            expected,
            advances: true,
        }));
        directive
    }

    fn commit_directive(&mut self, action: Action, record: Option<StepRecord>) -> Directive {
        if self.mode == Mode::Observe {
            return self.direct(Directive::Keep, action, record, None, None);
        }
        let depth = self.ring.current().map_or(0, |c| c.depth) + 1;
        let update = self.ring.commit(self.meta(self.step + 1, depth));
        self.direct(
            Directive::Commit(update.clone()),
            action,
            record,
            Some(update),
            None,
        )
    }

    /// A rejected proposal in enforce mode: restore, or climb the ladder.
    fn recover(&mut self, mut record: StepRecord) -> Directive {
        let drift_onset = match record.decision.rejection_reason() {
            Some(RejectionReason::DriftAlarm { onset, .. }) => Some(onset),
            _ => None,
        };
        let fire = self.ladder.on_reject() && self.config.ladder.enabled;
        let current_position = self.ring.current().map_or(0, |c| c.position);
        if let Some(onset) = drift_onset {
            // Damage accumulated over accepted steps: restoring the last of them keeps it. With
            // the ladder off the rewind is the alarm's own action and climbs nothing.
            if !self.config.ladder.enabled {
                if let Some(directive) = self.rewind(onset, &mut record) {
                    return directive;
                }
                return self.restore(record);
            }
            match self.ladder.climb() {
                None => return self.stop(record),
                Some((level, _)) => {
                    if let Some(directive) = self.rewind_rung(level, onset, &mut record) {
                        return directive;
                    }
                }
            }
            return self.restore(record);
        }
        if !fire {
            return self.restore(record);
        }
        // The run is stuck: climb until a rung acts (a rewind with no snapshot old enough passes
        // to the next rung, uncounted).
        loop {
            let Some((level, rung)) = self.ladder.climb() else {
                return self.stop(record);
            };
            match rung {
                Rung::Rewind => {
                    let onset = self
                        .drift
                        .as_ref()
                        .and_then(DriftDetector::excursion_onset)
                        .unwrap_or(current_position)
                        .min(current_position);
                    if let Some(directive) = self.rewind_rung(level, onset, &mut record) {
                        return directive;
                    }
                }
                Rung::ResetOptimizer => {
                    record.rung = Some(level);
                    self.count_escalation();
                    return self.reset_optimizer(record);
                }
            }
        }
    }

    /// A rewind fired as rung `level`: counted and recorded only when a snapshot old enough
    /// exists.
    fn rewind_rung(
        &mut self,
        level: u32,
        onset: u64,
        record: &mut StepRecord,
    ) -> Option<Directive> {
        record.rung = Some(level);
        let directive = self.rewind(onset, record);
        if directive.is_some() {
            self.count_escalation();
        } else {
            record.rung = None;
        }
        directive
    }

    fn count_escalation(&mut self) {
        if let Some(controller) = self.controller.as_mut() {
            controller.counters_mut().escalations += 1;
        }
    }

    fn restore(&mut self, mut record: StepRecord) -> Directive {
        record.action = Action::Restore;
        let expected = self.ring.current().and_then(|c| c.fingerprint);
        self.direct(
            Directive::Restore,
            Action::Restore,
            Some(record),
            None,
            expected,
        )
    }

    /// A rewind to the youngest snapshot older than `onset` (and older than the last rewind while
    /// the ladder is climbing), or `None` when there is none.
    fn rewind(&mut self, onset: u64, record: &mut StepRecord) -> Option<Directive> {
        let bound = self.ladder.last_rewind().map_or(onset, |p| p.min(onset));
        let (slot, target) = self.ring.rewind_target(bound)?;
        let (position, expected) = (target.position, target.fingerprint);
        let controller_state = target.controller.clone();
        let release = self.ring.rewind(slot);
        self.ladder.note_rewind(position);
        if let (Some(controller), Some(signal)) =
            (self.controller.as_mut(), controller_state.signal)
        {
            controller.restore_signal(signal);
            controller.counters_mut().rewinds += 1;
        }
        self.drift = controller_state.drift;
        // The gates keep their statistics: they describe the nominal size of gradients and
        // updates, which a rewind does not change, and a young gate rewound to the start would
        // take the fault's own scale for nominal.
        self.acceptance = controller_state.acceptance;
        self.unprobed_norms.clear();
        let action = Action::Rewind {
            to_position: position,
        };
        record.action = action;
        Some(self.direct(
            Directive::Rewind { slot, release },
            action,
            Some(record.clone()),
            None,
            expected,
        ))
    }

    fn reset_optimizer(&mut self, mut record: StepRecord) -> Directive {
        record.action = Action::ResetOptimizer;
        if let Some(controller) = self.controller.as_mut() {
            controller.counters_mut().optimizer_resets += 1;
        }
        let depth = self.ring.current().map_or(0, |c| c.depth);
        let expected = self.ring.current().and_then(|c| c.fingerprint);
        let meta = self.meta(self.step + 1, depth);
        self.ring.replace_current(meta);
        self.direct(
            Directive::ResetOptimizer,
            Action::ResetOptimizer,
            Some(record),
            Some(RingUpdate::default()),
            expected,
        )
    }

    fn stop(&mut self, mut record: StepRecord) -> Directive {
        record.action = Action::Stop;
        let current = self.ring.current();
        self.exhausted = Some(RecoveryExhausted {
            step: self.step,
            consecutive_rejections: record.consecutive_rejections,
            reason: record.decision.rejection_reason(),
            rungs: self.ladder.rungs().len(),
            last_accepted_position: current.map_or(0, |c| c.position),
        });
        let expected = current.and_then(|c| c.fingerprint);
        self.direct(Directive::Stop, Action::Stop, Some(record), None, expected)
    }
}
