use super::{EwmaReference, InnovationKind, InnovationSignal, SignalState};

/// The paper's signal: ν = y(θ_prop) − ŷ, where y is the loss on a fixed held-out probe set and ŷ
/// an EWMA of accepted measurements that starts at y(θ₀) and moves on accepted steps only.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSignal {
    reference: EwmaReference,
}

impl ProbeSignal {
    /// A probe signal whose reference starts at the (finite) initial measurement y(θ₀).
    pub fn new(initial_measurement: f64, alpha: f64) -> Self {
        Self {
            reference: EwmaReference::new(initial_measurement, alpha),
        }
    }
}

impl InnovationSignal for ProbeSignal {
    fn clone_box(&self) -> Box<dyn InnovationSignal> {
        Box::new(self.clone())
    }

    fn name(&self) -> &'static str {
        "probe"
    }

    fn kind(&self) -> InnovationKind {
        InnovationKind::ReferenceDifference
    }

    fn reference(&self) -> f64 {
        self.reference.value()
    }

    fn innovation(&self, measurement: f64) -> f64 {
        measurement - self.reference.value()
    }

    fn accept(&mut self, measurement: f64) {
        self.reference.update(measurement);
    }

    fn save_state(&self) -> Option<SignalState> {
        let (reference, alpha) = SignalState::ewma(&self.reference);
        Some(SignalState::Probe { reference, alpha })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_moves_on_accept_and_stays_on_reject() {
        let mut signal = ProbeSignal::new(2.0, 0.5);
        assert_eq!(signal.innovation(2.5), 0.5);
        signal.reject(100.0);
        assert_eq!(signal.reference(), 2.0);
        signal.accept(1.0);
        assert_eq!(signal.reference(), 1.5);
    }
}
