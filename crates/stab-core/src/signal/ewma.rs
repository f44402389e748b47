/// Exponentially weighted moving average of accepted measurements: ŷ ← (1 − α) ŷ + α y.
///
/// Each update is clamped to the interval spanned by its two operands, so that in floating point,
/// too, ŷ always stays a convex combination of the values it has seen (and so never exceeds the
/// largest of them — the step Proposition 7.5 relies on).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EwmaReference {
    value: f64,
    alpha: f64,
}

impl EwmaReference {
    /// Starts the average at `initial` (ŷ₀ = y(θ₀)). The caller guarantees `initial` is finite and
    /// `alpha ∈ (0, 1)`; [`crate::Controller::from_config`] validates both.
    pub fn new(initial: f64, alpha: f64) -> Self {
        Self {
            value: initial,
            alpha,
        }
    }

    /// The current value ŷ.
    pub fn value(&self) -> f64 {
        self.value
    }

    /// The smoothing factor α.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Folds one finite measurement in. A non-finite measurement (NaN, ±∞) is ignored: it is no
    /// accepted measurement, and the reference must stay finite (the controller never passes
    /// one; this guards direct callers).
    pub fn update(&mut self, measurement: f64) {
        if !measurement.is_finite() {
            return;
        }
        let (low, high) = (measurement.min(self.value), measurement.max(self.value));
        // a + α (b − a) can overflow for operands of opposite sign near f64::MAX; the convex form
        // (1 − α) a + α b cannot, and the clamp removes any rounding outside [low, high].
        let blended = (1.0 - self.alpha) * self.value + self.alpha * measurement;
        self.value = blended.clamp(low, high);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_moves_towards_the_measurement_by_alpha() {
        let mut ewma = EwmaReference::new(1.0, 0.25);
        assert_eq!(ewma.alpha(), 0.25);
        ewma.update(3.0);
        assert_eq!(ewma.value(), 1.5);
        ewma.update(0.5);
        assert_eq!(ewma.value(), 1.25, "downwards too");
    }

    #[test]
    fn non_finite_measurements_are_ignored_not_a_panic() {
        let mut ewma = EwmaReference::new(1.0, 0.5);
        for y in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            ewma.update(y);
            assert_eq!(ewma.value(), 1.0);
        }
        ewma.update(3.0);
        assert_eq!(ewma.value(), 2.0);
    }

    #[test]
    fn extreme_operands_stay_inside_their_hull() {
        let mut ewma = EwmaReference::new(f64::MAX, 0.5);
        ewma.update(-f64::MAX);
        assert!(ewma.value().is_finite());
        assert!(ewma.value() <= f64::MAX && ewma.value() >= -f64::MAX);
    }
}
