//! Errors raised by stab-core.

use thiserror::Error;

/// A configuration value that breaks one of the rules in [`crate::ControllerConfig::validate`].
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ConfigError {
    /// The acceptance threshold ε must be finite and strictly positive.
    #[error("invalid epsilon = {value}: the acceptance threshold must be finite and > 0")]
    Epsilon {
        /// The rejected value.
        value: f64,
    },
    /// The EWMA smoothing factor α must lie in the open interval (0, 1).
    #[error("invalid alpha = {value}: the smoothing factor must lie in (0, 1)")]
    Alpha {
        /// The rejected value.
        value: f64,
    },
    /// A count-valued field (interval, window, limit) is below its minimum.
    #[error("invalid {field} = {value}: must be at least {minimum}")]
    TooSmall {
        /// Name of the configuration field.
        field: &'static str,
        /// The rejected value.
        value: u64,
        /// The smallest value allowed.
        minimum: u64,
    },
    /// A count-valued field (window, ring age, ladder count) is above its maximum.
    #[error("invalid {field} = {value}: must be at most {maximum}")]
    TooLarge {
        /// Name of the configuration field.
        field: &'static str,
        /// The rejected value.
        value: u64,
        /// The largest value allowed.
        maximum: u64,
    },
    /// A real-valued field must be finite and not negative.
    #[error("invalid {field} = {value}: must be finite and ≥ 0")]
    Negative {
        /// Name of the configuration field.
        field: &'static str,
        /// The rejected value.
        value: f64,
    },
    /// A real-valued field must be finite and strictly above a bound.
    #[error("invalid {field} = {value}: must be finite and > {bound}")]
    NotAbove {
        /// Name of the configuration field.
        field: &'static str,
        /// The rejected value.
        value: f64,
        /// The bound it must exceed.
        bound: f64,
    },
    /// A real-valued field must be finite and strictly positive.
    #[error("invalid {field} = {value}: must be finite and > 0")]
    NotPositive {
        /// Name of the configuration field.
        field: &'static str,
        /// The rejected value.
        value: f64,
    },
}

/// Errors building or driving a [`crate::Controller`] or [`crate::Supervisor`].
#[derive(Debug, Error)]
pub enum StabError {
    /// The configuration is invalid.
    #[error("invalid controller configuration: {0}")]
    Config(#[from] ConfigError),
    /// The initial measurement y(θ₀) must be finite: the reference ŷ₀ is built from it.
    #[error(
        "the initial measurement y(θ₀) = {value} is not finite; the reference cannot start from it"
    )]
    NonFiniteInitialMeasurement {
        /// The measurement that was supplied.
        value: f64,
    },
    /// The snapshot store failed to save or restore.
    #[error("snapshot store failed during {operation} at step {step}: {source}")]
    Store {
        /// `"save"` or `"restore"`.
        operation: &'static str,
        /// The guarded step during which it failed.
        step: u64,
        /// What the store reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The caller's propose or measure closure failed.
    #[error("the {stage} closure failed at step {step}: {source}")]
    Closure {
        /// `"propose"`, `"measure"` or `"measure initial state"`.
        stage: &'static str,
        /// The guarded step during which it failed.
        step: u64,
        /// What the closure reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The runtime safety monitor found a broken guarantee.
    #[error("safety invariant violated: {0}")]
    Safety(#[from] crate::monitor::SafetyViolation),
    /// A driver called the step protocol out of order (a bug in the driver).
    #[error("step protocol called out of order: {called} while it expects {expected}")]
    OutOfOrder {
        /// The call made.
        called: &'static str,
        /// The call the protocol expects next.
        expected: &'static str,
    },
    /// The protocol asked for a measurement of step `step` and none was given.
    #[error("step {step} was to be measured but no measurement was given")]
    MissingMeasurement {
        /// The step.
        step: u64,
    },
    /// The escalation ladder ran out: the run is stopped, the last accepted state is kept.
    #[error("{0}")]
    RecoveryExhausted(Box<crate::protocol::RecoveryExhausted>),
    /// A step was asked of a run that stopped earlier.
    #[error("the run stopped earlier: {0}")]
    Stopped(Box<crate::protocol::RecoveryExhausted>),
    /// An observer could not record a step.
    #[error("step observer failed: {0}")]
    Observer(#[from] ObserverError),
    /// The protocol's state could not be saved or resumed (a checkpoint).
    #[error("protocol state: {0}")]
    State(#[from] crate::protocol::ProtocolStateError),
}

/// An observer (e.g. the JSON-lines writer) failed to record a step.
#[derive(Debug, Error)]
#[error("could not record step {step}: {source}")]
pub struct ObserverError {
    /// The step whose record was lost.
    pub step: u64,
    /// The underlying failure.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}
