//! Serializable controller configuration, validated before use.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

mod recovery;

use recovery::{GRADIENT_GATE_FIELDS, UPDATE_GATE_FIELDS};

/// ε for the signals whose innovations have no unit (the z-scores of the spike signals, the drop
/// of gradient agreement) when [`ControllerConfig::epsilon`] is `None`, and the paper's ε of
/// [`ControllerConfig::algorithm_1`] (the only published value, from its reference code).
pub const PAPER_EPSILON: f64 = 0.5;

pub use recovery::{
    AcceptanceConfig, DriftConfig, GateConfig, LadderConfig, MAX_LADDER_COUNT, MAX_RING_AGE,
    MAX_RING_LEVELS, MAX_RUNGS, MAX_WINDOW, RingConfig, Rung,
};

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
    /// Acceptance threshold ε: a proposal is accepted iff ν ≤ ε.
    ///
    /// `None` (the default): for the probe signal, whose innovations are in the measurement's
    /// unit, ε follows the scale of the run ([`AcceptanceConfig`]): no unit, so no tuning per
    /// loss; for the other signals, whose innovations have no unit, [`PAPER_EPSILON`].
    /// `Some(ε)`: the paper's absolute rule with that ε, in the measurement's unit.
    pub epsilon: Option<f64>,
    /// How ε follows the scale of the measurements when `epsilon` is `None`.
    pub acceptance: AcceptanceConfig,
    /// EWMA smoothing factor α ∈ (0, 1) of the reference ŷ. Default 0.1 (the reference code's value).
    pub alpha: f64,
    /// Which signal computes ν.
    pub signal: SignalKind,
    /// Measure every `probe_interval` steps (1 = every step, the paper). Snapshots follow the same
    /// cadence, so a rejection rolls back to the last probed-and-accepted state.
    pub probe_interval: u64,
    /// Length of the accepted-history window used by the spike signals (2 ..= [`MAX_WINDOW`]).
    pub spike_window: usize,
    /// Drift detection over accepted innovations (damage in small steps).
    pub drift: DriftConfig,
    /// The pre-step gradient-norm gate.
    pub gate: GateConfig,
    /// The gate on the size of the update, ‖θ_prop − θ_t‖, judged before the probe: catches a
    /// step too large for its gradient (a learning-rate spike), which the gradient gate cannot see
    /// and the probe loss may not show. Consulted when the driver supplies the update's norm.
    pub update_gate: GateConfig,
    /// Snapshots kept at spaced ages, the targets of a rewind.
    pub ring: RingConfig,
    /// What to do when proposals keep being rejected.
    pub ladder: LadderConfig,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            epsilon: None,
            acceptance: AcceptanceConfig::default(),
            alpha: 0.1,
            signal: SignalKind::Probe,
            probe_interval: 1,
            spike_window: 20,
            drift: DriftConfig::default(),
            gate: GateConfig::default(),
            update_gate: GateConfig::default(),
            ring: RingConfig::default(),
            ladder: LadderConfig::default(),
        }
    }
}

impl ControllerConfig {
    /// Algorithm 1 exactly as the paper states it: the probe signal and `ν ≤ ε` with the paper's
    /// absolute ε = [`PAPER_EPSILON`], no drift detector, no gradient or update gate, no snapshot
    /// ring, no escalation ladder. A rejection always
    /// restores the last accepted state, which can freeze a run whose accepted optimizer state
    /// was damaged; use it to compare with the paper, not to protect a run.
    pub fn algorithm_1() -> Self {
        let mut config = Self {
            epsilon: Some(PAPER_EPSILON),
            ..Self::default()
        };
        config.drift.enabled = false;
        config.gate.enabled = false;
        config.update_gate.enabled = false;
        config.ring.ages.clear();
        config.ladder.enabled = false;
        config
    }

