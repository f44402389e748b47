//! Property tests: the safety invariants of the paper hold for arbitrary measurement sequences,
//! and the runtime monitor catches rules and signals that break them.

mod common;

use common::ReferenceAlgorithm;
use proptest::prelude::*;
use stab_core::{
    Controller, ControllerConfig, Decision, DecisionRule, Fingerprint, InMemoryStore,
    InnovationKind, InnovationSignal, ProbeSignal, SafetyMonitor, SafetyViolation, SignalKind,
    SlotId, SnapshotStore, StabError, Supervisor, ThresholdRule,
};

/// Measurements as nasty as a training run can produce: ordinary losses, huge and tiny values,
/// NaN and infinities.
fn measurement() -> impl Strategy<Value = f64> {
    prop_oneof![
        6 => 0.0..10.0_f64,
        2 => -1e3..1e3_f64,
        1 => prop_oneof![Just(1e300), Just(-1e300), Just(f64::MAX), Just(-f64::MAX)],
        1 => prop_oneof![Just(1e-300), Just(-1e-300), Just(f64::MIN_POSITIVE), Just(0.0)],
        1 => prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)],
        1 => any::<f64>(),
    ]
}

fn finite_initial() -> impl Strategy<Value = f64> {
    prop_oneof![8 => 0.0..10.0_f64, 1 => -1e300..1e300_f64, 1 => Just(0.0)]
}

fn epsilon() -> impl Strategy<Value = f64> {
    prop_oneof![1e-9..1e-3_f64, 1e-3..10.0_f64, 10.0..1e6_f64]
}

