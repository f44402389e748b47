use std::collections::VecDeque;

use super::{InnovationKind, InnovationSignal, SignalState};

/// Accepted measurements needed before a z-score is taken (fewer when the window is shorter).
const MIN_HISTORY: usize = 5;

/// A spike detector: ν is the z-score of the measurement against the last `window` accepted
/// measurements, ν = (y − mean) / max(std, floor).
///
/// Used on the training loss it is the paper's naive loss-based baseline (§9.5); on the gradient
/// norm it is a gradient-norm spike signal. A z-score over a handful of values is noise (two
/// nearly equal losses make any third one an "outlier"), so until `min(window, 5)` measurements
/// have been accepted the signal is warming up and ν = 0 (accept). The floor (1e-3 · |mean|, at
/// least 1e-12) keeps a perfectly flat history from turning rounding noise into infinite scores.
#[derive(Debug, Clone, PartialEq)]
pub struct SpikeSignal {
    name: &'static str,
    window: usize,
    history: VecDeque<f64>,
}

impl SpikeSignal {
    /// A spike signal named `name` over a window of `window` (≥ 2) accepted measurements, seeded
    /// with the initial measurement.
    pub fn new(name: &'static str, window: usize, initial_measurement: f64) -> Self {
        let mut history = VecDeque::with_capacity(window);
        history.push_back(initial_measurement);
        Self {
            name,
            window: window.max(2),
            history,
        }
    }

    /// The naive baseline on training-loss spikes.
    pub fn loss_spike(window: usize, initial_loss: f64) -> Self {
        Self::new("loss-spike", window, initial_loss)
    }

    /// Spikes of the gradient norm.
    pub fn gradient_norm_spike(window: usize, initial_norm: f64) -> Self {
        Self::new("gradient-norm-spike", window, initial_norm)
    }

    /// A spike signal rebuilt from a saved history ([`SignalState::Spike`]).
    ///
    /// # Errors
    /// An unknown name, or a history longer than the window.
    pub(crate) fn from_history(
        name: &str,
        window: usize,
        history: Vec<f64>,
    ) -> Result<Self, String> {
        let name = match name {
            "loss-spike" => "loss-spike",
            "gradient-norm-spike" => "gradient-norm-spike",
            other => return Err(format!("unknown spike signal `{other}`")),
        };
        if window < 2 || history.is_empty() || history.len() > window {
            return Err(format!(
                "a spike signal's history holds 1 to {window} values (window ≥ 2), not {}",
                history.len()
            ));
        }
        Ok(Self {
            name,
            window,
            history: history.into(),
        })
    }

    fn mean_and_std(&self) -> (f64, f64) {
        let n = self.history.len() as f64;
        // Scale first so that sums of huge values cannot overflow.
        let scale = self
            .history
            .iter()
            .fold(0.0_f64, |acc, v| acc.max(v.abs()))
            .max(f64::MIN_POSITIVE);
        let mean = self.history.iter().map(|v| v / scale).sum::<f64>() / n;
        let var = self
            .history
            .iter()
            .map(|v| (v / scale - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean * scale, var.sqrt() * scale)
    }
}

impl InnovationSignal for SpikeSignal {
    fn clone_box(&self) -> Box<dyn InnovationSignal> {
        Box::new(self.clone())
    }

    fn name(&self) -> &'static str {
        self.name
    }

    fn kind(&self) -> InnovationKind {
        InnovationKind::Score
    }

    fn reference(&self) -> f64 {
        self.mean_and_std().0
    }

    fn innovation(&self, measurement: f64) -> f64 {
        if self.history.len() < self.window.min(MIN_HISTORY) {
            return 0.0;
        }
        let (mean, std) = self.mean_and_std();
        let floor = (1e-3 * mean.abs()).max(1e-12);
        (measurement - mean) / std.max(floor)
    }

    fn accept(&mut self, measurement: f64) {
        if self.history.len() == self.window {
            self.history.pop_front();
        }
        self.history.push_back(measurement);
    }

    fn save_state(&self) -> Option<SignalState> {
        Some(SignalState::Spike {
            name: self.name.to_owned(),
            window: self.window,
            history: self.history.iter().copied().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_scores_zero_then_spikes_score_high() {
        let mut signal = SpikeSignal::loss_spike(4, 1.0);
        assert_eq!(signal.innovation(50.0), 0.0);
        for y in [1.1, 0.9, 1.0] {
            signal.accept(y);
        }
        assert!(signal.innovation(5.0) > 10.0);
        assert!(signal.innovation(1.0).abs() < 1.0);
    }

    #[test]
    fn long_windows_wait_for_five_accepted_values() {
        let mut signal = SpikeSignal::loss_spike(20, 1.0);
        for y in [1.01, 0.99, 1.0] {
            signal.accept(y);
        }
        assert_eq!(
            signal.innovation(50.0),
            0.0,
            "four values: still warming up"
        );
        signal.accept(1.02);
        assert!(signal.innovation(50.0) > 100.0);
    }

    #[test]
    fn window_is_bounded() {
        let mut signal = SpikeSignal::gradient_norm_spike(3, 1.0);
        for y in 0..100 {
            signal.accept(y as f64);
        }
        assert_eq!(signal.history.len(), 3);
        assert_eq!(signal.reference(), 98.0);
    }
}
