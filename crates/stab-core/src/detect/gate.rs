use serde::{Deserialize, Serialize};

use super::Window;
use crate::config::GateConfig;

/// Which statistic a gate judged a norm by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GateTest {
    /// The z-score against the accepted norms (a warm gate).
    #[default]
    ZScore,
    /// The ratio to the median of the accepted norms (a young gate).
    MedianRatio,
    /// The norm is not finite (rejected at any age).
    NonFinite,
}

/// What a gate says about a norm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GateVerdict {
    /// Let it through (also before the gate has seen enough accepted norms).
    Pass,
    /// Reject it.
    Reject {
        /// The norm (non-finite norms are always rejected).
        norm: f64,
        /// Its score: the z-score or the ratio to the median, as `test` says (∞ for a
        /// non-finite norm).
        score: f64,
        /// The limit of that score in force.
        limit: f64,
        /// The statistic that judged it.
        test: GateTest,
    },
}

/// A gate on a norm that must not jump (see [`GateConfig`]): the gradient gate before the
/// optimizer step, the update gate after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormGate {
    config: GateConfig,
    window: Window,
}

impl NormGate {
    /// A gate with nothing seen yet.
    pub fn new(config: &GateConfig) -> Self {
        Self {
            config: config.clone(),
            window: Window::new(config.window),
        }
    }

    /// `true` once enough accepted norms have been seen for the z-test.
    pub fn armed(&self) -> bool {
        self.window.len() >= self.config.warmup
    }

    /// `true` once enough accepted norms have been seen for any test (young or warm).
    pub fn watching(&self) -> bool {
        self.window.len() >= self.config.min_history
    }

    /// The verdict on a norm.
    pub fn check(&self, norm: f64) -> GateVerdict {
        if !norm.is_finite() {
            return GateVerdict::Reject {
                norm,
                score: f64::INFINITY,
                limit: self.config.z,
                test: GateTest::NonFinite,
            };
        }
        if self.armed() {
            return self.z_test(norm);
        }
        if self.watching() {
            return self.ratio_test(norm);
        }
        GateVerdict::Pass
    }

    /// A robust z-score: against the median and the scaled median absolute deviation, so that
    /// one outlier let through (after `patience`) does not blind the test to the next ones, as it
    /// would a mean and standard deviation.
    fn z_test(&self, norm: f64) -> GateVerdict {
        let limit = self.config.z;
        let Some((median, spread)) = self.window.median_and_spread() else {
            return GateVerdict::Pass;
        };
        let spread = spread.max(self.config.min_relative_spread * median.abs());
        if spread <= 0.0 {
            return GateVerdict::Pass;
        }
        let score = (norm - median) / spread;
        if score > limit {
            GateVerdict::Reject {
                norm,
                score,
                limit,
                test: GateTest::ZScore,
            }
        } else {
            GateVerdict::Pass
        }
    }

    fn ratio_test(&self, norm: f64) -> GateVerdict {
        let limit = self.config.early_ratio;
        let Some((median, _)) = self.window.median_and_spread() else {
            return GateVerdict::Pass;
        };
        if median <= 0.0 {
            return GateVerdict::Pass;
        }
        let score = norm / median;
        if score > limit {
            GateVerdict::Reject {
                norm,
                score,
                limit,
                test: GateTest::MedianRatio,
            }
        } else {
            GateVerdict::Pass
        }
    }

    /// The largest norm the gate passes now (`None` before `min_history` accepted norms, or when
    /// the statistics give no bound).
    pub fn ceiling(&self) -> Option<f64> {
        let (median, spread) = self.window.median_and_spread()?;
        if self.armed() {
            let spread = spread.max(self.config.min_relative_spread * median.abs());
            (spread > 0.0).then_some(median + self.config.z * spread)
        } else if self.watching() {
            (median > 0.0).then_some(self.config.early_ratio * median)
        } else {
            None
        }
    }

    /// Forgets every accepted norm: the gate is young again (the norms changed for good).
    pub fn restart(&mut self) {
        self.window = Window::new(self.config.window);
    }

