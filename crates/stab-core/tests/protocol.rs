//! The step protocol with recovery, driven through the closure `Supervisor` and checked against
//! a model of what each action must bring back.

use std::collections::HashMap;
use std::convert::Infallible;

use proptest::prelude::*;
use stab_core::{
    Action, ControllerConfig, DriftConfig, Fingerprint, InMemoryStore, LadderConfig, RingConfig,
    Rung, StabError, StepOutcome, Supervisor,
};

/// A training state that knows where it came from: `history[k]` is the proposal id accepted
/// k-th on its lineage, `momentum` stands for the optimizer state.
#[derive(Debug, Clone, PartialEq)]
struct State {
    params: Vec<f64>,
    momentum: f64,
}

fn fingerprint(s: &State) -> u64 {
    Fingerprint::new()
        .f64s(&s.params)
        .f64s(&[s.momentum])
        .finish()
}

fn bits(s: &State) -> (Vec<u64>, u64) {
    (
        s.params.iter().map(|x| x.to_bits()).collect(),
        s.momentum.to_bits(),
    )
}

fn measurement() -> impl Strategy<Value = f64> {
    prop_oneof![
        8 => 0.0..2.0_f64,
        2 => 2.0..50.0_f64,
        1 => prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(1.0), Just(1.5)],
    ]
}

