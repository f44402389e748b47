//! The reference model the property tests share: Algorithm 1 as the paper states it, in a few
//! lines, independent of the controller's code (the EWMA clamp keeps ŷ a convex combination in
//! floating point too).

/// Algorithm 1's decision and reference update.
pub struct ReferenceAlgorithm {
    pub y_hat: f64,
    pub alpha: f64,
    pub epsilon: f64,
}

impl ReferenceAlgorithm {
    /// Accept iff y and ν = y − ŷ are finite and ν ≤ ε; an accepted y moves ŷ (clamped into its
    /// hull).
    pub fn step(&mut self, y: f64) -> bool {
        let nu = y - self.y_hat;
        let accept = y.is_finite() && nu.is_finite() && nu <= self.epsilon;
        if accept {
            let blended = (1.0 - self.alpha) * self.y_hat + self.alpha * y;
            self.y_hat = blended.clamp(self.y_hat.min(y), self.y_hat.max(y));
        }
        accept
    }
}
