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

/// A heavy-ball descent on the Rosenbrock function (f(x₀) ≈ 24), its objective multiplied by
/// `scale`.
#[derive(Clone)]
struct Descent {
    x: [f64; 2],
    v: [f64; 2],
}

fn rosenbrock(x: &[f64; 2]) -> f64 {
    (1.0 - x[0]).powi(2) + 100.0 * (x[1] - x[0] * x[0]).powi(2)
}

fn heavy_ball_step(mut s: Descent) -> Descent {
    let x = s.x;
    let g = [
        -2.0 * (1.0 - x[0]) - 400.0 * x[0] * (x[1] - x[0] * x[0]),
        200.0 * (x[1] - x[0] * x[0]),
    ];
    for ((x, v), g) in s.x.iter_mut().zip(s.v.iter_mut()).zip(g) {
        *v = 0.9 * *v + g;
        *x -= 1e-3 * *v;
    }
    s
}

const START: Descent = Descent {
    x: [-1.2, 1.0],
    v: [0.0, 0.0],
};

/// 3000 supervised steps of the descent on `scale · f`; returns f at the end (unscaled) and the
/// counters. `reset`: supply an optimizer reset (clears the momentum).
fn heavy_ball(config: &ControllerConfig, scale: f64, reset: bool) -> (f64, stab_core::Counters) {
    let objective = |s: &Descent| scale * rosenbrock(&s.x);
    let mut sup = Supervisor::new(config, InMemoryStore::new(), &START, objective(&START)).unwrap();
    if reset {
        sup = sup.with_optimizer_reset(|mut s: Descent| {
            s.v = [0.0, 0.0];
            s
        });
    }
    let mut state = START.clone();
    for _ in 0..3000 {
        match sup.step(
            state,
            |s| Ok::<_, Infallible>(heavy_ball_step(s)),
            |s| Ok(objective(s)),
        ) {
            Ok(guarded) => state = guarded.state,
            Err(e) => panic!("scale {scale}: {e}"),
        }
    }
    (rosenbrock(&state.x), sup.counters())
}

/// Plain rollback with the paper's absolute ε replays the same overshooting proposal forever (the
/// frozen run of issue 11).
#[test]
fn heavy_ball_freezes_under_algorithm_1() {
    let (frozen, counters) = heavy_ball(&ControllerConfig::algorithm_1(), 1.0, false);
    assert!(
        counters.rejected > 2900,
        "plain rollback freezes: {counters:?}"
    );
    assert!(frozen > 1.0);
}

/// stab's defaults, with no optimizer reset supplied, converge at any scale of the objective:
/// the acceptance has no unit (issue 19). The unprotected descent converges too: the defaults
/// must not get in its way (no rejection at all).
#[test]
fn heavy_ball_converges_at_default_settings_at_any_scale() {
    let (unprotected, _) = heavy_ball(
        &ControllerConfig::algorithm_1().with_epsilon(f64::MAX),
        1.0,
        false,
    );
    assert!(
        unprotected < 1e-3,
        "the descent itself converges: {unprotected}"
    );
    for scale in [1e-3, 1.0, 1e3] {
        let (loss, counters) = heavy_ball(&ControllerConfig::default(), scale, false);
        assert!(loss < 1e-3, "scale {scale}: final f = {loss}, {counters:?}");
        assert_eq!(counters.accepted, 3000, "scale {scale}: {counters:?}");
    }
}

/// The absolute ε of the old default does not transfer across scales: at scale 1e3 each of the
/// first steps raises the objective by ~1200 > 0.5, and without an optimizer reset the ladder
/// runs out.
#[test]
fn an_absolute_epsilon_stops_the_descent_at_another_scale() {
    let config = ControllerConfig::default().with_epsilon(0.5);
    let objective = |s: &Descent| 1e3 * rosenbrock(&s.x);
    let mut sup =
        Supervisor::new(&config, InMemoryStore::new(), &START, objective(&START)).unwrap();
    let mut state = START.clone();
    let mut stopped = None;
    for t in 0..3000 {
        match sup.step(
            state.clone(),
            |s| Ok::<_, Infallible>(heavy_ball_step(s)),
            |s| Ok(objective(s)),
        ) {
            Ok(guarded) => state = guarded.state,
            Err(StabError::RecoveryExhausted(why)) => {
                stopped = Some((t, why));
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let (t, why) = stopped.expect("the ladder runs out");
    assert!(t < 100, "stopped at step {t}");
    assert!(why.to_string().contains("innovation"), "{why}");
}

/// Detection at any scale: a corrupted proposal at step 200 (x₂ pushed 0.5 off the valley, f
/// ×7000) is rejected at every scale, and nothing else is; the descent still converges.
#[test]
fn heavy_ball_fault_is_caught_at_any_scale_and_nothing_else_is() {
    for scale in [1e-3, 1.0, 1e3] {
        let objective = |s: &Descent| scale * rosenbrock(&s.x);
        let mut sup = Supervisor::new(
            &ControllerConfig::default(),
            InMemoryStore::new(),
            &START,
            objective(&START),
        )
        .unwrap();
        let mut state = START.clone();
        let mut rejected_steps = Vec::new();
        for t in 0..3000_u64 {
            let faulty = t == 200;
            let guarded = sup
                .step(
                    state,
                    |s| {
                        let mut next = heavy_ball_step(s);
                        if faulty {
                            next.x[1] += 0.5;
                        }
                        Ok::<_, Infallible>(next)
                    },
                    |s| Ok(objective(s)),
                )
                .unwrap();
            if let StepOutcome::Decided(record) = &guarded.outcome
                && !record.decision.is_accepted()
            {
                rejected_steps.push(t);
            }
            state = guarded.state;
        }
        assert_eq!(rejected_steps, vec![200], "scale {scale}");
        assert!(rosenbrock(&state.x) < 1e-3, "scale {scale}");
    }
}

/// With the paper's absolute ε = 0.5 (the default before issue 19) plain rollback replays the
/// same overshooting proposal; the ladder clears the momentum when the driver can reset it, and
/// the descent converges within the ladder's bound on rejection runs.
#[test]
fn heavy_ball_with_the_paper_epsilon_converges_through_the_reset_rung() {
    let config = ControllerConfig::default().with_epsilon(0.5);
    let (loss, counters) = heavy_ball(&config, 1.0, true);
    assert!(loss < 1e-3, "final f = {loss}, {counters:?}");
    assert!(counters.optimizer_resets >= 1, "{counters:?}");
    assert!(counters.longest_rejection_run <= 12 * 5, "{counters:?}");
}