fn config() -> impl Strategy<Value = ControllerConfig> {
    (
        0.05..1.0_f64,
        1_u64..5,
        prop::collection::vec(
            prop_oneof![Just(Rung::Rewind), Just(Rung::ResetOptimizer)],
            0..5,
        ),
        1_u64..6,
        prop_oneof![
            Just(vec![]),
            Just(vec![2]),
            Just(vec![3, 7]),
            Just(vec![4, 16])
        ],
        any::<bool>(),
        0_u64..4,
    )
        .prop_map(|(eps, r, rungs, cooldown, ages, drift, slack)| {
            ControllerConfig::default()
                .with_epsilon(eps)
                .with_ladder(LadderConfig {
                    enabled: true,
                    rejections_per_rung: r,
                    rejection_window: r + slack,
                    rungs,
                    cooldown,
                })
                .with_ring(RingConfig { ages })
                .with_drift(DriftConfig {
                    enabled: drift,
                    warmup: 3,
                    ..DriftConfig::default()
                })
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every action brings back exactly the state it names: a restore the last accepted state, a
    /// rewind the state accepted at the named position (on the current lineage, and older than
    /// the state it replaces), a reset the last accepted parameters with a cleared optimizer
    /// state; a stop hands the last accepted state back. The ladder bounds every run of
    /// rejections, and the safety monitor (on) finds no violation.
    #[test]
    fn every_action_restores_exactly_what_it_names(
        config in config(),
        measurements in prop::collection::vec(measurement(), 1..120),
    ) {
        let initial = State { params: vec![0.0, 0.0], momentum: 0.0 };
        let mut sup = Supervisor::new(&config, InMemoryStore::new(), &initial, 1.0)
            .unwrap()
            .with_fingerprint(&initial, fingerprint)
            .with_optimizer_reset(|mut s: State| { s.momentum = 0.0; s });
        // The current lineage: position → state accepted there, and ŷ right after accepting it.
        let mut lineage: HashMap<u64, State> = HashMap::from([(0, initial.clone())]);
        let mut references: HashMap<u64, u64> =
            HashMap::from([(0, sup.controller().reference().to_bits())]);
        let mut current_position = 0_u64;
        let mut state = initial;
        let mut run = 0_u64;
        // The counters a model of the actions predicts.
        let mut expected = stab_core::Counters::default();
        let rungs = config.ladder.rungs.len() as u64;
        let r = config.ladder.rejections_per_rung;
        for (t, y) in measurements.into_iter().enumerate() {
            let t = t as u64;
            let proposal = State {
                params: vec![t as f64 + 1.0, -(t as f64)],
                momentum: state.momentum + 1.0,
            };
            let before = state.clone();
            let result = sup.step(state, |_| Ok::<_, Infallible>(proposal.clone()), |_| Ok(y));
            let step = match result {
                Err(StabError::RecoveryExhausted(why)) => {
                    let last = sup.take_last_accepted().expect("the last accepted state is kept");
                    prop_assert_eq!(bits(&last), bits(&lineage[&current_position]));
                    prop_assert_eq!(why.last_accepted_position, current_position);
                    let again = sup.step(last, Ok::<_, Infallible>, |_| Ok(0.0));
                    prop_assert!(matches!(again, Err(StabError::Stopped(_))));
                    return Ok(());
                }
                other => other.unwrap(),
            };
            let StepOutcome::Decided(record) = &step.outcome else {
                prop_assert!(false, "probe interval 1 decides every step");
                unreachable!()
            };
            match record.action {
                Action::Commit => {
                    prop_assert!(record.decision.is_accepted());
                    prop_assert_eq!(&step.state, &proposal);
                    current_position = t + 1;
                    lineage.insert(current_position, proposal.clone());
                    references.insert(current_position, record.reference_after.to_bits());
                    run = 0;
                }
                Action::Restore => {
                    prop_assert_eq!(bits(&step.state), bits(&lineage[&current_position]));
                    prop_assert_eq!(bits(&step.state), bits(&before));
                    run += 1;
                }
                Action::Rewind { to_position } => {
                    prop_assert!(to_position < current_position || (to_position == 0 && current_position == 0) || to_position < t + 1);
                    let target = lineage.get(&to_position).expect("a rewind restores a state of the current lineage");
                    prop_assert_eq!(bits(&step.state), bits(target));
                    // The controller's reference comes back with the state.
                    prop_assert_eq!(sup.controller().reference().to_bits(), references[&to_position]);
                    prop_assert!(to_position <= current_position);
                    lineage.retain(|&p, _| p <= to_position);
                    current_position = to_position;
                    run += 1;
                }
                Action::ResetOptimizer => {
                    let last = &lineage[&current_position];
                    prop_assert_eq!(&step.state.params, &last.params);
                    prop_assert_eq!(step.state.momentum, 0.0);
                    current_position = t + 1;
                    lineage.insert(current_position, step.state.clone());
                    references.insert(current_position, sup.controller().reference().to_bits());
                    run += 1;
                }
                other => prop_assert!(false, "unexpected action {:?}", other),
            }
            prop_assert!(run <= r * (rungs + 1), "{} rejections in a row", run);
            expected.steps += 1;
            if record.decision.is_accepted() {
                expected.accepted += 1;
            } else {
                expected.rejected += 1;
            }
            expected.consecutive_rejections = run;
            expected.longest_rejection_run = expected.longest_rejection_run.max(run);
            // A rung that cannot act (a rewind with no older snapshot) passes to the next one,
            // and both count: at least one rung fired iff the record names one.
            let fired = sup.counters().escalations - expected.escalations;
            prop_assert_eq!(fired > 0, record.rung.is_some(), "{:?}", record);
            prop_assert!(fired <= rungs);
            expected.escalations += fired;
            expected.rewinds += u64::from(matches!(record.action, Action::Rewind { .. }));
            expected.optimizer_resets += u64::from(record.action == Action::ResetOptimizer);
            if let Some(stab_core::RejectionReason::DriftAlarm { .. }) = record.decision.rejection_reason() {
                expected.drift_alarms += 1;
            }
            prop_assert_eq!(sup.counters(), expected);
            prop_assert_eq!(record.consecutive_rejections, run);
            state = step.state;
        }
    }
}

/// A heavy-ball descent on the Rosenbrock function, default settings: plain rollback replays
/// the same overshooting proposal forever (the frozen run of issue 11); the ladder clears the
/// momentum and the descent converges.
#[test]
fn heavy_ball_rosenbrock_converges_at_default_settings() {
    #[derive(Clone)]
    struct Descent {
        x: [f64; 2],
        v: [f64; 2],
    }
    let f = |x: &[f64; 2]| (1.0 - x[0]).powi(2) + 100.0 * (x[1] - x[0] * x[0]).powi(2);
    let grad = |x: &[f64; 2]| {
        [
            -2.0 * (1.0 - x[0]) - 400.0 * x[0] * (x[1] - x[0] * x[0]),
            200.0 * (x[1] - x[0] * x[0]),
        ]
    };
    let step = |mut s: Descent| {
        let g = grad(&s.x);
        for ((x, v), g) in s.x.iter_mut().zip(s.v.iter_mut()).zip(g) {
            *v = 0.9 * *v + g;
            *x -= 1e-3 * *v;
        }
        s
    };
    let start = Descent {
        x: [-1.2, 1.0],
        v: [0.0, 0.0],
    };

    let run = |config: &ControllerConfig| {
        let mut sup = Supervisor::new(config, InMemoryStore::new(), &start, f(&start.x))
            .unwrap()
            .with_optimizer_reset(|mut s: Descent| {
                s.v = [0.0, 0.0];
                s
            });
        let mut state = start.clone();
        for _ in 0..3000 {
            match sup.step(state, |s| Ok::<_, Infallible>(step(s)), |s| Ok(f(&s.x))) {
                Ok(guarded) => state = guarded.state,
                Err(e) => panic!("{e}"),
            }
        }
        (f(&state.x), sup.counters())
    };

    let (frozen, counters) = run(&ControllerConfig::algorithm_1());
    assert!(
        counters.rejected > 2900,
        "plain rollback freezes: {counters:?}"
    );
    assert!(frozen > 1.0);

    let (loss, counters) = run(&ControllerConfig::default());
    assert!(loss < 1e-3, "final f = {loss}, {counters:?}");
    assert!(counters.optimizer_resets >= 1, "{counters:?}");
    assert!(counters.longest_rejection_run <= 12 * 5, "{counters:?}");
}