fn alpha() -> impl Strategy<Value = f64> {
    prop_oneof![1e-6..0.01_f64, 0.01..0.99_f64, Just(0.5), Just(0.999_999)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn safety_invariants_hold_for_arbitrary_measurements(
        y0 in finite_initial(),
        eps in epsilon(),
        a in alpha(),
        ys in prop::collection::vec(measurement(), 0..200),
    ) {
        let config = ControllerConfig::default().with_epsilon(eps).with_alpha(a);
        let mut controller = Controller::from_config(&config, y0).unwrap();
        let mut monitor = SafetyMonitor::new(y0);
        let (mut lo, mut hi) = (y0, y0);
        for (n, y) in ys.into_iter().enumerate() {
            let record = controller.decide(y);
            prop_assert_eq!(monitor.check_decision(&record), Ok(()));
            if record.decision.is_accepted() {
                // Theorem 7.3, stated directly.
                prop_assert!(y.is_finite() && y - record.reference <= eps);
                lo = lo.min(y);
                hi = hi.max(y);
            } else {
                // ŷ never moves on a rejection.
                prop_assert_eq!(record.reference_after.to_bits(), record.reference.to_bits());
            }
            // ŷ stays a convex combination of accepted measurements (y0 included).
            prop_assert!(lo <= controller.reference() && controller.reference() <= hi);
            // Proposition 7.5's growth bound after n + 1 decisions (up to the rounding of the
            // sums, which the controller never forms).
            let decisions = (n + 1) as f64;
            let rounding = 1e-12 * (y0.abs() + hi.abs() + decisions * eps);
            prop_assert!(hi - y0 <= decisions * eps + rounding, "max {} after {} decisions", hi, n + 1);
        }
    }

    #[test]
    fn controller_agrees_with_the_reference_algorithm(
        y0 in finite_initial(),
        eps in epsilon(),
        a in alpha(),
        ys in prop::collection::vec(measurement(), 0..200),
    ) {
        let config = ControllerConfig::default().with_epsilon(eps).with_alpha(a);
        let mut controller = Controller::from_config(&config, y0).unwrap();
        let mut reference = ReferenceAlgorithm { y_hat: y0, alpha: a, epsilon: eps };
        for y in ys {
            let accepted = controller.decide(y).decision.is_accepted();
            prop_assert_eq!(accepted, reference.step(y));
            prop_assert_eq!(controller.reference().to_bits(), reference.y_hat.to_bits());
        }
    }

    #[test]
    fn every_signal_keeps_the_decision_and_rejection_invariants(
        y0 in finite_initial(),
        eps in epsilon(),
        kind in prop_oneof![
            Just(SignalKind::Probe),
            Just(SignalKind::LossSpike),
            Just(SignalKind::GradientNormSpike),
            Just(SignalKind::GradientAgreement),
        ],
        ys in prop::collection::vec(measurement(), 0..100),
    ) {
        let config = ControllerConfig::default().with_epsilon(eps).with_signal(kind);
        let mut controller = Controller::from_config(&config, y0).unwrap();
        let mut monitor = SafetyMonitor::new(y0);
        for y in ys {
            let record = controller.decide(y);
            prop_assert_eq!(monitor.check_decision(&record), Ok(()));
            if !y.is_finite() {
                prop_assert!(!record.decision.is_accepted());
            }
        }
    }

    #[test]
    fn supervisor_restores_the_last_accepted_state_exactly(
        eps in epsilon(),
        steps in prop::collection::vec((prop::collection::vec(-1e6..1e6_f64, 3), measurement()), 1..60),
    ) {
        let config = ControllerConfig::algorithm_1().with_epsilon(eps);
        let initial = vec![0.0_f64; 3];
        let fingerprint = |s: &Vec<f64>| Fingerprint::new().f64s(s).finish();
        let mut sup = Supervisor::new(&config, InMemoryStore::new(), &initial, 1.0)
            .unwrap()
            .with_fingerprint(&initial, fingerprint);
        let mut state = initial.clone();
        let mut last_accepted = initial;
        for (proposal, y) in steps {
            let step = sup
                .step(state, |_| Ok::<_, std::convert::Infallible>(proposal.clone()), |_| Ok(y))
                .unwrap();
            let record = step.outcome.record().unwrap();
            if record.decision.is_accepted() {
                prop_assert_eq!(&step.state, &proposal);
                last_accepted = proposal;
            } else {
                // Proposition 7.4, bit for bit.
                let bits = |v: &Vec<f64>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                prop_assert_eq!(bits(&step.state), bits(&last_accepted));
            }
            state = step.state;
        }
    }

    #[test]
    fn monitor_catches_a_rule_that_accepts_above_threshold(
        eps in 1e-3..10.0_f64,
        excess in 1.5..100.0_f64,
    ) {
        let mut controller = Controller::new(
            Box::new(ProbeSignal::new(1.0, 0.1)),
            Box::new(LaxRule { epsilon: eps }),
        );
        let mut monitor = SafetyMonitor::new(1.0);
        let record = controller.decide(1.0 + excess * eps);
        prop_assert!(record.decision.is_accepted());
        prop_assert!(
            matches!(
                monitor.check_decision(&record),
                Err(SafetyViolation::AcceptedAboveThreshold { .. })
            ),
            "expected an AcceptedAboveThreshold violation"
        );
    }

    #[test]
    fn monitor_catches_a_signal_that_updates_its_reference_on_rejection(
        eps in 1e-3..10.0_f64,
        spike in 20.0..1e6_f64,
    ) {
        let mut controller = Controller::new(
            Box::new(LeakySignal(ProbeSignal::new(1.0, 0.1))),
            Box::new(ThresholdRule::new(eps)),
        );
        let mut monitor = SafetyMonitor::new(1.0);
        let record = controller.decide(1.0 + spike * eps);
        prop_assert!(!record.decision.is_accepted());
        prop_assert!(
            matches!(
                monitor.check_decision(&record),
                Err(SafetyViolation::ReferenceMovedOnRejection { .. })
            ),
            "expected a ReferenceMovedOnRejection violation"
        );
    }
}

/// A wrong rule: reports ε as its threshold but accepts up to 1000 ε.
#[derive(Debug)]
struct LaxRule {
    epsilon: f64,
}

impl DecisionRule for LaxRule {
    fn threshold(&self) -> f64 {
        self.epsilon
    }
    fn decide(&self, innovation: f64) -> Decision {
        ThresholdRule::new(1000.0 * self.epsilon).decide(innovation)
    }
}

/// A wrong signal: folds rejected measurements into the reference.
#[derive(Debug, Clone)]
struct LeakySignal(ProbeSignal);

impl InnovationSignal for LeakySignal {
    fn clone_box(&self) -> Box<dyn InnovationSignal> {
        Box::new(self.clone())
    }

    fn name(&self) -> &'static str {
        "leaky"
    }
    fn kind(&self) -> InnovationKind {
        InnovationKind::ReferenceDifference
    }
    fn reference(&self) -> f64 {
        self.0.reference()
    }
    fn innovation(&self, measurement: f64) -> f64 {
        self.0.innovation(measurement)
    }
    fn accept(&mut self, measurement: f64) {
        self.0.accept(measurement);
    }
    fn reject(&mut self, measurement: f64) {
        self.0.accept(measurement);
    }
}