    /// Sets an absolute ε (the paper's rule), in the measurement's unit.
    pub fn with_epsilon(mut self, epsilon: f64) -> Self {
        self.epsilon = Some(epsilon);
        self
    }
    /// Lets ε follow the scale of the run (the default; see [`AcceptanceConfig`]).
    pub fn with_scale_free_epsilon(mut self, acceptance: AcceptanceConfig) -> Self {
        self.epsilon = None;
        self.acceptance = acceptance;
        self
    }
    /// Sets the update-size gate's configuration.
    pub fn with_update_gate(mut self, update_gate: GateConfig) -> Self {
        self.update_gate = update_gate;
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
    /// Sets the drift detector's configuration.
    pub fn with_drift(mut self, drift: DriftConfig) -> Self {
        self.drift = drift;
        self
    }
    /// Turns the drift detector on or off.
    pub fn with_drift_detection(mut self, enabled: bool) -> Self {
        self.drift.enabled = enabled;
        self
    }
    /// Sets the gradient gate's configuration.
    pub fn with_gate(mut self, gate: GateConfig) -> Self {
        self.gate = gate;
        self
    }
    /// Turns the gradient gate on or off.
    pub fn with_gradient_gate(mut self, enabled: bool) -> Self {
        self.gate.enabled = enabled;
        self
    }
    /// Sets the snapshot ring.
    pub fn with_ring(mut self, ring: RingConfig) -> Self {
        self.ring = ring;
        self
    }
    /// Sets the escalation ladder.
    pub fn with_ladder(mut self, ladder: LadderConfig) -> Self {
        self.ladder = ladder;
        self
    }

    /// Whether ε follows the scale of the run: no absolute ε was given and the signal's
    /// innovations are in the measurement's unit (the probe signal).
    pub fn scale_free(&self) -> bool {
        self.epsilon.is_none() && self.signal == SignalKind::Probe
    }

    /// ε of the absolute rule: the given one, or [`PAPER_EPSILON`] (the starting value of a
    /// scale-free rule, which the protocol replaces before the first decision).
    pub fn absolute_epsilon(&self) -> f64 {
        self.epsilon.unwrap_or(PAPER_EPSILON)
    }

    /// Checks every field.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first bad field and its value: ε (if given) must be finite and > 0,
    /// α in (0, 1), the probe interval ≥ 1, the spike window in 2 ..= [`MAX_WINDOW`], and the
    /// recovery settings each within their bounds (no value a configuration file can hold makes
    /// the controller panic or allocate without limit).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(epsilon) = self.epsilon
            && !(epsilon.is_finite() && epsilon > 0.0)
        {
            return Err(ConfigError::Epsilon { value: epsilon });
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
        if self.spike_window > MAX_WINDOW {
            return Err(ConfigError::TooLarge {
                field: "spike_window",
                value: self.spike_window as u64,
                maximum: MAX_WINDOW as u64,
            });
        }
        self.drift.validate()?;
        self.acceptance.validate()?;
        self.gate.validate_as(&GRADIENT_GATE_FIELDS)?;
        self.update_gate.validate_as(&UPDATE_GATE_FIELDS)?;
        self.ring.validate()?;
        self.ladder.validate()
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
            .clone()
            .with_spike_window(usize::MAX)
            .validate()
            .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::TooLarge {
                    field: "spike_window",
                    ..
                }
            ),
            "{err}"
        );
        let ring = RingConfig { ages: vec![8, 8] };
        let err = base.clone().with_ring(ring).validate().unwrap_err();
        assert!(err.to_string().contains("ring.ages = 8"), "{err}");
        let ring = RingConfig {
            ages: vec![u64::MAX],
        };
        let err = base.clone().with_ring(ring).validate().unwrap_err();
        assert!(matches!(err, ConfigError::TooLarge { .. }), "{err}");
        let drift = DriftConfig {
            window: usize::MAX,
            ..DriftConfig::default()
        };
        let err = base.clone().with_drift(drift).validate().unwrap_err();
        assert!(err.to_string().contains("drift.window"), "{err}");
        let gate = GateConfig {
            z: f64::NAN,
            ..GateConfig::default()
        };
        let err = base.clone().with_gate(gate).validate().unwrap_err();
        assert!(err.to_string().contains("gate.z"), "{err}");
        // Bounds are inclusive; infinities and negative spreads are refused.
        assert_eq!(
            base.clone().with_spike_window(MAX_WINDOW).validate(),
            Ok(())
        );
        let err = base
            .clone()
            .with_spike_window(MAX_WINDOW + 1)
            .validate()
            .unwrap_err();
        assert!(matches!(err, ConfigError::TooLarge { .. }), "{err}");
        let ring = RingConfig {
            ages: vec![2, MAX_RING_AGE],
        };
        assert_eq!(base.clone().with_ring(ring).validate(), Ok(()));
        for z in [f64::INFINITY, 0.0, -1.0] {
            let gate = GateConfig {
                z,
                ..GateConfig::default()
            };
            let err = base.clone().with_gate(gate).validate().unwrap_err();
            assert!(
                matches!(
                    err,
                    ConfigError::NotPositive {
                        field: "gate.z",
                        ..
                    }
                ),
                "{err}"
            );
        }
        for slack in [-1.0, f64::INFINITY, f64::NAN] {
            let drift = DriftConfig {
                slack_spreads: slack,
                ..DriftConfig::default()
            };
            let err = base.clone().with_drift(drift).validate().unwrap_err();
            assert!(
                matches!(
                    err,
                    ConfigError::Negative {
                        field: "drift.slack_spreads",
                        ..
                    }
                ),
                "{err}"
            );
        }
        for ratio in [1.0, 0.5, f64::NAN, f64::INFINITY] {
            let gate = GateConfig {
                early_ratio: ratio,
                ..GateConfig::default()
            };
            let err = base.clone().with_update_gate(gate).validate().unwrap_err();
            assert!(
                matches!(err, ConfigError::NotAbove { field: "update_gate.early_ratio", bound, .. } if bound == 1.0),
                "{err}"
            );
        }
        let gate = GateConfig {
            min_history: 0,
            ..GateConfig::default()
        };
        let err = base.clone().with_gate(gate.clone()).validate().unwrap_err();
        assert!(err.to_string().contains("gate.min_history = 0"), "{err}");
        let err = gate.validate().unwrap_err();
        assert!(err.to_string().contains("gate.min_history = 0"), "{err}");
        assert_eq!(GateConfig::default().validate(), Ok(()));
        let err = base.clone().with_update_gate(gate).validate().unwrap_err();
        assert!(
            err.to_string().contains("update_gate.min_history = 0"),
            "{err}"
        );
        let gate = GateConfig {
            early_ratio: 1.0 + 1e-9,
            min_history: 1,
            ..GateConfig::default()
        };
        assert_eq!(base.clone().with_update_gate(gate).validate(), Ok(()));
        for (edit, field) in [
            (
                (|a: &mut AcceptanceConfig| a.window = 1) as fn(&mut AcceptanceConfig),
                "acceptance.window",
            ),
            (|a| a.warmup = 65, "acceptance.warmup"),
            (|a| a.spread_multiple = -1.0, "acceptance.spread_multiple"),
            (|a| a.relative_floor = 0.0, "acceptance.relative_floor"),
            (
                |a| a.young_relative_floor = f64::NAN,
                "acceptance.young_relative_floor",
            ),
            (
                |a| a.floor_fraction = f64::INFINITY,
                "acceptance.floor_fraction",
            ),
        ] {
            let mut acceptance = AcceptanceConfig::default();
            edit(&mut acceptance);
            let err = base
                .clone()
                .with_scale_free_epsilon(acceptance)
                .validate()
                .unwrap_err();
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
        assert_eq!(AcceptanceConfig::default().validate(), Ok(()));
        let err = AcceptanceConfig {
            window: 0,
            ..AcceptanceConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("acceptance.window = 0"), "{err}");
        let zero_floors = AcceptanceConfig {
            spread_multiple: 0.0,
            floor_fraction: 0.0,
            warmup: 64,
            ..AcceptanceConfig::default()
        };
        assert_eq!(
            base.clone().with_scale_free_epsilon(zero_floors).validate(),
            Ok(())
        );
        let drift = DriftConfig {
            slack_spreads: 0.0,
            ..DriftConfig::default()
        };
        assert_eq!(base.clone().with_drift(drift).validate(), Ok(()));
        let ladder = LadderConfig {
            rejection_window: 5,
            ..LadderConfig::default()
        };
        let err = base.clone().with_ladder(ladder).validate().unwrap_err();
        assert!(
            err.to_string()
                .contains("ladder.rejection_window = 5: must be at least 12"),
            "{err}"
        );
        let ladder = LadderConfig {
            rejections_per_rung: 0,
            rejection_window: 0,
            ..LadderConfig::default()
        };
        let err = base.with_ladder(ladder).validate().unwrap_err();
        assert!(
            err.to_string().contains("ladder.rejections_per_rung = 0"),
            "{err}"
        );
    }

