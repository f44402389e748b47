//! Runtime safety monitor: checks Theorem 7.3 and Propositions 7.4 and 7.5 at every step.
//!
//! The monitor trusts nothing the controller says about itself: it recomputes each guarantee from
//! the step records (and, for restores, from fingerprints of the states that the caller
//! supplies), so a wrong rule or an inexact restore is caught as it happens.

use thiserror::Error;

use crate::record::StepRecord;
use crate::signal::InnovationKind;

/// A broken guarantee, with the numbers that show it.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SafetyViolation {
    /// An accepted proposal had a non-finite measurement or innovation.
    #[error(
        "step {step}: accepted a proposal with measurement {measurement} and innovation {innovation}"
    )]
    AcceptedNonFinite {
        /// Step index.
        step: u64,
        /// The measurement.
        measurement: f64,
        /// The innovation.
        innovation: f64,
    },
    /// An accepted proposal had ν > ε (the decision rule is wrong).
    #[error("step {step}: accepted innovation {innovation} above threshold {threshold}")]
    AcceptedAboveThreshold {
        /// Step index.
        step: u64,
        /// The innovation.
        innovation: f64,
        /// The threshold ε.
        threshold: f64,
    },
    /// Theorem 7.3: an accepted state must satisfy y(θₜ₊₁) ≤ ŷₜ + ε.
    #[error(
        "step {step} (Theorem 7.3): accepted y = {measurement} > ŷ = {reference} + ε = {epsilon}"
    )]
    BoundedDeviation {
        /// Step index.
        step: u64,
        /// y(θₜ₊₁).
        measurement: f64,
        /// ŷₜ.
        reference: f64,
        /// ε.
        epsilon: f64,
    },
    /// The reference moved although the proposal was rejected.
    #[error("step {step}: reference moved from {before} to {after} on a rejection")]
    ReferenceMovedOnRejection {
        /// Step index.
        step: u64,
        /// ŷ before.
        before: f64,
        /// ŷ after.
        after: f64,
    },
    /// The reference left the hull of accepted measurements: it is no longer a convex combination.
    #[error("step {step}: reference {reference} outside accepted range [{min}, {max}]")]
    ReferenceOutsideHull {
        /// Step index.
        step: u64,
        /// ŷₜ₊₁.
        reference: f64,
        /// Smallest accepted measurement so far.
        min: f64,
        /// Largest accepted measurement so far.
        max: f64,
    },
    /// Proposition 7.4: the restored state differs from the last accepted one.
    #[error(
        "step {step} (Proposition 7.4): restored state fingerprint {actual:#018x} != last accepted {expected:#018x}"
    )]
    InexactRestore {
        /// Step index.
        step: u64,
        /// Fingerprint of the last accepted state.
        expected: u64,
        /// Fingerprint of the restored state.
        actual: u64,
    },
    /// Proposition 7.5: y(θₜ₊₁) ≤ max_{k≤t} y(θ_k) + ε.
    #[error(
        "step {step} (Proposition 7.5): y = {measurement} above running max {running_max} + ε = {epsilon}"
    )]
    EnvelopeStep {
        /// Step index.
        step: u64,
        /// y(θₜ₊₁).
        measurement: f64,
        /// max_{k≤t} y(θ_k).
        running_max: f64,
        /// ε.
        epsilon: f64,
    },
}