/// A wrong signal: under-reports its innovation (ν/10) while claiming ν = y − ŷ.
#[derive(Debug, Clone)]
struct ShrinkingSignal(ProbeSignal);

impl InnovationSignal for ShrinkingSignal {
    fn clone_box(&self) -> Box<dyn InnovationSignal> {
        Box::new(self.clone())
    }

    fn name(&self) -> &'static str {
        "shrinking"
    }
    fn kind(&self) -> InnovationKind {
        InnovationKind::ReferenceDifference
    }
    fn reference(&self) -> f64 {
        self.0.reference()
    }
    fn innovation(&self, measurement: f64) -> f64 {
        self.0.innovation(measurement) / 10.0
    }
    fn accept(&mut self, measurement: f64) {
        self.0.accept(measurement);
    }
}

#[test]
fn monitor_catches_a_signal_that_breaks_theorem_7_3() {
    let mut controller = Controller::new(
        Box::new(ShrinkingSignal(ProbeSignal::new(1.0, 0.1))),
        Box::new(ThresholdRule::new(0.5)),
    );
    let mut monitor = SafetyMonitor::new(1.0);
    let record = controller.decide(4.0); // true ν = 3.0, reported 0.3
    assert!(record.decision.is_accepted());
    assert!(matches!(
        monitor.check_decision(&record),
        Err(SafetyViolation::BoundedDeviation { .. })
    ));
}

/// A wrong store: restores the state with one bit flipped.
#[derive(Default)]
struct CorruptingStore(InMemoryStore<Vec<f64>>);

impl SnapshotStore<Vec<f64>> for CorruptingStore {
    type Error = stab_core::InMemoryStoreError;
    fn save(&mut self, state: &Vec<f64>) -> Result<(), Self::Error> {
        self.0.save(state)
    }
    fn restore(&mut self) -> Result<Vec<f64>, Self::Error> {
        let mut state = self.0.restore()?;
        state[0] = f64::from_bits(state[0].to_bits() ^ 1);
        Ok(state)
    }
    fn copy(&mut self, from: SlotId, to: SlotId) -> Result<(), Self::Error> {
        self.0.copy(from, to)
    }
    fn rewind(&mut self, slot: SlotId) -> Result<Vec<f64>, Self::Error> {
        self.0.rewind(slot)
    }
    fn release(&mut self, slot: SlotId) -> Result<(), Self::Error> {
        self.0.release(slot)
    }
}

#[test]
fn monitor_catches_an_inexact_restore() {
    let config = ControllerConfig::default();
    let initial = vec![1.0, 2.0];
    let mut sup = Supervisor::new(&config, CorruptingStore::default(), &initial, 1.0)
        .unwrap()
        .with_fingerprint(&initial, |s: &Vec<f64>| Fingerprint::new().f64s(s).finish());
    let err = sup
        .step(
            initial,
            |_| Ok::<_, std::convert::Infallible>(vec![9.0, 9.0]),
            |_| Ok(100.0),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            StabError::Safety(SafetyViolation::InexactRestore { step: 0, .. })
        ),
        "{err}"
    );
}
