//! The controller: drives an innovation signal and a decision rule, keeps the counters.

use serde::{Deserialize, Serialize};

use crate::config::{ControllerConfig, SignalKind};
use crate::decision::{Decision, DecisionRule, RejectionReason, ThresholdRule};
use crate::error::StabError;
use crate::record::{Action, StepRecord};
use crate::signal::{GradientAgreementSignal, InnovationSignal, ProbeSignal, SpikeSignal};

/// Running totals of the controller's decisions and of the recovery actions taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Proposals decided so far (gate rejections included).
    pub steps: u64,
    /// Proposals accepted.
    pub accepted: u64,
    /// Proposals rejected, for any reason.
    pub rejected: u64,
    /// Proposals rejected in a row, up to now.
    pub consecutive_rejections: u64,
    /// Longest run of consecutive rejections seen.
    pub longest_rejection_run: u64,
    /// Gradients rejected by the pre-step gate (also counted in `rejected`).
    pub gate_rejections: u64,
    /// Proposals rejected by the drift detector (also counted in `rejected`).
    pub drift_alarms: u64,
    /// Rungs of the escalation ladder fired (drift rewinds included).
    pub escalations: u64,
    /// Rewinds to an older snapshot.
    pub rewinds: u64,
    /// Resets of the optimizer's state.
    pub optimizer_resets: u64,
}

/// The supervisory controller of Algorithm 1, without any state of the model: it decides, the
/// caller (usually the [`crate::StepProtocol`]) commits or restores.
///
/// Call [`Controller::decide`] once per proposal with its measurement. Non-finite measurements and
/// innovations are rejected with their own reason before the rule is asked, and never reach the
/// signal's history. The step protocol splits the call in two ([`Controller::evaluate`], then
/// [`Controller::apply`]) so that its detectors can add reasons to reject in between.
#[derive(Debug)]
pub struct Controller {
    signal: Box<dyn InnovationSignal>,
    rule: Box<dyn DecisionRule>,
    counters: Counters,
}

impl Controller {
    /// Builds the controller a configuration describes, with the reference started at the initial
    /// measurement y(θ₀) (for gradient signals: the initial gradient norm or agreement).
    ///
    /// # Errors
    /// [`StabError::Config`] if the configuration is invalid, and
    /// [`StabError::NonFiniteInitialMeasurement`] if `initial_measurement` is NaN or ±∞.
    pub fn from_config(
        config: &ControllerConfig,
        initial_measurement: f64,
    ) -> Result<Self, StabError> {
        config.validate()?;
        if !initial_measurement.is_finite() {
            return Err(StabError::NonFiniteInitialMeasurement {
                value: initial_measurement,
            });
        }
        let signal: Box<dyn InnovationSignal> = match config.signal {
            SignalKind::Probe => Box::new(ProbeSignal::new(initial_measurement, config.alpha)),
            SignalKind::LossSpike => Box::new(SpikeSignal::loss_spike(
                config.spike_window,
                initial_measurement,
            )),
            SignalKind::GradientNormSpike => Box::new(SpikeSignal::gradient_norm_spike(
                config.spike_window,
                initial_measurement,
            )),
            SignalKind::GradientAgreement => Box::new(GradientAgreementSignal::new(
                initial_measurement,
                config.alpha,
            )),
        };
        Ok(Self::new(
            signal,
            Box::new(ThresholdRule::new(config.absolute_epsilon())),
        ))
    }

    /// Builds a controller from any signal and rule (for custom signals or rules).
    pub fn new(signal: Box<dyn InnovationSignal>, rule: Box<dyn DecisionRule>) -> Self {
        Self {
            signal,
            rule,
            counters: Counters::default(),
        }
    }

    /// The innovation of `measurement` and the rule's decision on it, changing nothing.
    pub fn evaluate(&self, measurement: f64) -> (f64, Decision) {
        if !measurement.is_finite() {
            return (
                f64::NAN,
                Decision::Rejected {
                    reason: RejectionReason::NonFiniteMeasurement { measurement },
                },
            );
        }
        let innovation = self.signal.innovation(measurement);
        if innovation.is_finite() {
            (innovation, self.rule.decide(innovation))
        } else {
            (
                innovation,
                Decision::Rejected {
                    reason: RejectionReason::NonFiniteInnovation { innovation },
                },
            )
        }
    }

    /// Applies a decision on a proposal measured `measurement` (from [`Controller::evaluate`],
    /// possibly turned into a rejection by a detector): updates the signal's history (accepted
    /// proposals only) and the counters, and returns the record of the decision.
    pub fn apply(&mut self, measurement: f64, innovation: f64, decision: Decision) -> StepRecord {
        let reference = self.signal.reference();
        let threshold = self.rule.threshold();
        let step = self.counters.steps;
        self.count(&decision);
        if decision.is_accepted() {
            self.signal.accept(measurement);
        } else if measurement.is_finite() {
            self.signal.reject(measurement);
        }
        if let Some(RejectionReason::DriftAlarm { .. }) = decision.rejection_reason() {
            self.counters.drift_alarms += 1;
        }
        StepRecord {
            step,
            signal: self.signal.name().to_owned(),
            innovation_kind: self.signal.kind(),
            measurement,
            reference,
            reference_after: self.signal.reference(),
            innovation,
            threshold,
            decision,
            consecutive_rejections: self.counters.consecutive_rejections,
            action: Action::Commit,
            rung: None,
        }
    }

