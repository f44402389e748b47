use serde::{Deserialize, Serialize};

use super::Window;
use crate::config::AcceptanceConfig;

/// The scale-free acceptance threshold (see [`AcceptanceConfig`]): a proposal may raise the
/// measurement above the higher of the last accepted measurement and the reference ŷ by at most
/// the larger of `spread_multiple` step-to-step spreads and a fraction of |ŷ| (and of |y₀|).
///
/// It keeps accepted measurements only (a rejected one never shifts what counts as nominal) and
/// travels with each snapshot, so a rewind puts back the threshold of the state it rewinds to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleFreeThreshold {
    config: AcceptanceConfig,
    /// Changes between consecutive accepted measurements.
    steps: Window,
    last_accepted: f64,
    initial_scale: f64,
}

impl ScaleFreeThreshold {
    /// A threshold for a run whose first measurement was `initial_measurement` (finite).
    pub fn new(config: &AcceptanceConfig, initial_measurement: f64) -> Self {
        Self {
            config: config.clone(),
            steps: Window::new(config.window),
            last_accepted: initial_measurement,
            initial_scale: initial_measurement.abs(),
        }
    }

    /// `true` once enough accepted steps are held for the spread term.
    pub fn warm(&self) -> bool {
        self.steps.len() >= self.config.warmup
    }

    /// The last accepted measurement (y₀ before any).
    pub fn last_accepted(&self) -> f64 {
        self.last_accepted
    }

    /// ε_t for a decision against the reference `reference` (ŷ_t):
    /// `max(y_last − ŷ, 0) + max(k · s, r · |ŷ|, f · |y₀|)`.
    pub fn epsilon(&self, reference: f64) -> f64 {
        let (relative, spread) = if self.warm() {
            let spread = self.steps.median_and_spread().map_or(0.0, |(_, s)| s);
            (self.config.relative_floor, spread)
        } else {
            (self.config.young_relative_floor, 0.0)
        };
        let headroom = (self.config.spread_multiple * spread)
            .max(relative * reference.abs())
            .max(self.config.floor_fraction * self.initial_scale);
        let lag = (self.last_accepted - reference).max(0.0);
        lag + headroom
    }

    /// Folds in an accepted measurement.
    pub fn accept(&mut self, measurement: f64) {
        if measurement.is_finite() {
            self.steps.push(measurement - self.last_accepted);
            self.last_accepted = measurement;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AcceptanceConfig {
        AcceptanceConfig {
            window: 8,
            warmup: 4,
            spread_multiple: 6.0,
            relative_floor: 0.1,
            young_relative_floor: 0.5,
            floor_fraction: 0.01,
        }
    }

    #[test]
    fn a_young_threshold_is_the_young_fraction_of_the_reference() {
        let t = ScaleFreeThreshold::new(&config(), 2.0);
        assert!(!t.warm());
        assert_eq!(t.epsilon(2.0), 1.0);
        assert_eq!(
            t.epsilon(-4.0),
            6.0 + 2.0,
            "|ŷ|, above a last measurement of 2"
        );
        assert_eq!(
            t.epsilon(2.5),
            1.25,
            "no lag when ŷ is above the last measurement"
        );
        let t = ScaleFreeThreshold::new(&config(), 0.0);
        assert_eq!(t.epsilon(0.0), 0.0, "y₀ = 0: nothing to scale by");
        let t = ScaleFreeThreshold::new(&config(), -3.0);
        assert_eq!(t.epsilon(-3.0), 1.5);
    }

    #[test]
    fn the_floor_keeps_a_fraction_of_the_first_measurement() {
        let t = ScaleFreeThreshold::new(&config(), 2.0);
        assert_eq!(t.epsilon(0.0), 2.0 + 0.02, "lag 2, floor 1 % of |y₀|");
    }

    #[test]
    fn a_warm_threshold_follows_the_spread_of_accepted_steps() {
        let mut t = ScaleFreeThreshold::new(&config(), 2.0);
        for y in [2.1, 2.0, 2.1, 2.0] {
            t.accept(y);
        }
        assert!(t.warm());
        assert_eq!(t.last_accepted(), 2.0);
        // Steps ±0.1: median 0, MAD 0.1 → spread 0.148…; times 6 = 0.889…; 0.1 · |ŷ| = 0.2.
        let spread = 1.482_602_218_505_602 * 0.1;
        let headroom = 6.0 * spread;
        assert!(
            (t.epsilon(2.0) - headroom).abs() < 1e-12,
            "{}",
            t.epsilon(2.0)
        );
        assert_eq!(t.epsilon(20.0), 2.0, "the relative floor when it is larger");
        let lagging = t.epsilon(1.5);
        assert!((lagging - (0.5 + headroom)).abs() < 1e-12, "{lagging}");
        t.accept(f64::NAN);
        assert_eq!(
            t.last_accepted(),
            2.0,
            "non-finite measurements are ignored"
        );
    }

    #[test]
    fn a_steady_trend_has_no_spread() {
        let mut t = ScaleFreeThreshold::new(&config(), 3.0);
        for i in 1..=6 {
            t.accept(3.0 - 0.25 * f64::from(i));
        }
        // Every step is −0.25: MAD 0, so the relative floor decides (0.1 · 2 = 0.2).
        assert_eq!(t.epsilon(2.0), 0.2);
    }

    #[test]
    fn scaling_every_value_by_a_power_of_two_scales_epsilon_exactly() {
        let values = [2.31, 2.07, 2.12, 1.8, 1.85, 1.4];
        for k in -20..=20 {
            let c = 2f64.powi(k);
            let mut plain = ScaleFreeThreshold::new(&config(), 2.3);
            let mut scaled = ScaleFreeThreshold::new(&config(), 2.3 * c);
            for v in values {
                assert_eq!(scaled.epsilon(1.7 * c), plain.epsilon(1.7) * c);
                plain.accept(v);
                scaled.accept(v * c);
            }
        }
    }
}
