use serde::{Deserialize, Serialize};

use super::Window;
use crate::config::DriftConfig;

/// A drift alarm: the cumulative evidence of the accepted innovations since `onset` passed the
/// alarm level.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DriftAlarm {
    /// The CUSUM statistic S including the proposal that raised the alarm.
    pub statistic: f64,
    /// The alarm level h in force.
    pub threshold: f64,
    /// Position (steps completed) of the first state the drift produced: the state the drift's
    /// first accepted step created. A rewind must go to a snapshot older than this.
    pub onset: u64,
}

/// One-sided CUSUM over the innovations of accepted proposals (see [`DriftConfig`]).
///
/// [`DriftDetector::check`] looks at a proposal that passed `ν ≤ ε` without changing anything;
/// [`DriftDetector::accept`] folds it in once it is committed. A proposal rejected for any reason
/// never enters the statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftDetector {
    config: DriftConfig,
    window: Window,
    statistic: f64,
    /// Position of the first state of the current excursion (S > 0), if any.
    excursion_onset: Option<u64>,
}

impl DriftDetector {
    /// A detector with nothing seen yet.
    pub fn new(config: &DriftConfig) -> Self {
        Self {
            config: config.clone(),
            window: Window::new(config.window),
            statistic: 0.0,
            excursion_onset: None,
        }
    }

    /// The CUSUM statistic S.
    pub fn statistic(&self) -> f64 {
        self.statistic
    }

    /// Position of the first state of the current excursion, while S > 0.
    pub fn excursion_onset(&self) -> Option<u64> {
        self.excursion_onset
    }

    /// `true` once enough accepted innovations have been seen.
    pub fn armed(&self) -> bool {
        self.window.len() >= self.config.warmup
    }

    /// κ and h for threshold ε, once armed. `escalation` (the ladder's level) raises h: a run
    /// that just rewound needs stronger evidence before it rewinds again.
    pub fn levels(&self, epsilon: f64, escalation: u32) -> Option<(f64, f64)> {
        if !self.armed() {
            return None;
        }
        let (median, spread) = self.window.median_and_spread()?;
        // A slack below zero would let a plateau (ν ≈ 0 after a descent, when the median was
        // negative) accumulate evidence forever.
        let slack = (median + self.config.slack_spreads * spread).max(0.0);
        let alarm = (self.config.alarm_spreads * spread)
            .max(self.config.min_alarm_epsilons * epsilon)
            * f64::from(escalation.saturating_add(1));
        Some((slack, alarm))
    }

    fn next_statistic(&self, innovation: f64, slack: f64) -> f64 {
        (self.statistic + innovation - slack).max(0.0)
    }

    /// Would committing a proposal with innovation ν (finite, already ≤ ε) raise an alarm?
    /// `position` is the position the proposal would have once committed.
    pub fn check(
        &self,
        innovation: f64,
        epsilon: f64,
        escalation: u32,
        position: u64,
    ) -> Option<DriftAlarm> {
        let (slack, alarm) = self.levels(epsilon, escalation)?;
        let statistic = self.next_statistic(innovation, slack);
        (statistic > alarm).then(|| DriftAlarm {
            statistic,
            threshold: alarm,
            onset: self.excursion_onset.unwrap_or(position),
        })
    }

    /// Folds in the innovation of a committed proposal now at `position`.
    pub fn accept(&mut self, innovation: f64, epsilon: f64, escalation: u32, position: u64) {
        if let Some((slack, _)) = self.levels(epsilon, escalation) {
            self.statistic = self.next_statistic(innovation, slack);
            if self.statistic > 0.0 {
                self.excursion_onset.get_or_insert(position);
            } else {
                self.excursion_onset = None;
            }
        }
        self.window.push(innovation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warmed(values: &[f64]) -> DriftDetector {
        let config = DriftConfig {
            warmup: values.len(),
            ..DriftConfig::default()
        };
        let mut d = DriftDetector::new(&config);
        for (i, &v) in values.iter().enumerate() {
            d.accept(v, 0.5, 0, i as u64 + 1);
        }
        d
    }

    #[test]
    fn unarmed_detector_never_alarms() {
        let d = DriftDetector::new(&DriftConfig::default());
        assert!(d.check(0.49, 0.5, 0, 1).is_none());
    }

    #[test]
    fn several_accepted_steps_just_under_epsilon_raise_an_alarm_with_their_onset() {
        let nominal: Vec<f64> = (0..20)
            .map(|i| if i % 2 == 0 { -0.02 } else { 0.02 })
            .collect();
        let mut d = warmed(&nominal);
        assert!(
            d.check(0.45, 0.5, 0, 21).is_none(),
            "one step under ε is nominal"
        );
        d.accept(0.45, 0.5, 0, 21);
        let alarm = d.check(0.45, 0.5, 0, 22).expect("two steps just under ε");
        assert_eq!(alarm.onset, 21);
        assert!(alarm.statistic > alarm.threshold);
        assert_eq!(
            alarm.threshold, 0.5,
            "h floors at ε when the spread is small"
        );
    }

    #[test]
    fn nominal_noise_drains_the_statistic() {
        let nominal: Vec<f64> = (0..20)
            .map(|i| if i % 2 == 0 { -0.02 } else { 0.02 })
            .collect();
        let mut d = warmed(&nominal);
        d.accept(0.3, 0.5, 0, 21);
        assert!(d.statistic() > 0.0);
        assert_eq!(d.excursion_onset(), Some(21));
        for p in 22..40 {
            d.accept(-0.02, 0.5, 0, p);
        }
        assert_eq!(d.statistic(), 0.0);
        assert_eq!(d.excursion_onset(), None);
    }

    #[test]
    fn escalation_raises_the_alarm_level() {
        let nominal: Vec<f64> = (0..20)
            .map(|i| if i % 2 == 0 { -0.02 } else { 0.02 })
            .collect();
        let d = warmed(&nominal);
        let (_, h0) = d.levels(0.5, 0).unwrap();
        let (_, h2) = d.levels(0.5, 2).unwrap();
        assert_eq!(h2, 3.0 * h0);
    }

    #[test]
    fn levels_follow_the_median_and_spread_and_the_alarm_needs_more_than_h() {
        // Median 0.1, MAD 0.05 → spread 0.0741: κ = 0.1 + 2 · spread, h = max(8 · spread, ε).
        let d = warmed(&[0.05, 0.1, 0.15, 0.1, 0.05, 0.15, 0.1]);
        let spread = 1.482_602_218_505_602 * 0.05;
        let (slack, alarm) = d.levels(0.5, 0).unwrap();
        assert!((slack - (0.1 + 2.0 * spread)).abs() < 1e-12, "{slack}");
        assert!((alarm - 8.0 * spread).abs() < 1e-12, "{alarm}");
        // A flat window: κ floors at 0, h at ε; S must exceed h, not reach it.
        let d = warmed(&[-0.1; 6]);
        assert_eq!(d.levels(0.5, 0), Some((0.0, 0.5)));
        assert!(d.check(0.5, 0.5, 0, 7).is_none());
        assert!(d.check(0.500_001, 0.5, 0, 7).is_some());
    }
}
