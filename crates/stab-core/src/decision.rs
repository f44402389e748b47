//! The decision rule (accept iff ν ≤ ε) and the typed decisions it returns.

use serde::{Deserialize, Serialize};

use crate::detect::GateTest;
use crate::record::non_finite_f64;

/// Why a proposal was rejected. Every rejection has exactly one reason.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RejectionReason {
    /// The innovation exceeded the threshold: ν > ε.
    InnovationAboveThreshold {
        /// The innovation ν.
        innovation: f64,
        /// The threshold ε.
        threshold: f64,
    },
    /// The measurement itself was NaN or ±∞ (a numerical blow-up of the proposal).
    NonFiniteMeasurement {
        /// The measurement, serialized as `"NaN"`, `"inf"` or `"-inf"`.
        #[serde(with = "non_finite_f64")]
        measurement: f64,
    },
    /// The measurement was finite but the innovation computed from it was not (overflow).
    NonFiniteInnovation {
        /// The innovation, serialized as `"NaN"`, `"inf"` or `"-inf"`.
        #[serde(with = "non_finite_f64")]
        innovation: f64,
    },
    /// ν ≤ ε, but the accepted innovations since `onset` add up to a drift: the CUSUM statistic
    /// passed its alarm level (damage arriving in steps each under ε).
    DriftAlarm {
        /// The CUSUM statistic S with this proposal.
        statistic: f64,
        /// The alarm level h.
        threshold: f64,
        /// Position of the first state the drift produced.
        onset: u64,
    },
    /// The gradient was rejected before the optimizer step: its norm is far above the norms of
    /// accepted steps, or not finite. Nothing was proposed, nothing needs restoring.
    GradientGate {
        /// The gradient's norm (`"NaN"`, `"inf"` when not finite).
        #[serde(with = "non_finite_f64")]
        norm: f64,
        /// Its score against accepted norms: a z-score or a ratio to their median, as `test`
        /// says (∞ for a non-finite norm).
        #[serde(with = "non_finite_f64")]
        score: f64,
        /// The limit of that score.
        limit: f64,
        /// The statistic that judged it.
        test: GateTest,
    },
    /// The update the optimizer proposed, ‖θ_prop − θ_t‖, is far above the updates of accepted
    /// steps (or not finite): a step too large for its gradient, such as a learning-rate spike,
    /// rejected before the probe judges it.
    UpdateGate {
        /// The update's norm (`"NaN"`, `"inf"` when not finite).
        #[serde(with = "non_finite_f64")]
        norm: f64,
        /// Its score against accepted updates: a z-score or a ratio to their median, as `test`
        /// says.
        #[serde(with = "non_finite_f64")]
        score: f64,
        /// The limit of that score.
        limit: f64,
        /// The statistic that judged it.
        test: GateTest,
    },
}

impl std::fmt::Display for RejectionReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InnovationAboveThreshold {
                innovation,
                threshold,
            } => write!(f, "innovation {innovation:.6} > threshold {threshold}"),
            Self::NonFiniteMeasurement { measurement } => {
                write!(f, "non-finite measurement {measurement}")
            }
            Self::NonFiniteInnovation { innovation } => {
                write!(f, "non-finite innovation {innovation}")
            }
            Self::DriftAlarm {
                statistic,
                threshold,
                onset,
            } => write!(
                f,
                "drift since position {onset}: CUSUM {statistic:.6} > alarm level {threshold:.6}"
            ),
            Self::GradientGate {
                norm,
                score,
                limit,
                test,
            } => write!(
                f,
                "gradient norm {norm} ({}) gated",
                gate_score(*score, *limit, *test)
            ),
            Self::UpdateGate {
                norm,
                score,
                limit,
                test,
            } => write!(
                f,
                "update norm {norm} ({}) gated",
                gate_score(*score, *limit, *test)
            ),
        }
    }
}

/// How a gate's score reads in a message.
fn gate_score(score: f64, limit: f64, test: GateTest) -> String {
    match test {
        GateTest::ZScore => format!("z = {score:.2} > {limit}"),
        GateTest::MedianRatio => format!("{score:.2} × the median accepted norm > {limit}"),
        GateTest::NonFinite => "not finite".to_owned(),
    }
}

/// The controller's verdict on one proposal. Never a bare `bool`: a rejection says why.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum Decision {
    /// Execute the proposal: it becomes the new accepted state.
    Accepted,
    /// Discard the proposal and restore the last accepted state.
    Rejected {
        /// Why.
        reason: RejectionReason,
    },
}