    /// Decides on one proposal measured `measurement`, updates the signal's history (accepted
    /// proposals only) and the counters, and returns the full record of the decision.
    pub fn decide(&mut self, measurement: f64) -> StepRecord {
        let (innovation, decision) = self.evaluate(measurement);
        self.apply(measurement, innovation, decision)
    }

    /// Records a gradient the pre-step gate rejected: no proposal exists, so no measurement
    /// (NaN) and no innovation (NaN); the reason says why.
    pub fn reject_gradient(&mut self, reason: RejectionReason) -> StepRecord {
        let decision = Decision::Rejected { reason };
        let reference = self.signal.reference();
        let step = self.counters.steps;
        self.count(&decision);
        self.counters.gate_rejections += 1;
        StepRecord {
            step,
            signal: self.signal.name().to_owned(),
            innovation_kind: self.signal.kind(),
            measurement: f64::NAN,
            reference,
            reference_after: reference,
            innovation: f64::NAN,
            threshold: self.rule.threshold(),
            decision,
            consecutive_rejections: self.counters.consecutive_rejections,
            action: Action::Skip,
            rung: None,
        }
    }

    fn count(&mut self, decision: &Decision) {
        self.counters.steps += 1;
        if decision.is_accepted() {
            self.counters.accepted += 1;
            self.counters.consecutive_rejections = 0;
        } else {
            self.counters.rejected += 1;
            self.counters.consecutive_rejections += 1;
            self.counters.longest_rejection_run = self
                .counters
                .longest_rejection_run
                .max(self.counters.consecutive_rejections);
        }
    }

    /// Moves the rule's threshold (the step protocol's scale-free ε_t).
    pub(crate) fn set_threshold(&mut self, threshold: f64) {
        self.rule.set_threshold(threshold);
    }

    /// Mutable counters, for the step protocol's recovery actions.
    pub(crate) fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The current reference (ŷ for the probe signal).
    pub fn reference(&self) -> f64 {
        self.signal.reference()
    }

    /// The threshold of the decision rule.
    pub fn threshold(&self) -> f64 {
        self.rule.threshold()
    }

    /// The signal driving this controller.
    pub fn signal(&self) -> &dyn InnovationSignal {
        self.signal.as_ref()
    }

    /// A copy of the signal with its history (kept with each snapshot).
    pub fn signal_state(&self) -> Box<dyn InnovationSignal> {
        self.signal.clone_box()
    }

    /// Puts back a signal state taken by [`Controller::signal_state`] (a rewind). Counters are
    /// not rewound: they count what happened.
    pub fn restore_signal(&mut self, signal: Box<dyn InnovationSignal>) {
        self.signal = signal;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> Controller {
        Controller::from_config(&ControllerConfig::default().with_epsilon(0.5), 1.0).unwrap()
    }

    #[test]
    fn accepts_small_innovations_and_rejects_large_ones() {
        let mut c = controller();
        let r = c.decide(1.2);
        assert!(r.decision.is_accepted());
        assert!((r.reference_after - 1.02).abs() < 1e-12);
        let r = c.decide(5.0);
        assert!(matches!(
            r.decision.rejection_reason(),
            Some(RejectionReason::InnovationAboveThreshold { .. })
        ));
        assert_eq!(r.reference, r.reference_after);
        assert_eq!(c.counters().accepted, 1);
        assert_eq!(c.counters().rejected, 1);
    }

    #[test]
    fn non_finite_measurements_are_rejected_with_their_own_reason() {
        let mut c = controller();
        for y in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let r = c.decide(y);
            assert!(matches!(
                r.decision.rejection_reason(),
                Some(RejectionReason::NonFiniteMeasurement { .. })
            ));
            assert_eq!(c.reference(), 1.0);
        }
    }

    #[test]
    fn overflowing_innovation_is_rejected_as_non_finite() {
        let mut c = Controller::from_config(&ControllerConfig::default(), -f64::MAX).unwrap();
        let r = c.decide(f64::MAX);
        assert!(matches!(
            r.decision.rejection_reason(),
            Some(RejectionReason::NonFiniteInnovation { .. })
        ));
    }

    #[test]
    fn counts_runs_of_rejections() {
        let mut c = controller();
        for _ in 0..5 {
            c.decide(100.0);
        }
        assert_eq!(c.counters().consecutive_rejections, 5);
        c.decide(1.0);
        assert_eq!(c.counters().consecutive_rejections, 0);
        assert_eq!(c.counters().longest_rejection_run, 5);
    }

    #[test]
    fn a_gated_gradient_is_a_rejection_without_a_measurement() {
        let mut c = controller();
        let r = c.reject_gradient(RejectionReason::GradientGate {
            norm: 300.0,
            score: 50.0,
            limit: 6.0,
            test: crate::detect::GateTest::ZScore,
        });
        assert!(r.measurement.is_nan() && r.innovation.is_nan());
        assert_eq!(r.action, Action::Skip);
        assert_eq!(r.reference, r.reference_after);
        assert_eq!(c.counters().gate_rejections, 1);
        assert_eq!(c.counters().rejected, 1);
        assert_eq!(c.reference(), 1.0);
    }

    #[test]
    fn non_finite_initial_measurement_is_an_error() {
        let err = Controller::from_config(&ControllerConfig::default(), f64::NAN).unwrap_err();
        assert!(matches!(err, StabError::NonFiniteInitialMeasurement { .. }));
    }
}