    #[test]
    fn each_builder_sets_its_own_field_and_nothing_else() {
        let base = ControllerConfig::default();
        let drift = DriftConfig {
            enabled: true,
            ..DriftConfig::default()
        };
        let gate = GateConfig {
            z: 3.0,
            ..GateConfig::default()
        };
        let ring = RingConfig { ages: vec![4] };
        let ladder = LadderConfig {
            cooldown: 3,
            ..LadderConfig::default()
        };
        let built = base
            .clone()
            .with_epsilon(0.25)
            .with_alpha(0.3)
            .with_signal(SignalKind::GradientAgreement)
            .with_probe_interval(4)
            .with_spike_window(7)
            .with_drift(drift.clone())
            .with_gate(gate.clone())
            .with_ring(ring.clone())
            .with_ladder(ladder.clone());
        let expected = ControllerConfig {
            epsilon: Some(0.25),
            acceptance: AcceptanceConfig::default(),
            alpha: 0.3,
            signal: SignalKind::GradientAgreement,
            probe_interval: 4,
            spike_window: 7,
            drift,
            gate,
            update_gate: GateConfig::default(),
            ring,
            ladder,
        };
        assert_eq!(built, expected);
        let acceptance = AcceptanceConfig {
            spread_multiple: 3.0,
            ..AcceptanceConfig::default()
        };
        let update_gate = GateConfig {
            early_ratio: 4.0,
            ..GateConfig::default()
        };
        let scale_free = built
            .clone()
            .with_scale_free_epsilon(acceptance.clone())
            .with_update_gate(update_gate.clone());
        assert_eq!(
            scale_free,
            ControllerConfig {
                epsilon: None,
                acceptance,
                update_gate,
                ..built
            }
        );
        assert_eq!(scale_free.absolute_epsilon(), PAPER_EPSILON);
        assert_eq!(
            ControllerConfig::default()
                .with_epsilon(0.3)
                .absolute_epsilon(),
            0.3
        );
        assert!(
            !ControllerConfig::default()
                .with_signal(SignalKind::LossSpike)
                .scale_free(),
            "scores have no unit: the absolute rule"
        );
        let toggled = base
            .clone()
            .with_drift_detection(!base.drift.enabled)
            .with_gradient_gate(!base.gate.enabled);
        assert_eq!(toggled.drift.enabled, !base.drift.enabled);
        assert_eq!(toggled.gate.enabled, !base.gate.enabled);
        assert_eq!(
            toggled
                .with_drift_detection(base.drift.enabled)
                .with_gradient_gate(base.gate.enabled),
            base
        );
    }