impl Decision {
    /// `true` for [`Decision::Accepted`].
    pub fn is_accepted(&self) -> bool {
        matches!(self, Self::Accepted)
    }

    /// The rejection reason, if rejected.
    pub fn rejection_reason(&self) -> Option<RejectionReason> {
        match self {
            Self::Accepted => None,
            Self::Rejected { reason } => Some(*reason),
        }
    }
}

/// A rule that turns a finite innovation into a decision. Small on purpose so that other rules
/// (adaptive thresholds, hysteresis) can be added without touching the controller.
///
/// The controller handles non-finite measurements and innovations itself, before the rule: a rule
/// only ever sees finite ν.
pub trait DecisionRule: std::fmt::Debug + Send {
    /// The threshold this rule compares against, for records and the safety monitor.
    fn threshold(&self) -> f64;

    /// Decides on a finite innovation.
    fn decide(&self, innovation: f64) -> Decision;

    /// Moves the threshold to `threshold` (the scale-free acceptance sets ε_t before each
    /// decision). A rule with a threshold of its own may ignore it; the default does.
    fn set_threshold(&mut self, _threshold: f64) {}
}

/// Algorithm 1's rule: accept iff ν ≤ ε.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThresholdRule {
    epsilon: f64,
}

impl ThresholdRule {
    /// A rule with threshold ε (validated by [`crate::ControllerConfig::validate`]).
    pub fn new(epsilon: f64) -> Self {
        Self { epsilon }
    }
}

impl DecisionRule for ThresholdRule {
    fn threshold(&self) -> f64 {
        self.epsilon
    }

    fn set_threshold(&mut self, threshold: f64) {
        self.epsilon = threshold;
    }

    fn decide(&self, innovation: f64) -> Decision {
        if innovation <= self.epsilon {
            Decision::Accepted
        } else {
            Decision::Rejected {
                reason: RejectionReason::InnovationAboveThreshold {
                    innovation,
                    threshold: self.epsilon,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_says_what_it_saw() {
        let cases = [
            (
                RejectionReason::InnovationAboveThreshold {
                    innovation: 0.75,
                    threshold: 0.5,
                },
                "innovation 0.750000 > threshold 0.5",
            ),
            (
                RejectionReason::NonFiniteMeasurement {
                    measurement: f64::NEG_INFINITY,
                },
                "non-finite measurement -inf",
            ),
            (
                RejectionReason::NonFiniteInnovation {
                    innovation: f64::NAN,
                },
                "non-finite innovation NaN",
            ),
            (
                RejectionReason::DriftAlarm {
                    statistic: 2.0,
                    threshold: 1.5,
                    onset: 12,
                },
                "drift since position 12: CUSUM 2.000000 > alarm level 1.500000",
            ),
            (
                RejectionReason::GradientGate {
                    norm: 300.0,
                    score: 40.0,
                    limit: 12.0,
                    test: GateTest::ZScore,
                },
                "gradient norm 300 (z = 40.00 > 12) gated",
            ),
            (
                RejectionReason::GradientGate {
                    norm: 1200.0,
                    score: 300.0,
                    limit: 10.0,
                    test: GateTest::MedianRatio,
                },
                "gradient norm 1200 (300.00 × the median accepted norm > 10) gated",
            ),
            (
                RejectionReason::UpdateGate {
                    norm: f64::NAN,
                    score: f64::INFINITY,
                    limit: 12.0,
                    test: GateTest::NonFinite,
                },
                "update norm NaN (not finite) gated",
            ),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.to_string(), text);
        }
    }

    #[test]
    fn threshold_is_inclusive_and_moves_when_set() {
        let mut rule = ThresholdRule::new(0.5);
        rule.set_threshold(0.25);
        assert_eq!(rule.threshold(), 0.25);
        assert!(rule.decide(0.25).is_accepted() && !rule.decide(0.3).is_accepted());
        rule.set_threshold(0.5);
        assert!(rule.decide(0.5).is_accepted());
        assert!(rule.decide(-3.0).is_accepted());
        assert!(!rule.decide(0.5000001).is_accepted());
    }

    #[test]
    fn decisions_serialize_with_their_reason() {
        let d = Decision::Rejected {
            reason: RejectionReason::NonFiniteMeasurement {
                measurement: f64::NAN,
            },
        };
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains("non-finite-measurement"), "{json}");
        assert!(json.contains("\"NaN\""), "{json}");
        let back: Decision = serde_json::from_str(&json).unwrap();
        assert!(matches!(
            back.rejection_reason(),
            Some(RejectionReason::NonFiniteMeasurement { measurement }) if measurement.is_nan()
        ));
    }
}