/// Checks the paper's guarantees step by step.
///
/// Feed it every [`StepRecord`] in order with [`SafetyMonitor::check_decision`], and after every
/// restore the fingerprints of the restored and last accepted states with
/// [`SafetyMonitor::check_restore`]. The measurement envelope (Proposition 7.5) and Theorem 7.3 are
/// checked for signals of kind [`InnovationKind::ReferenceDifference`]; the decision-rule and
/// restore checks apply to every signal.
///
/// Floating point: Theorem 7.3 is checked with the exact expression the controller evaluates
/// (y − ŷ ≤ ε). The envelope compares sums the controller never formed, so it allows the rounding
/// of those sums: a few units in the last place of the magnitudes involved, accumulated over steps.
/// A real violation (a rule accepting ν > ε, a reference moved by a rejected value) is orders of
/// magnitude larger.
///
/// The second half of Proposition 7.5, max_{k≤t+1} y(θ_k) ≤ y(θ₀) + (t + 1) ε, has no check of
/// its own: it follows by induction from the per-step envelope ([`SafetyViolation::EnvelopeStep`]),
/// since each accepted step raises the running maximum by at most ε and a rejection leaves it. A
/// separate check could only ever fire on rounding (it was removed as dead code after mutation
/// testing showed no input reaches it); `tests/invariants.rs` asserts the bound on every run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SafetyMonitor {
    running_max: f64,
    running_min: f64,
    rounding_slack: f64,
}

impl SafetyMonitor {
    /// A monitor for a run that starts from the measurement y(θ₀) (finite).
    pub fn new(initial_measurement: f64) -> Self {
        Self {
            running_max: initial_measurement,
            running_min: initial_measurement,
            rounding_slack: 0.0,
        }
    }

    /// max_{k≤t} y(θ_k) over the accepted states so far.
    pub fn running_max(&self) -> f64 {
        self.running_max
    }

    /// Checks one decision.
    ///
    /// # Errors
    /// The first [`SafetyViolation`] the record shows.
    pub fn check_decision(&mut self, record: &StepRecord) -> Result<(), SafetyViolation> {
        let step = record.step;
        if !record.decision.is_accepted() {
            if record.reference_after.to_bits() != record.reference.to_bits() {
                return Err(SafetyViolation::ReferenceMovedOnRejection {
                    step,
                    before: record.reference,
                    after: record.reference_after,
                });
            }
            return Ok(());
        }
        if !(record.measurement.is_finite() && record.innovation.is_finite()) {
            return Err(SafetyViolation::AcceptedNonFinite {
                step,
                measurement: record.measurement,
                innovation: record.innovation,
            });
        }
        if record.innovation > record.threshold {
            return Err(SafetyViolation::AcceptedAboveThreshold {
                step,
                innovation: record.innovation,
                threshold: record.threshold,
            });
        }
        if record.innovation_kind != InnovationKind::ReferenceDifference {
            return Ok(());
        }
        let (y, epsilon) = (record.measurement, record.threshold);
        if y - record.reference > epsilon {
            return Err(SafetyViolation::BoundedDeviation {
                step,
                measurement: y,
                reference: record.reference,
                epsilon,
            });
        }
        self.rounding_slack += 8.0
            * f64::EPSILON
            * (y.abs() + record.reference.abs() + self.running_max.abs() + epsilon);
        if y > self.running_max + epsilon + self.rounding_slack {
            return Err(SafetyViolation::EnvelopeStep {
                step,
                measurement: y,
                running_max: self.running_max,
                epsilon,
            });
        }
        self.running_max = self.running_max.max(y);
        self.running_min = self.running_min.min(y);
        let after = record.reference_after;
        if !(after >= self.running_min && after <= self.running_max) {
            return Err(SafetyViolation::ReferenceOutsideHull {
                step,
                reference: after,
                min: self.running_min,
                max: self.running_max,
            });
        }
        Ok(())
    }

    /// Proposition 7.4: the state restored after a rejection must be the last accepted one.
    ///
    /// # Errors
    /// [`SafetyViolation::InexactRestore`] if the fingerprints differ.
    pub fn check_restore(
        &self,
        step: u64,
        last_accepted: u64,
        restored: u64,
    ) -> Result<(), SafetyViolation> {
        if last_accepted == restored {
            Ok(())
        } else {
            Err(SafetyViolation::InexactRestore {
                step,
                expected: last_accepted,
                actual: restored,
            })
        }
    }
}
