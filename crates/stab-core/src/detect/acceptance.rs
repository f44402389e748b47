use serde::{Deserialize, Serialize};

use super::Window;
use crate::config::AcceptanceConfig;

/// The scale-free acceptance threshold (see [`AcceptanceConfig`]): ε_t from the spread of the
/// innovations of accepted proposals, floored by a fraction of |ŷ_t| and of |y₀|.
///
/// It keeps accepted innovations only (a rejected one never shifts what counts as nominal) and
/// travels with each snapshot, so a rewind puts back the threshold of the state it rewinds to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleFreeThreshold {
    config: AcceptanceConfig,
    window: Window,
    initial_scale: f64,
}

impl ScaleFreeThreshold {
    /// A threshold for a run whose first measurement was `initial_measurement` (finite).
    pub fn new(config: &AcceptanceConfig, initial_measurement: f64) -> Self {
        Self {
            config: config.clone(),
            window: Window::new(config.window),
            initial_scale: initial_measurement.abs(),
        }
    }

    /// `true` once enough accepted innovations are held for the spread term.
    pub fn warm(&self) -> bool {
        self.window.len() >= self.config.warmup
    }

    /// ε_t for a decision against the reference `reference` (ŷ_t).
    pub fn epsilon(&self, reference: f64) -> f64 {
        let (relative, spread) = if self.warm() {
            let spread = self.window.median_and_spread().map_or(0.0, |(_, s)| s);
            (self.config.relative_floor, spread)
        } else {
            (self.config.young_relative_floor, 0.0)
        };
        (self.config.spread_multiple * spread)
            .max(relative * reference.abs())
            .max(self.config.floor_fraction * self.initial_scale)
    }

    /// Folds in the innovation of an accepted proposal.
    pub fn accept(&mut self, innovation: f64) {
        if innovation.is_finite() {
            self.window.push(innovation);
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
        assert_eq!(t.epsilon(-4.0), 2.0, "|ŷ|: a negative measurement too");
        assert_eq!(t.epsilon(0.0), 0.02, "never below 1 % of |y₀|");
    }

    #[test]
    fn a_warm_threshold_follows_the_spread_of_accepted_innovations() {
        let mut t = ScaleFreeThreshold::new(&config(), 2.0);
        for v in [0.1, -0.1, 0.1, -0.1] {
            t.accept(v);
        }
        assert!(t.warm());
        // Median 0, MAD 0.1 → spread 0.148…, times 6 = 0.889…; 0.1 · |ŷ| = 0.2.
        let spread = 1.482_602_218_505_602 * 0.1;
        assert_eq!(t.epsilon(2.0), 6.0 * spread);
        assert_eq!(t.epsilon(20.0), 2.0, "the relative floor when it is larger");
        t.accept(f64::NAN);
        assert_eq!(
            t.epsilon(2.0),
            6.0 * spread,
            "non-finite innovations are ignored"
        );
    }

    #[test]
    fn scaling_every_value_by_a_power_of_two_scales_epsilon_exactly() {
        let values = [0.31, -0.07, 0.12, -0.2, 0.05, 0.4];
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