    #[test]
    fn algorithm_1_is_the_paper_controller_alone() {
        let config = ControllerConfig::algorithm_1();
        let default = ControllerConfig::default();
        assert!(!config.drift.enabled && !config.gate.enabled && !config.ladder.enabled);
        assert!(!config.update_gate.enabled && default.update_gate.enabled);
        assert_eq!(config.epsilon, Some(PAPER_EPSILON));
        assert_eq!(
            default.epsilon, None,
            "the default ε follows the scale of the run"
        );
        assert!(default.scale_free() && !config.scale_free());
        assert!(config.ring.ages.is_empty());
        assert!(default.gate.enabled && default.ladder.enabled && !default.ring.ages.is_empty());
        assert_eq!(
            (
                config.alpha,
                config.signal,
                config.probe_interval,
                config.spike_window
            ),
            (
                default.alpha,
                default.signal,
                default.probe_interval,
                default.spike_window
            )
        );
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn the_smallest_sizes_are_valid() {
        let config = ControllerConfig::default()
            .with_probe_interval(1)
            .with_spike_window(2);
        assert_eq!(config.validate(), Ok(()));
        let config = config.with_spike_window(MAX_WINDOW);
        assert_eq!(config.validate(), Ok(()));
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
        assert_eq!(partial.epsilon, Some(0.3));
        assert_eq!(partial.alpha, 0.1);
        assert!(serde_json::from_str::<ControllerConfig>(r#"{"epsilonn": 0.3}"#).is_err());
    }
}