    /// Folds in the norm of a step that was accepted.
    pub fn accept(&mut self, norm: f64) {
        if norm.is_finite() {
            self.window.push(norm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warmed() -> NormGate {
        let mut g = NormGate::new(&GateConfig::default());
        for i in 0..32 {
            g.accept(1.0 + 0.01 * f64::from(i % 5));
        }
        g
    }

    fn rejected(verdict: GateVerdict) -> Option<(f64, GateTest)> {
        match verdict {
            GateVerdict::Reject { score, test, .. } => Some((score, test)),
            GateVerdict::Pass => None,
        }
    }

    #[test]
    fn passes_before_any_history_but_rejects_non_finite_norms() {
        let g = NormGate::new(&GateConfig::default());
        assert!(!g.watching() && !g.armed());
        assert_eq!(g.check(1e9), GateVerdict::Pass);
        for norm in [f64::NAN, f64::INFINITY] {
            assert_eq!(
                rejected(g.check(norm)),
                Some((f64::INFINITY, GateTest::NonFinite))
            );
        }
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
            GateVerdict::Reject {
                score, limit, test, ..
            } => {
                assert!(score > limit);
                assert_eq!(test, GateTest::ZScore);
            }
            GateVerdict::Pass => panic!("a 300x gradient must be rejected"),
        }
    }

    #[test]
    fn the_spread_floor_keeps_steady_runs_from_rejecting_noise() {
        let mut g = NormGate::new(&GateConfig::default());
        for _ in 0..32 {
            g.accept(1.0);
        }
        // std = 0; floor 0.1 · mean → z = 11 for 2.1, 13 for 2.3 (limit 12).
        assert_eq!(g.check(2.1), GateVerdict::Pass);
        assert!(matches!(g.check(2.3), GateVerdict::Reject { .. }));
    }

    #[test]
    fn a_young_gate_judges_the_ratio_to_the_median_from_its_third_norm() {
        let mut g = NormGate::new(&GateConfig::default());
        g.accept(4.0);
        g.accept(4.0);
        assert!(!g.watching());
        assert_eq!(g.check(1200.0), GateVerdict::Pass, "two norms: not yet");
        g.accept(100.0);
        assert!(g.watching() && !g.armed());
        // Median 4 (robust to the one outlier among three): limit 8 · 4 = 32.
        assert_eq!(g.check(32.0), GateVerdict::Pass, "ratio 8 is not above 8");
        assert_eq!(
            rejected(g.check(32.5)),
            Some((32.5 / 4.0, GateTest::MedianRatio))
        );
        assert_eq!(
            rejected(g.check(1200.0)),
            Some((300.0, GateTest::MedianRatio))
        );
        assert_eq!(g.check(0.001), GateVerdict::Pass, "one-sided");
    }

    #[test]
    fn a_zero_median_or_mean_passes_instead_of_dividing_by_zero() {
        let mut g = NormGate::new(&GateConfig::default());
        for _ in 0..3 {
            g.accept(0.0);
        }
        assert_eq!(g.check(5.0), GateVerdict::Pass);
        for _ in 0..29 {
            g.accept(0.0);
        }
        assert!(g.armed());
        assert_eq!(g.check(5.0), GateVerdict::Pass);
    }

    #[test]
    fn the_z_test_takes_over_at_warmup_and_the_floor_scales_with_the_mean() {
        let mut g = NormGate::new(&GateConfig::default());
        for _ in 0..31 {
            g.accept(10.0);
        }
        assert!(!g.armed());
        // Young: ratio limit 8 → 80 passes, 81 does not.
        assert_eq!(g.check(80.0), GateVerdict::Pass);
        assert!(matches!(
            rejected(g.check(81.0)),
            Some((_, GateTest::MedianRatio))
        ));
        g.accept(10.0);
        assert!(g.armed());
        // Floor 0.1 · 10 = 1: z = 11 for 21, 13 for 23.
        assert_eq!(g.check(21.0), GateVerdict::Pass);
        assert_eq!(
            g.check(22.0),
            GateVerdict::Pass,
            "z = 12 exactly is not above the limit"
        );
        assert_eq!(rejected(g.check(23.0)), Some((13.0, GateTest::ZScore)));
    }

    #[test]
    fn the_ceiling_is_the_largest_norm_that_passes_at_each_age() {
        let mut g = NormGate::new(&GateConfig::default());
        g.accept(2.0);
        g.accept(2.0);
        assert_eq!(g.ceiling(), None, "not watching yet");
        g.accept(3.0);
        // Young: 8 × median 2.
        assert_eq!(g.ceiling(), Some(16.0));
        assert_eq!(g.check(16.0), GateVerdict::Pass);
        assert!(matches!(g.check(16.5), GateVerdict::Reject { .. }));
        for _ in 0..29 {
            g.accept(2.0);
        }
        assert!(g.armed());
        // Warm: median 2, MAD 0 → spread floored at 0.1 · 2; 2 + 12 · 0.2 = 4.4.
        let ceiling = g.ceiling().unwrap();
        assert!((ceiling - 4.4).abs() < 1e-12, "{ceiling}");
        assert_eq!(g.check(ceiling - 1e-9), GateVerdict::Pass);
        assert!(matches!(
            g.check(ceiling + 1e-9),
            GateVerdict::Reject { .. }
        ));
        // With a spread above the floor: values 1 and 3 alternate (median 2, MAD 1).
        let mut g = NormGate::new(&GateConfig::default());
        for i in 0..34 {
            g.accept(if i % 2 == 0 { 1.0 } else { 3.0 });
        }
        let (median, spread) = (2.0, 1.482_602_218_505_602);
        assert_eq!(g.ceiling(), Some(median + 12.0 * spread));
        // No bound from zeros.
        let mut g = NormGate::new(&GateConfig::default());
        for _ in 0..3 {
            g.accept(0.0);
        }
        assert_eq!(g.ceiling(), None);
        for _ in 0..29 {
            g.accept(0.0);
        }
        assert_eq!(g.ceiling(), None);
        g.restart();
        assert!(!g.watching(), "a restarted gate is young");
    }

    #[test]
    fn the_verdict_does_not_depend_on_the_unit_of_the_norms() {
        for scale in [1e-6, 0.5, 1.0, 2.0, 1e6] {
            let mut g = NormGate::new(&GateConfig::default());
            for (i, v) in [4.0, 3.5, 4.2, 3.9].into_iter().enumerate() {
                g.accept(v * scale);
                if i >= 2 {
                    assert_eq!(g.check(30.0 * scale), GateVerdict::Pass);
                    assert!(matches!(g.check(60.0 * scale), GateVerdict::Reject { .. }));
                }
            }
        }
    }
}
