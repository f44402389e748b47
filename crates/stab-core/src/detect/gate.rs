use super::Window;
use crate::config::GateConfig;

/// What the gate says about a gradient.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GateVerdict {
    /// Let the optimizer take it (also while the gate is warming up).
    Pass,
    /// Reject it before the optimizer folds it into its state.
    Reject {
        /// The gradient's norm (non-finite norms are always rejected).
        norm: f64,
        /// Its z-score against accepted norms (∞ for a non-finite norm).
        z: f64,
        /// The z-score limit in force.
        limit: f64,
    },
}

/// The pre-step gradient-norm gate (see [`GateConfig`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GradientGate {
    config: GateConfig,
    window: Window,
}

impl GradientGate {
    /// A gate with nothing seen yet.
    pub fn new(config: &GateConfig) -> Self {
        Self {
            config: config.clone(),
            window: Window::new(config.window),
        }
    }

    /// `true` once enough accepted norms have been seen.
    pub fn armed(&self) -> bool {
        self.window.len() >= self.config.warmup
    }

    /// The verdict on a gradient of norm `norm`.
    pub fn check(&self, norm: f64) -> GateVerdict {
        let limit = self.config.z;
        if !norm.is_finite() {
            return GateVerdict::Reject {
                norm,
                z: f64::INFINITY,
                limit,
            };
        }
        if !self.armed() {
            return GateVerdict::Pass;
        }
        let Some((mean, std)) = self.window.mean_and_std() else {
            return GateVerdict::Pass;
        };
        let spread = std.max(self.config.min_relative_spread * mean.abs());
        if spread <= 0.0 {
            return GateVerdict::Pass;
        }
        let z = (norm - mean) / spread;
        if z > limit {
            GateVerdict::Reject { norm, z, limit }
        } else {
            GateVerdict::Pass
        }
    }

    /// Folds in the norm of a gradient whose step was accepted.
    pub fn accept(&mut self, norm: f64) {
        if norm.is_finite() {
            self.window.push(norm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warmed() -> GradientGate {
        let mut g = GradientGate::new(&GateConfig::default());
        for i in 0..32 {
            g.accept(1.0 + 0.01 * f64::from(i % 5));
        }
        g
    }

    #[test]
    fn passes_while_warming_up_but_rejects_non_finite_norms() {
        let g = GradientGate::new(&GateConfig::default());
        assert_eq!(g.check(1e9), GateVerdict::Pass);
        assert!(matches!(g.check(f64::NAN), GateVerdict::Reject { .. }));
        assert!(matches!(g.check(f64::INFINITY), GateVerdict::Reject { .. }));
    }

    #[test]
    fn rejects_a_300x_gradient_and_passes_nominal_ones() {
        let g = warmed();
        assert_eq!(g.check(1.05), GateVerdict::Pass);
        assert_eq!(
            g.check(0.2),
            GateVerdict::Pass,
            "one-sided: small gradients pass"
        );
        match g.check(300.0) {
            GateVerdict::Reject { z, limit, .. } => assert!(z > limit),
            GateVerdict::Pass => panic!("a 300x gradient must be rejected"),
        }
    }

    #[test]
    fn the_spread_floor_keeps_steady_runs_from_rejecting_noise() {
        let mut g = GradientGate::new(&GateConfig::default());
        for _ in 0..32 {
            g.accept(1.0);
        }
        // std = 0; floor 0.1 · mean → z = 11 for 2.1, 13 for 2.3 (limit 12).
        assert_eq!(g.check(2.1), GateVerdict::Pass);
        assert!(matches!(g.check(2.3), GateVerdict::Reject { .. }));
    }

    #[test]
    fn an_unarmed_gate_passes_any_finite_norm_and_the_floor_scales_with_the_mean() {
        let mut g = GradientGate::new(&GateConfig::default());
        for _ in 0..3 {
            g.accept(1.0);
        }
        assert!(!g.armed());
        assert_eq!(
            g.check(1e9),
            GateVerdict::Pass,
            "3 norms of 32: still warming up"
        );
        let mut g = GradientGate::new(&GateConfig::default());
        for _ in 0..32 {
            g.accept(10.0);
        }
        assert!(g.armed());
        // Floor 0.1 · 10 = 1: z = 11 for 21, 13 for 23.
        assert_eq!(g.check(21.0), GateVerdict::Pass);
        assert_eq!(
            g.check(22.0),
            GateVerdict::Pass,
            "z = 12 exactly is not above the limit"
        );
        assert!(matches!(g.check(23.0), GateVerdict::Reject { .. }));
    }
}
