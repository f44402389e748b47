//! The guard's configuration: the controller's, plus where snapshots live and what is checked.

use serde::{Deserialize, Serialize};
use stab_core::{ConfigError, ControllerConfig, SignalKind};

use crate::store::StoreKind;

/// Whether the guard acts on its decisions: stab-core's [`stab_core::Mode`] (`Enforce`, the
/// default, or `Observe`: measure and decide exactly as `Enforce` would, keep every proposal, take
/// no snapshot).
pub type GuardMode = stab_core::Mode;

/// Everything a [`crate::Guard`] needs to know, serde-friendly for experiment configuration.
///
/// The measurement cadence is the controller's `probe_interval` (k): with k = 1 (the paper)
/// every step is measured and decided. With k > 1 only every k-th step is; snapshots follow the
/// same cadence, so a rejection rolls back to the last *probed and accepted* state, discarding
/// the k − 1 unprobed steps before it as well. That divides the probe cost by k, at the price of
/// (a) detecting a bad update up to k − 1 steps late, after training has continued from it,
/// (b) losing up to k − 1 good steps per rollback, and (c) Theorem 7.3 and Propositions 7.4–7.5
/// holding only at probed steps (an unprobed step's state is never checked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// ε, α, the signal, the probe interval, drift detection, the gradient gate, the snapshot
    /// ring and the escalation ladder.
    pub controller: ControllerConfig,
    /// Where the last accepted state is kept.
    pub store: StoreKind,
    /// Enforce decisions (default) or only observe them.
    pub mode: GuardMode,
    /// Fingerprint the state at every acceptance and every restore, and have the safety monitor
    /// check that each restore brings back exactly the last accepted state (Proposition 7.4).
    /// Costs a device-to-host read of the whole state per decided step: off by default, on in
    /// tests.
    pub verify_restores: bool,
    /// Run stab-core's safety monitor on every decision (cheap; on by default).
    pub monitor: bool,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            controller: ControllerConfig::default(),
            store: StoreKind::default(),
            mode: GuardMode::default(),
            verify_restores: false,
            monitor: true,
        }
    }
}

impl GuardConfig {
    /// Sets the controller configuration.
    pub fn with_controller(mut self, controller: ControllerConfig) -> Self {
        self.controller = controller;
        self
    }
    /// Sets ε (shortcut for the controller's).
    pub fn with_epsilon(mut self, epsilon: f64) -> Self {
        self.controller.epsilon = Some(epsilon);
        self
    }
    /// Sets the signal (shortcut for the controller's).
    pub fn with_signal(mut self, signal: SignalKind) -> Self {
        self.controller.signal = signal;
        self
    }
    /// Sets the probe interval k (shortcut for the controller's).
    pub fn with_probe_interval(mut self, interval: u64) -> Self {
        self.controller.probe_interval = interval;
        self
    }
    /// Turns the pre-step gradient gate on or off (shortcut for the controller's).
    pub fn with_gradient_gate(mut self, enabled: bool) -> Self {
        self.controller.gate.enabled = enabled;
        self
    }
    /// Turns drift detection on or off (shortcut for the controller's).
    pub fn with_drift_detection(mut self, enabled: bool) -> Self {
        self.controller.drift.enabled = enabled;
        self
    }
    /// Sets the store.
    pub fn with_store(mut self, store: StoreKind) -> Self {
        self.store = store;
        self
    }
    /// Sets the mode.
    pub fn with_mode(mut self, mode: GuardMode) -> Self {
        self.mode = mode;
        self
    }
    /// Turns fingerprinted restore checks on or off.
    pub fn with_verify_restores(mut self, verify: bool) -> Self {
        self.verify_restores = verify;
        self
    }
    /// Turns the safety monitor on or off.
    pub fn with_monitor(mut self, monitor: bool) -> Self {
        self.monitor = monitor;
        self
    }

    /// Checks the controller configuration.
    ///
    /// # Errors
    /// The controller's [`ConfigError`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.controller.validate()
    }
}
