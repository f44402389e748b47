//! The probe cadence (probe_interval k ≥ 1) and observe mode, against a model: Algorithm 1 as
//! the paper states it, measuring every k-th step.
//!
//! Enforce mode runs through the closure `Supervisor` (the driver users call); observe mode
//! through the bare `StepProtocol` (the driver a framework adapter writes). Measurement
//! sequences repeat values (y = ŷ plateaus), land exactly on ŷ + ε and include NaN and ±∞.

use std::convert::Infallible;

mod common;

use common::ReferenceAlgorithm;
use proptest::prelude::*;
use stab_core::{
    Action, Completion, ControllerConfig, Directive, InMemoryStore, Mode, StepOutcome, StepPlan,
    StepProtocol, Supervisor,
};

/// Algorithm 1 (the shared reference) with a probe every k steps.
struct Model {
    algorithm: ReferenceAlgorithm,
    k: u64,
}

impl Model {
    fn new(y0: f64, alpha: f64, epsilon: f64, k: u64) -> Self {
        let algorithm = ReferenceAlgorithm {
            y_hat: y0,
            alpha,
            epsilon,
        };
        Self { algorithm, k }
    }

    fn measured(&self, step: u64) -> bool {
        (step + 1).is_multiple_of(self.k)
    }
}

#[derive(Debug, Clone, Copy)]
enum Input {
    Value(f64),
    AtReference,
    AtThreshold,
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        6 => (0.0..3.0_f64).prop_map(Input::Value),
        2 => (3.0..50.0_f64).prop_map(Input::Value),
        1 => prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)]
            .prop_map(Input::Value),
        2 => Just(Input::AtReference),
        2 => Just(Input::AtThreshold),
    ]
}

fn resolve(input: Input, model: &Model) -> f64 {
    match input {
        Input::Value(y) => y,
        Input::AtReference => model.algorithm.y_hat,
        Input::AtThreshold => model.algorithm.y_hat + model.algorithm.epsilon,
    }
}

fn config(epsilon: f64, alpha: f64, k: u64) -> ControllerConfig {
    ControllerConfig::algorithm_1()
        .with_epsilon(epsilon)
        .with_alpha(alpha)
        .with_probe_interval(k)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    /// Enforce mode: unprobed steps keep their proposal without a record; each measured step is
    /// decided on the state after its k updates, keeps it or goes back to the last accepted
    /// state bit for bit; every record carries the step index t, not the decision count.
    #[test]
    fn enforce_mode_follows_algorithm_1_every_k_steps(
        k in 1_u64..6,
        epsilon in prop_oneof![Just(0.5), 0.01..2.0_f64],
        alpha in prop_oneof![Just(0.1), 0.01..0.99_f64],
        inputs in prop::collection::vec(input(), 0..80),
    ) {
        let y0 = 1.0;
        let mut sup = Supervisor::new(&config(epsilon, alpha, k), InMemoryStore::new(), &0_u64, y0)
            .unwrap();
        let mut model = Model::new(y0, alpha, epsilon, k);
        // The state is the number of updates applied on the current lineage.
        let (mut state, mut last_accepted) = (0_u64, 0_u64);
        let (mut decisions, mut rejections) = (0_u64, 0_u64);
        for (t, input) in inputs.into_iter().enumerate() {
            let t = t as u64;
            let y = resolve(input, &model);
            let step = sup
                .step(state, |s| Ok::<_, Infallible>(s + 1), |_| Ok(y))
                .unwrap();
            if model.measured(t) {
                let StepOutcome::Decided(record) = &step.outcome else {
                    prop_assert!(false, "step {} is measured", t);
                    unreachable!()
                };
                prop_assert_eq!(record.step, t);
                prop_assert_eq!(record.reference.to_bits(), model.algorithm.y_hat.to_bits());
                let accepted = model.algorithm.step(y);
                decisions += 1;
                prop_assert_eq!(record.decision.is_accepted(), accepted, "{:?}", record);
                prop_assert_eq!(record.reference_after.to_bits(), model.algorithm.y_hat.to_bits());
                if accepted {
                    prop_assert_eq!(record.action, Action::Commit);
                    prop_assert_eq!(step.state, state + 1);
                    last_accepted = step.state;
                } else {
                    rejections += 1;
                    prop_assert_eq!(record.action, Action::Restore);
                    prop_assert_eq!(step.state, last_accepted);
                }
            } else {
                prop_assert_eq!(&step.outcome, &StepOutcome::Unprobed { step: t });
                prop_assert_eq!(step.state, state + 1);
            }
            state = step.state;
            prop_assert_eq!(sup.next_step(), t + 1);
            prop_assert_eq!(sup.counters().steps, decisions);
            prop_assert_eq!(sup.counters().rejected, rejections);
        }
    }

    /// Observe mode: every proposal is kept and nothing is saved or restored, yet each measured
    /// step is decided as in enforce mode (ŷ moves on accepted measurements only), and the
    /// record says what enforce mode would have done.
    #[test]
    fn observe_mode_decides_like_algorithm_1_and_keeps_everything(
        k in 1_u64..6,
        epsilon in prop_oneof![Just(0.5), 0.01..2.0_f64],
        alpha in prop_oneof![Just(0.1), 0.01..0.99_f64],
        inputs in prop::collection::vec(input(), 0..80),
    ) {
        let y0 = 1.0;
        let mut protocol = StepProtocol::new(&config(epsilon, alpha, k), Mode::Observe, Some(y0)).unwrap();
        prop_assert_eq!(protocol.start().unwrap(), Directive::Keep);
        protocol.complete(Completion::default()).unwrap();
        let mut model = Model::new(y0, alpha, epsilon, k);
        for (t, input) in inputs.into_iter().enumerate() {
            let t = t as u64;
            let y = resolve(input, &model);
            let StepPlan::Propose { measure } = protocol.begin_step(Some(1.0)).unwrap() else {
                prop_assert!(false, "observe mode never skips a step");
                unreachable!()
            };
            prop_assert_eq!(measure, model.measured(t));
            let directive = protocol.decide(measure.then_some(y)).unwrap();
            prop_assert_eq!(directive, Directive::Keep);
            let done = protocol.complete(Completion::default()).unwrap();
            prop_assert_eq!(done.step, t);
            if measure {
                let record = done.record.expect("a measured step has a record");
                prop_assert_eq!(record.step, t);
                let accepted = model.algorithm.step(y);
                prop_assert_eq!(record.decision.is_accepted(), accepted);
                prop_assert_eq!(done.action, if accepted { Action::Commit } else { Action::Observe });
                prop_assert_eq!(record.action, done.action);
                prop_assert_eq!(record.reference_after.to_bits(), model.algorithm.y_hat.to_bits());
            } else {
                prop_assert_eq!((done.action, done.record), (Action::Unprobed, None));
            }
            prop_assert_eq!(protocol.reference().map(f64::to_bits), Some(model.algorithm.y_hat.to_bits()));
        }
    }
}
