use super::{EwmaReference, InnovationKind, InnovationSignal, SignalState};

/// Gradient agreement: the measurement is the cosine similarity between the proposal's gradient
/// and a reference minibatch's gradient (computed by the adapter); ν = ŷ − y is how far agreement
/// dropped below its EWMA over accepted steps. Destabilizing updates decorrelate gradients.
#[derive(Debug, Clone, PartialEq)]
pub struct GradientAgreementSignal {
    reference: EwmaReference,
}

impl GradientAgreementSignal {
    /// Starts the reference at the initial (finite) agreement.
    pub fn new(initial_agreement: f64, alpha: f64) -> Self {
        Self {
            reference: EwmaReference::new(initial_agreement, alpha),
        }
    }
}

impl InnovationSignal for GradientAgreementSignal {
    fn clone_box(&self) -> Box<dyn InnovationSignal> {
        Box::new(self.clone())
    }

    fn name(&self) -> &'static str {
        "gradient-agreement"
    }

    fn kind(&self) -> InnovationKind {
        InnovationKind::Score
    }

    fn reference(&self) -> f64 {
        self.reference.value()
    }

    fn innovation(&self, measurement: f64) -> f64 {
        self.reference.value() - measurement
    }

    fn accept(&mut self, measurement: f64) {
        self.reference.update(measurement);
    }

    fn save_state(&self) -> Option<SignalState> {
        let (reference, alpha) = SignalState::ewma(&self.reference);
        Some(SignalState::GradientAgreement { reference, alpha })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drop_in_agreement_is_a_positive_innovation() {
        let signal = GradientAgreementSignal::new(0.9, 0.1);
        assert!((signal.innovation(0.1) - 0.8).abs() < 1e-12);
        assert!(signal.innovation(0.95) < 0.0);
    }
}
