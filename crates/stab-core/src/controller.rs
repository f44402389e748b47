//! The controller: drives an innovation signal and a decision rule, keeps the counters.

use serde::{Deserialize, Serialize};

use crate::config::{ControllerConfig, SignalKind};
use crate::decision::{Decision, DecisionRule, RejectionReason, ThresholdRule};
use crate::error::StabError;
use crate::record::StepRecord;
use crate::signal::{GradientAgreementSignal, InnovationSignal, ProbeSignal, SpikeSignal};

/// Running totals of the controller's decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Proposals decided so far.
    pub steps: u64,
    /// Proposals accepted.
    pub accepted: u64,
    /// Proposals rejected.
    pub rejected: u64,
    /// Proposals rejected in a row, up to now.
    pub consecutive_rejections: u64,
    /// Longest run of consecutive rejections seen.
    pub longest_rejection_run: u64,
    /// Decisions at which the escalation limit was exceeded.
    pub escalations: u64,
}

/// The supervisory controller of Algorithm 1, without any state of the model: it decides, the
/// caller (or [`crate::Supervisor`]) commits or restores.
///
/// Call [`Controller::decide`] once per proposal with its measurement. Non-finite measurements and
/// innovations are rejected with their own reason before the rule is asked, and never reach the
/// signal's history.
#[derive(Debug)]
pub struct Controller {
    signal: Box<dyn InnovationSignal>,
    rule: Box<dyn DecisionRule>,
    max_consecutive_rejections: u64,
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
            Box::new(ThresholdRule::new(config.epsilon)),
            config.max_consecutive_rejections,
        ))
    }

    /// Builds a controller from any signal and rule (for custom signals or rules).
    /// `max_consecutive_rejections` is the escalation limit (values below 1 act as 1).
    pub fn new(
        signal: Box<dyn InnovationSignal>,
        rule: Box<dyn DecisionRule>,
        max_consecutive_rejections: u64,
    ) -> Self {
        Self {
            signal,
            rule,
            max_consecutive_rejections: max_consecutive_rejections.max(1),
            counters: Counters::default(),
        }
    }

    /// Decides on one proposal measured `measurement`, updates the signal's history (accepted
    /// proposals only) and the counters, and returns the full record of the decision.
    pub fn decide(&mut self, measurement: f64) -> StepRecord {
        let reference = self.signal.reference();
        let threshold = self.rule.threshold();
        let (innovation, decision) = if !measurement.is_finite() {
            (
                f64::NAN,
                Decision::Rejected {
                    reason: RejectionReason::NonFiniteMeasurement { measurement },
                },
            )
        } else {
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
        };

        let step = self.counters.steps;
        self.counters.steps += 1;
        if decision.is_accepted() {
            self.signal.accept(measurement);
            self.counters.accepted += 1;
            self.counters.consecutive_rejections = 0;
        } else {
            if measurement.is_finite() {
                self.signal.reject(measurement);
            }
            self.counters.rejected += 1;
            self.counters.consecutive_rejections += 1;
            self.counters.longest_rejection_run = self
                .counters
                .longest_rejection_run
                .max(self.counters.consecutive_rejections);
        }
        let escalated = self.counters.consecutive_rejections > self.max_consecutive_rejections;
        if escalated {
            self.counters.escalations += 1;
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
            escalated,
        }
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
    fn escalates_once_consecutive_rejections_exceed_the_limit() {
        let config = ControllerConfig::default().with_max_consecutive_rejections(3);
        let mut c = Controller::from_config(&config, 1.0).unwrap();
        let escalated: Vec<bool> = (0..5).map(|_| c.decide(100.0).escalated).collect();
        assert_eq!(escalated, [false, false, false, true, true]);
        assert!(!c.decide(1.0).escalated);
        assert_eq!(c.counters().escalations, 2);
        assert_eq!(c.counters().longest_rejection_run, 5);
    }

    #[test]
    fn non_finite_initial_measurement_is_an_error() {
        let err = Controller::from_config(&ControllerConfig::default(), f64::NAN).unwrap_err();
        assert!(matches!(err, StabError::NonFiniteInitialMeasurement { .. }));
    }
}
