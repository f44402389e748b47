//! Serializable controller configuration, validated before use.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Which admissible innovation signal drives the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SignalKind {
    /// The paper's signal: ν = y(θ_prop) − ŷ with ŷ an EWMA of accepted probe measurements.
    #[default]
    Probe,
    /// The naive baseline (§9.5): z-score of the training loss against its recent accepted window.
    LossSpike,
    /// z-score of the gradient norm against its recent accepted window.
    GradientNormSpike,
    /// Drop of gradient agreement (cosine with a reference minibatch's gradient) below its EWMA.
    GradientAgreement,
}

/// Everything the controller needs to know, in one serde-friendly struct.
///
/// Build it with [`ControllerConfig::default`] and the `with_*` setters, or deserialize it; call
/// [`ControllerConfig::validate`] (the controller does so too) before use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerConfig {
    /// Acceptance threshold ε: a proposal is accepted iff ν ≤ ε. Default 0.5 (the only published value,
    /// from the paper's reference code).
    pub epsilon: f64,
    /// EWMA smoothing factor α ∈ (0, 1) of the reference ŷ. Default 0.1 (the reference code's value).
    pub alpha: f64,
    /// Which signal computes ν.
    pub signal: SignalKind,
    /// Measure every `probe_interval` steps (1 = every step, the paper). Snapshots follow the same
    /// cadence, so a rejection rolls back to the last probed-and-accepted state.
    pub probe_interval: u64,
    /// Length of the accepted-history window used by the spike signals.
    pub spike_window: usize,
    /// Raise an escalation once more than this many proposals in a row were rejected.
    pub max_consecutive_rejections: u64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            epsilon: 0.5,
            alpha: 0.1,
            signal: SignalKind::Probe,
            probe_interval: 1,
            spike_window: 20,
            max_consecutive_rejections: 25,
        }
    }
}

impl ControllerConfig {
    /// Sets ε.
    pub fn with_epsilon(mut self, epsilon: f64) -> Self {
        self.epsilon = epsilon;
        self
    }
    /// Sets α.
    pub fn with_alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }
    /// Sets the signal.
    pub fn with_signal(mut self, signal: SignalKind) -> Self {
        self.signal = signal;
        self
    }
    /// Sets the probe interval.
    pub fn with_probe_interval(mut self, probe_interval: u64) -> Self {
        self.probe_interval = probe_interval;
        self
    }
    /// Sets the spike window length.
    pub fn with_spike_window(mut self, spike_window: usize) -> Self {
        self.spike_window = spike_window;
        self
    }
    /// Sets the escalation limit.
    pub fn with_max_consecutive_rejections(mut self, limit: u64) -> Self {
        self.max_consecutive_rejections = limit;
        self
    }

    /// Checks every field.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first bad field and its value: ε must be finite and > 0,
    /// α in (0, 1), the probe interval and the escalation limit ≥ 1, the spike window ≥ 2.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(ConfigError::Epsilon {
                value: self.epsilon,
            });
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(ConfigError::Alpha { value: self.alpha });
        }
        if self.probe_interval < 1 {
            return Err(ConfigError::TooSmall {
                field: "probe_interval",
                value: self.probe_interval,
                minimum: 1,
            });
        }
        if self.spike_window < 2 {
            return Err(ConfigError::TooSmall {
                field: "spike_window",
                value: self.spike_window as u64,
                minimum: 2,
            });
        }
        if self.max_consecutive_rejections < 1 {
            return Err(ConfigError::TooSmall {
                field: "max_consecutive_rejections",
                value: self.max_consecutive_rejections,
                minimum: 1,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert_eq!(ControllerConfig::default().validate(), Ok(()));
    }

    #[test]
    fn bad_values_are_named_in_the_error() {
        let base = ControllerConfig::default();
        for eps in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = base.clone().with_epsilon(eps).validate().unwrap_err();
            assert!(matches!(err, ConfigError::Epsilon { .. }), "{err}");
            assert!(err.to_string().contains("epsilon"));
        }
        for alpha in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
            let err = base.clone().with_alpha(alpha).validate().unwrap_err();
            assert!(matches!(err, ConfigError::Alpha { .. }), "{err}");
        }
        let err = base.clone().with_probe_interval(0).validate().unwrap_err();
        assert!(err.to_string().contains("probe_interval = 0"), "{err}");
        let err = base.clone().with_spike_window(1).validate().unwrap_err();
        assert!(err.to_string().contains("spike_window = 1"), "{err}");
        let err = base
            .with_max_consecutive_rejections(0)
            .validate()
            .unwrap_err();
        assert!(
            err.to_string().contains("max_consecutive_rejections"),
            "{err}"
        );
    }

    #[test]
    fn config_round_trips_through_json_and_rejects_unknown_fields() {
        let config = ControllerConfig::default()
            .with_epsilon(0.25)
            .with_signal(SignalKind::LossSpike);
        let json = serde_json::to_string(&config).unwrap();
        let back: ControllerConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, config);
        let partial: ControllerConfig = serde_json::from_str(r#"{"epsilon": 0.3}"#).unwrap();
        assert_eq!(partial.epsilon, 0.3);
        assert_eq!(partial.alpha, 0.1);
        assert!(serde_json::from_str::<ControllerConfig>(r#"{"epsilonn": 0.3}"#).is_err());
    }
}
