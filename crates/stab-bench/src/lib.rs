//! # stab-bench
//!
//! What protection costs. The paper's overhead ratio is γ = C_probe / (C_fwd + C_bwd) ≈ |P| / (3|B|):
//! a probe of |P| examples costs one forward pass, a training step on |B| examples about three
//! (forward, backward ≈ 2× forward). This crate holds the arithmetic and the measurement helpers
//! the benchmarks (`cargo bench -p stab-bench`) and `cargo xtask reproduce` share.
#![warn(missing_docs)]

use std::time::{Duration, Instant};

/// The paper's predicted overhead |P| / (3 |B|) for a probe of `probe_size` examples and training
/// minibatches of `batch_size`. Returns `None` for a zero batch size.
pub fn predicted_overhead(probe_size: usize, batch_size: usize) -> Option<f64> {
    (batch_size > 0).then(|| probe_size as f64 / (3.0 * batch_size as f64))
}

/// Time spent training and time spent by the controller, accumulated over steps.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OverheadMeter {
    /// Forward, backward and optimizer step.
    pub training: Duration,
    /// Probe evaluation, snapshot and restore.
    pub control: Duration,
}

impl OverheadMeter {
    /// Adds one step's timings.
    pub fn add(&mut self, training: Duration, control: Duration) {
        self.training += training;
        self.control += control;
    }

    /// Measured γ = control / training, or `None` before any training time was recorded.
    pub fn gamma(&self) -> Option<f64> {
        (!self.training.is_zero()).then(|| self.control.as_secs_f64() / self.training.as_secs_f64())
    }
}

/// Runs `f` once and returns its result with the wall time it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_setting_predicts_about_four_percent() {
        let gamma = predicted_overhead(16, 128).unwrap();
        assert!((gamma - 16.0 / 384.0).abs() < 1e-12);
        assert!(gamma < 0.045);
        assert_eq!(predicted_overhead(16, 0), None);
    }

    #[test]
    fn meter_reports_the_ratio_of_accumulated_times() {
        let mut meter = OverheadMeter::default();
        assert_eq!(meter.gamma(), None);
        meter.add(Duration::from_millis(100), Duration::from_millis(4));
        meter.add(Duration::from_millis(100), Duration::from_millis(6));
        assert!((meter.gamma().unwrap() - 0.05).abs() < 1e-9);
    }
}
