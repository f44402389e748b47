//! The step protocol driven directly (no store): each directive, record field and counter for
//! observe mode, calibration, the probe cadence, the gate, the drift alarm and misuse.

use stab_core::{
    Action, Completion, ControllerConfig, Directive, DriftConfig, GateConfig, LadderConfig, Mode,
    RejectionReason, RingConfig, Rung, SignalKind, SlotId, StabError, StepPlan, StepProtocol,
};

fn started(config: &ControllerConfig, mode: Mode, y0: Option<f64>) -> StepProtocol {
    let mut p = StepProtocol::new(config, mode, y0).unwrap();
    p.start().unwrap();
    p.complete(Completion::default()).unwrap();
    p
}

/// One measured step: begin (with a gradient norm), decide, complete.
fn measured(p: &mut StepProtocol, norm: Option<f64>, y: f64) -> (Directive, stab_core::Completed) {
    match p.begin_step(norm).unwrap() {
        StepPlan::Propose { measure: true } => {}
        other => panic!("expected a measured proposal, got {other:?}"),
    }
    let directive = p.decide(Some(y)).unwrap();
    (directive, p.complete(Completion::default()).unwrap())
}

#[test]
fn start_saves_the_initial_state_into_every_ring_level() {
    let config = ControllerConfig::default().with_ring(RingConfig { ages: vec![2, 4] });
    let mut p = StepProtocol::new(&config, Mode::Enforce, Some(1.0)).unwrap();
    let Directive::Commit(update) = p.start().unwrap() else {
        panic!("the initial save is a commit")
    };
    assert_eq!(update.retain, vec![SlotId(2), SlotId(4)]);
    assert!(update.promote.is_empty());
    let done = p.complete(Completion::fingerprinted(7)).unwrap();
    assert_eq!(
        (done.step, done.action, done.record),
        (0, Action::Commit, None)
    );
    assert_eq!(p.next_step(), 0, "the initial save is not a step");
    assert_eq!(
        p.slot_positions(),
        vec![Some(0), None, Some(0), None, Some(0)]
    );
    assert_eq!(p.slots(), 5);
    assert_eq!(p.config(), &config);
    assert!(p.controller().is_some());
}

#[test]
fn commits_keep_the_ring_on_its_schedule_of_accepted_steps() {
    let config = ControllerConfig::default().with_ring(RingConfig { ages: vec![2] });
    let mut p = started(&config, Mode::Enforce, Some(1.0));
    let mut retained = Vec::new();
    for _ in 0..5 {
        let (d, _) = measured(&mut p, None, 0.9);
        let Directive::Commit(update) = d else {
            panic!("accepted")
        };
        retained.push(update.retain.len());
    }
    // Depths 1..=5: the level of age 2 takes the states at depths 2 and 4.
    assert_eq!(retained, [0, 1, 0, 1, 0]);
    assert_eq!(p.slot_positions(), vec![Some(5), Some(2), Some(4)]);
    // A rejection does not advance the schedule: the next commit is depth 6, a multiple of 2.
    measured(&mut p, None, 50.0);
    let (d, _) = measured(&mut p, None, 0.9);
    let Directive::Commit(update) = d else {
        panic!("accepted")
    };
    assert_eq!(update.promote, vec![(SlotId(2), SlotId(1))]);
    assert_eq!(p.slot_positions(), vec![Some(7), Some(4), Some(7)]);
}

#[test]
fn observe_mode_decides_but_keeps_every_proposal_and_saves_nothing() {
    let mut p = StepProtocol::new(&ControllerConfig::default(), Mode::Observe, Some(1.0)).unwrap();
    assert_eq!(p.start().unwrap(), Directive::Keep);
    p.complete(Completion::default()).unwrap();
    let (d, done) = measured(&mut p, Some(f64::NAN), 100.0);
    assert_eq!(d, Directive::Keep, "no gate and no restore in observe mode");
    assert_eq!(done.action, Action::Observe);
    assert!(!done.record.as_ref().unwrap().decision.is_accepted());
    let (d, done) = measured(&mut p, None, 0.9);
    assert_eq!(d, Directive::Keep);
    assert_eq!(done.action, Action::Commit);
    assert_eq!(p.counters().rejected, 1);
    assert_eq!(p.counters().accepted, 1);
    assert_eq!(p.mode(), Mode::Observe);
}

#[test]
fn a_signal_without_y0_calibrates_on_its_first_measured_step() {
    let config = ControllerConfig::default().with_signal(SignalKind::GradientNormSpike);
    let mut p = started(&config, Mode::Enforce, None);
    assert!(p.controller().is_none());
    assert_eq!(p.counters(), Default::default());
    let (d, done) = measured(&mut p, None, 3.0);
    assert!(matches!(d, Directive::Commit(_)));
    assert_eq!((done.action, done.record), (Action::Calibrate, None));
    assert_eq!(p.reference(), Some(3.0));
    assert!(p.controller().is_some());
    let err = StepProtocol::new(&config, Mode::Enforce, None)
        .and_then(|mut p| {
            p.start()?;
            p.complete(Completion::default())?;
            p.begin_step(None)?;
            p.decide(Some(f64::NAN))
        })
        .unwrap_err();
    assert!(
        matches!(err, StabError::NonFiniteInitialMeasurement { .. }),
        "{err}"
    );
}

#[test]
fn probe_cadence_keeps_unprobed_proposals_and_their_gradient_norms_wait_for_the_decision() {
    let config = ControllerConfig::default()
        .with_probe_interval(3)
        .with_gate(GateConfig {
            warmup: 2,
            ..GateConfig::default()
        });
    let mut p = started(&config, Mode::Enforce, Some(1.0));
    for t in 0..2 {
        assert_eq!(
            p.begin_step(Some(1.0)).unwrap(),
            StepPlan::Propose { measure: false }
        );
        assert_eq!(p.decide(None).unwrap(), Directive::Keep);
        let done = p.complete(Completion::default()).unwrap();
        assert_eq!(
            (done.step, done.action, done.record),
            (t, Action::Unprobed, None)
        );
    }
    // The two unprobed norms and this one enter the gate only now: it is armed after.
    assert_eq!(
        p.begin_step(Some(1.0)).unwrap(),
        StepPlan::Propose { measure: true }
    );
    assert!(matches!(p.decide(Some(0.9)).unwrap(), Directive::Commit(_)));
    p.complete(Completion::default()).unwrap();
    assert_eq!(p.begin_step(Some(300.0)).unwrap(), StepPlan::Skip);
    let done = p.complete(Completion::default()).unwrap();
    assert_eq!(done.action, Action::Skip);
    // A missing measurement on a probed step is an error, not a guess.
    let config = ControllerConfig::default();
    let mut p = started(&config, Mode::Enforce, Some(1.0));
    p.begin_step(None).unwrap();
    assert!(matches!(
        p.decide(None),
        Err(StabError::MissingMeasurement { step: 0 })
    ));
}

#[test]
fn unprobed_norms_of_a_rejected_stretch_never_enter_the_gate() {
    let config = ControllerConfig::default()
        .with_probe_interval(2)
        .with_gate(GateConfig {
            warmup: 2,
            ..GateConfig::default()
        });
    let mut p = started(&config, Mode::Enforce, Some(1.0));
    // Unprobed 50, then a rejected probe: 50 must not count as nominal.
    p.begin_step(Some(50.0)).unwrap();
    p.decide(None).unwrap();
    p.complete(Completion::default()).unwrap();
    let (d, _) = measured(&mut p, Some(1.0), 100.0);
    assert_eq!(d, Directive::Restore);
    for _ in 0..2 {
        p.begin_step(Some(1.0)).unwrap();
        p.decide(None).unwrap();
        p.complete(Completion::default()).unwrap();
        measured(&mut p, Some(1.0), 0.9);
    }
    // Armed on four norms of 1.0 only: 50 is far out.
    assert_eq!(p.begin_step(Some(50.0)).unwrap(), StepPlan::Skip);
}

#[test]
fn the_gate_lets_one_gradient_through_after_its_patience() {
    let config = ControllerConfig::default().with_gate(GateConfig {
        warmup: 2,
        patience: 3,
        ..GateConfig::default()
    });
    let mut p = started(&config, Mode::Enforce, Some(1.0));
    measured(&mut p, Some(1.0), 0.9);
    measured(&mut p, Some(1.0), 0.9);
    let mut plans = Vec::new();
    for _ in 0..5 {
        let plan = p.begin_step(Some(f64::NAN)).unwrap();
        if plan == StepPlan::Skip {
            let done = p.complete(Completion::default()).unwrap();
            let record = done.record.unwrap();
            assert!(record.measurement.is_nan());
            assert!(matches!(
                record.decision.rejection_reason(),
                Some(RejectionReason::GradientGate { .. })
            ));
        } else {
            p.decide(Some(f64::NAN)).unwrap();
            p.complete(Completion::default()).unwrap();
        }
        plans.push(plan);
    }
    use StepPlan::{Propose, Skip};
    assert_eq!(
        plans,
        [Skip, Skip, Skip, Propose { measure: true }, Skip],
        "three skips, then one through to the probe, then the gate again"
    );
    assert_eq!(p.counters().gate_rejections, 4);
    assert_eq!(p.counters().rejected, 5);
}

#[test]
fn a_drift_alarm_rejects_and_rewinds_past_its_onset() {
    let config = ControllerConfig::default()
        .with_epsilon(0.5)
        .with_ring(RingConfig { ages: vec![2] })
        .with_drift(DriftConfig {
            enabled: true,
            warmup: 4,
            ..DriftConfig::default()
        });
    let mut p = started(&config, Mode::Enforce, Some(1.0));
    let mut y = 1.0;
    for _ in 0..8 {
        y -= 0.01;
        measured(&mut p, None, y);
    }
    // Steps 8 and 9 each sit 0.45 above ŷ: under ε, but together a drift.
    let (d, done) = {
        let y = p.reference().unwrap() + 0.45;
        measured(&mut p, None, y)
    };
    assert!(matches!(d, Directive::Commit(_)), "{done:?}");
    assert!(p.drift_statistic() > 0.0);
    let (d, done) = {
        let y = p.reference().unwrap() + 0.45;
        measured(&mut p, None, y)
    };
    let record = done.record.unwrap();
    let Some(RejectionReason::DriftAlarm {
        onset,
        statistic,
        threshold,
    }) = record.decision.rejection_reason()
    else {
        panic!("expected a drift alarm, got {record:?}")
    };
    assert_eq!(onset, 9, "the first state the drift produced (step 8's)");
    assert!(statistic > threshold);
    let Directive::Rewind { slot, .. } = d else {
        panic!("a drift alarm rewinds, got {d:?}")
    };
    assert_ne!(slot, SlotId::CURRENT);
    assert_eq!(done.action, Action::Rewind { to_position: 8 });
    assert_eq!(record.rung, Some(1));
    assert_eq!(p.counters().drift_alarms, 1);
    assert_eq!(p.counters().rewinds, 1);
    assert_eq!(p.counters().escalations, 1);
    assert_eq!(p.ladder_level(), 1);
    assert_eq!(
        p.drift_statistic(),
        0.0,
        "the target's detector state is back"
    );

    // With the ladder off, the alarm still rewinds but climbs nothing.
    let config = config.with_ladder(LadderConfig {
        enabled: false,
        ..LadderConfig::default()
    });
    let mut p = started(&config, Mode::Enforce, Some(1.0));
    let mut y = 1.0;
    for _ in 0..8 {
        y -= 0.01;
        measured(&mut p, None, y);
    }
    {
        let y = p.reference().unwrap() + 0.45;
        measured(&mut p, None, y)
    };
    let (d, done) = {
        let y = p.reference().unwrap() + 0.45;
        measured(&mut p, None, y)
    };
    assert!(matches!(d, Directive::Rewind { .. }), "{d:?}");
    assert_eq!(done.record.unwrap().rung, None);
    assert_eq!(p.ladder_level(), 0);
}

#[test]
fn rungs_the_driver_cannot_carry_out_are_dropped_uncounted_and_the_stop_names_the_rule() {
    // No ring (no rewind target) and no reset support: both rungs are dropped, so the first rung
    // needed stops the run.
    let config = ControllerConfig::default()
        .with_ring(RingConfig { ages: vec![] })
        .with_ladder(LadderConfig {
            enabled: true,
            rejections_per_rung: 2,
            rejection_window: 2,
            rungs: vec![Rung::Rewind, Rung::ResetOptimizer],
            cooldown: 5,
        });
    let mut p = started(&config, Mode::Enforce, Some(1.0));
    assert!(p.rungs().is_empty());
    let dropped = p.dropped_rungs();
    assert_eq!(
        dropped.iter().map(|(rung, _)| *rung).collect::<Vec<_>>(),
        vec![Rung::Rewind, Rung::ResetOptimizer]
    );
    assert!(dropped[0].1.contains("rewind"), "{dropped:?}");
    assert!(dropped[1].1.contains("reset"), "{dropped:?}");
    measured(&mut p, None, 0.9);
    let (d, _) = measured(&mut p, None, 50.0);
    assert_eq!(d, Directive::Restore);
    let (d, done) = measured(&mut p, None, 50.0);
    assert_eq!(d, Directive::Stop);
    assert_eq!(done.action, Action::Stop);
    assert_eq!(done.record.unwrap().rung, None, "no rung fired");
    let why = p.exhausted().unwrap().clone();
    assert_eq!(why.step, 2);
    assert_eq!(why.last_accepted_position, 1);
    assert_eq!(why.rungs, 0);
    assert!(matches!(
        why.reason,
        Some(RejectionReason::InnovationAboveThreshold { .. })
    ));
    let message = why.to_string();
    assert!(
        message.contains("recovery exhausted at step 2"),
        "{message}"
    );
    assert!(message.contains("(the last: innovation"), "{message}");
    assert!(message.contains("after all 0 rungs"), "{message}");
    assert!(matches!(p.begin_step(None), Err(StabError::Stopped(_))));
    assert_eq!(p.counters().escalations, 0, "dropped rungs never count");

    // The same ladder with reset support: one rung, the reset, fired as rung 1.
    let mut p = StepProtocol::new(&config, Mode::Enforce, Some(1.0))
        .unwrap()
        .with_optimizer_reset(true);
    assert_eq!(p.rungs(), &[Rung::ResetOptimizer]);
    assert_eq!(p.dropped_rungs().len(), 1);
    p.start().unwrap();
    p.complete(Completion::default()).unwrap();
    measured(&mut p, None, 0.9);
    measured(&mut p, None, 50.0);
    let (d, done) = measured(&mut p, None, 50.0);
    assert_eq!(d, Directive::ResetOptimizer);
    assert_eq!(done.record.unwrap().rung, Some(1));
    assert_eq!(p.counters().optimizer_resets, 1);
    assert_eq!(p.counters().escalations, 1);
    assert_eq!(
        p.slot_positions()[0],
        Some(3),
        "the reset state is the new current one"
    );
    // Taking reset support away drops the rung again; the ladder off drops nothing.
    p.set_optimizer_reset(false);
    assert!(p.rungs().is_empty());
    let off = config.clone().with_ladder(LadderConfig {
        enabled: false,
        ..config.ladder.clone()
    });
    let p = StepProtocol::new(&off, Mode::Enforce, Some(1.0)).unwrap();
    assert!(p.dropped_rungs().is_empty());
    // The default ring and a driver that can reset: every rung stays.
    let p = StepProtocol::new(&ControllerConfig::default(), Mode::Enforce, Some(1.0))
        .unwrap()
        .with_optimizer_reset(true);
    assert!(p.dropped_rungs().is_empty());
    assert_eq!(
        p.rungs(),
        ControllerConfig::default().ladder.rungs.as_slice()
    );
}

#[test]
fn calls_out_of_order_are_typed_errors_and_a_failed_step_can_be_abandoned() {
    let mut p = StepProtocol::new(&ControllerConfig::default(), Mode::Enforce, Some(1.0)).unwrap();
    assert!(matches!(
        p.begin_step(None),
        Err(StabError::OutOfOrder {
            called: "begin_step",
            expected: "start"
        })
    ));
    p.start().unwrap();
    assert!(matches!(
        p.start(),
        Err(StabError::OutOfOrder {
            called: "start",
            ..
        })
    ));
    assert!(matches!(
        p.decide(Some(1.0)),
        Err(StabError::OutOfOrder { .. })
    ));
    p.complete(Completion::default()).unwrap();
    assert!(matches!(
        p.complete(Completion::default()),
        Err(StabError::OutOfOrder {
            called: "complete",
            expected: "begin_step"
        })
    ));
    assert!(matches!(
        p.abandon_step(),
        Err(StabError::OutOfOrder { .. })
    ));
    p.begin_step(None).unwrap();
    p.abandon_step().unwrap();
    assert_eq!(p.next_step(), 1);
    assert_eq!(p.counters().steps, 0, "nothing was decided");
}

#[test]
fn a_restore_whose_fingerprint_differs_is_a_safety_violation() {
    let mut p = StepProtocol::new(&ControllerConfig::default(), Mode::Enforce, Some(1.0)).unwrap();
    p.start().unwrap();
    p.complete(Completion::fingerprinted(11)).unwrap();
    p.begin_step(None).unwrap();
    assert_eq!(p.decide(Some(9.0)).unwrap(), Directive::Restore);
    let err = p.complete(Completion::fingerprinted(12)).unwrap_err();
    assert!(
        matches!(
            err,
            StabError::Safety(stab_core::SafetyViolation::InexactRestore {
                step: 0,
                expected: 11,
                actual: 12
            })
        ),
        "{err}"
    );
    // The right fingerprint completes the step.
    let done = p.complete(Completion::fingerprinted(11)).unwrap();
    assert_eq!(done.action, Action::Restore);
}

#[test]
fn actions_serialize_with_a_kind_tag() {
    let json = serde_json::to_string(&Action::Rewind { to_position: 7 }).unwrap();
    assert_eq!(json, r#"{"kind":"rewind","to_position":7}"#);
    let back: Action = serde_json::from_str(&json).unwrap();
    assert_eq!(back, Action::Rewind { to_position: 7 });
    assert_eq!(
        serde_json::to_string(&Action::ResetOptimizer).unwrap(),
        r#"{"kind":"reset-optimizer"}"#
    );
    assert!(Action::Stop.discards_proposal());
    assert!(!Action::Skip.discards_proposal());
    assert!(!Action::Commit.discards_proposal());
}

/// A protocol whose initial state has fingerprint 1 and whose first step, rejected, was answered
/// with an optimizer reset (awaiting its completion).
fn reset_on_first_rejection() -> StepProtocol {
    let config = ControllerConfig::default().with_ladder(LadderConfig {
        enabled: true,
        rejections_per_rung: 1,
        rejection_window: 1,
        rungs: vec![Rung::ResetOptimizer],
        cooldown: 50,
    });
    let mut p = StepProtocol::new(&config, Mode::Enforce, Some(1.0))
        .unwrap()
        .with_optimizer_reset(true);
    p.start().unwrap();
    p.complete(Completion::fingerprinted(1)).unwrap();
    p.begin_step(None).unwrap();
    assert_eq!(p.decide(Some(50.0)).unwrap(), Directive::ResetOptimizer);
    p
}

#[test]
fn a_reset_state_is_fingerprinted_and_later_restores_are_checked_against_it() {
    let mut p = reset_on_first_rejection();
    p.complete(Completion::fingerprinted(2)).unwrap();
    // The next rejection ends the run, restoring the reset state: fingerprint 2, not 1.
    p.begin_step(None).unwrap();
    assert_eq!(p.decide(Some(50.0)).unwrap(), Directive::Stop);
    let err = p.complete(Completion::fingerprinted(1)).unwrap_err();
    assert!(
        matches!(
            err,
            StabError::Safety(stab_core::SafetyViolation::InexactRestore { expected: 2, .. })
        ),
        "{err}"
    );
    assert!(p.complete(Completion::fingerprinted(2)).is_ok());
}

#[test]
fn a_ladder_rewind_goes_to_the_best_looking_snapshot_not_the_youngest() {
    let config = ControllerConfig::default()
        .with_epsilon(0.5)
        .with_ring(RingConfig { ages: vec![2] })
        .with_ladder(LadderConfig {
            enabled: true,
            rejections_per_rung: 2,
            rejection_window: 2,
            rungs: vec![Rung::Rewind],
            cooldown: 50,
        });
    let mut p = started(&config, Mode::Enforce, Some(1.0));
    for y in [0.9, 0.8, 0.7, 0.6] {
        measured(&mut p, None, y);
    }
    // Three accepted steps each 0.45 above ŷ: damage under ε raises ŷ.
    for _ in 0..3 {
        let y = p.reference().unwrap() + 0.45;
        measured(&mut p, None, y);
    }
    assert_eq!(p.slot_positions(), vec![Some(7), Some(4), Some(6)]);
    measured(&mut p, None, 50.0);
    let (d, done) = measured(&mut p, None, 50.0);
    assert_eq!(
        d,
        Directive::Rewind {
            slot: SlotId(1),
            release: vec![SlotId(2)]
        }
    );
    assert_eq!(
        done.action,
        Action::Rewind { to_position: 4 },
        "position 4 (ŷ 0.91) looked better than the younger 6 (ŷ 1.0)"
    );
}

#[test]
fn the_restore_inside_an_optimizer_reset_is_checked_too() {
    let mut p = reset_on_first_rejection();
    let wrong = Completion {
        fingerprint: Some(2),
        restored_fingerprint: Some(9),
    };
    let err = p.complete(wrong).unwrap_err();
    assert!(
        matches!(
            err,
            StabError::Safety(stab_core::SafetyViolation::InexactRestore {
                expected: 1,
                actual: 9,
                ..
            })
        ),
        "{err}"
    );
    let right = Completion {
        fingerprint: Some(2),
        restored_fingerprint: Some(1),
    };
    assert_eq!(p.complete(right).unwrap().action, Action::ResetOptimizer);
}

#[test]
fn the_monitor_is_on_by_default_follows_accepted_measurements_and_can_be_turned_off() {
    let config = ControllerConfig::default();
    let mut p = started(&config, Mode::Enforce, Some(1.0));
    assert_eq!(p.monitor().map(|m| m.running_max()), Some(1.0));
    measured(&mut p, None, 1.25);
    assert_eq!(p.monitor().map(|m| m.running_max()), Some(1.25));
    measured(&mut p, None, 50.0); // rejected: the envelope does not move
    assert_eq!(p.monitor().map(|m| m.running_max()), Some(1.25));

    let off = StepProtocol::new(&config, Mode::Enforce, Some(1.0))
        .unwrap()
        .without_monitor();
    assert!(off.monitor().is_none());
    let mut p = started(&config, Mode::Enforce, Some(1.0));
    p.disable_monitor();
    assert!(p.monitor().is_none());
    measured(&mut p, None, 1.25);
    assert!(p.monitor().is_none(), "stays off");
}

/// One measured step with an update norm: begin, decide with the update, complete.
fn measured_update(
    p: &mut StepProtocol,
    y: f64,
    update: Option<f64>,
) -> (Directive, stab_core::Completed) {
    assert!(matches!(
        p.begin_step(None).unwrap(),
        StepPlan::Propose { measure: true }
    ));
    let directive = p.decide_with_update(Some(y), update).unwrap();
    (directive, p.complete(Completion::default()).unwrap())
}

fn update_gate_reason(done: &stab_core::Completed) -> Option<(f64, stab_core::GateTest)> {
    match done.record.as_ref()?.decision.rejection_reason()? {
        RejectionReason::UpdateGate { score, test, .. } => Some((score, test)),
        _ => None,
    }
}

#[test]
fn the_update_gate_rejects_an_outsized_update_from_the_fourth_step_and_keeps_its_patience() {
    let config = ControllerConfig::default().with_update_gate(GateConfig {
        patience: 2,
        ..GateConfig::default()
    });
    let mut p = started(&config, Mode::Enforce, Some(1.0));
    // Two accepted updates: too few for the young test, so even ×100 passes.
    measured_update(&mut p, 0.99, Some(1.0));
    measured_update(&mut p, 0.98, Some(1.0));
    let (d, done) = measured_update(&mut p, 0.97, Some(100.0));
    assert!(
        matches!(d, Directive::Commit(_)),
        "two norms: not watching yet"
    );
    assert_eq!(update_gate_reason(&done), None);
    // Now [1, 1, 100]: median 1. A ×20 update is rejected (ratio 20 > 8), the measurement fine.
    let (d, done) = measured_update(&mut p, 0.96, Some(20.0));
    assert_eq!(d, Directive::Restore);
    assert_eq!(
        update_gate_reason(&done),
        Some((20.0, stab_core::GateTest::MedianRatio))
    );
    assert_eq!(done.record.as_ref().unwrap().action, Action::Restore);
    let (_, done) = measured_update(&mut p, 0.96, Some(20.0));
    assert!(update_gate_reason(&done).is_some(), "second in a row");
    // Patience 2 spent: the third is let through to the probe, which accepts it.
    let (d, done) = measured_update(&mut p, 0.96, Some(20.0));
    assert!(matches!(d, Directive::Commit(_)), "{done:?}");
    // The streak starts over; the accepted norms are now [1, 1, 100, 20] (median 10.5).
    let (_, done) = measured_update(&mut p, 0.95, Some(84.0));
    assert_eq!(
        update_gate_reason(&done),
        None,
        "84 / 10.5 = 8 is not above 8"
    );
    let (_, done) = measured_update(&mut p, 0.95, Some(200.0));
    assert!(update_gate_reason(&done).is_some());
    // No update norm: the gate is not consulted.
    let (d, _) = measured_update(&mut p, 0.95, None);
    assert!(matches!(d, Directive::Commit(_)));
    // A non-finite update is rejected at any age.
    let (_, done) = measured_update(&mut p, 0.95, Some(f64::NAN));
    assert_eq!(
        update_gate_reason(&done).map(|(_, test)| test),
        Some(stab_core::GateTest::NonFinite)
    );
    // A measurement that is rejected on its own keeps its own reason.
    let (_, done) = measured_update(&mut p, 50.0, Some(1000.0));
    assert!(matches!(
        done.record.unwrap().decision.rejection_reason(),
        Some(RejectionReason::InnovationAboveThreshold { .. })
    ));
}

#[test]
fn the_update_gate_decides_in_observe_mode_too_and_can_be_turned_off() {
    let mut p = started(&ControllerConfig::default(), Mode::Observe, Some(1.0));
    for _ in 0..3 {
        measured_update(&mut p, 0.99, Some(1.0));
    }
    let (d, done) = measured_update(&mut p, 0.98, Some(50.0));
    assert_eq!(d, Directive::Keep, "observe keeps every proposal");
    assert!(update_gate_reason(&done).is_some());
    assert_eq!(done.action, Action::Observe);

    let off = ControllerConfig::default().with_update_gate(GateConfig {
        enabled: false,
        ..GateConfig::default()
    });
    let mut p = started(&off, Mode::Enforce, Some(1.0));
    for _ in 0..3 {
        measured_update(&mut p, 0.99, Some(1.0));
    }
    let (d, _) = measured_update(&mut p, 0.98, Some(50.0));
    assert!(matches!(d, Directive::Commit(_)));
}

#[test]
fn the_scale_free_threshold_is_in_every_record_and_follows_the_level() {
    let mut p = started(&ControllerConfig::default(), Mode::Enforce, Some(4.0));
    // Young: a quarter of the level above the last accepted measurement.
    let (_, done) = measured(&mut p, None, 4.0);
    assert_eq!(done.record.unwrap().threshold, 1.0);
    let (d, done) = measured(&mut p, None, 5.5);
    assert_eq!(d, Directive::Restore, "+1.5 > 0.25 · 4");
    assert_eq!(done.record.unwrap().threshold, 1.0);
    let (d, _) = measured(&mut p, None, 4.9);
    assert!(matches!(d, Directive::Commit(_)), "+0.9 ≤ 1");
    assert!(p.acceptance().is_some());
    // An absolute ε keeps no scale-free threshold.
    let p = started(
        &ControllerConfig::default().with_epsilon(0.5),
        Mode::Enforce,
        Some(4.0),
    );
    assert!(p.acceptance().is_none());
}

/// One step with a gradient norm: `Some(clip)` if it was proposed (with the gate's clip factor),
/// `None` if the gate skipped it.
fn gated_step(p: &mut StepProtocol, norm: f64, y: f64) -> Option<Option<f64>> {
    let proposed = match p.begin_step(Some(norm)).unwrap() {
        StepPlan::Skip => None,
        StepPlan::Propose { .. } => {
            let clip = p.gradient_clip();
            p.decide(Some(y)).unwrap();
            Some(clip)
        }
    };
    p.complete(Completion::default()).unwrap();
    proposed
}

#[test]
fn after_its_patience_the_gate_passes_an_outsized_gradient_clipped_and_restarts_after_a_lasting_change()
 {
    let config = ControllerConfig::default().with_gate(GateConfig {
        patience: 2,
        restart_after: 2,
        ..GateConfig::default()
    });
    let mut p = started(&config, Mode::Enforce, Some(1.0));
    for _ in 0..3 {
        assert_eq!(gated_step(&mut p, 1.0, 0.99), Some(None));
    }
    // Young ceiling: 8 × median 1 = 8.
    assert_eq!(gated_step(&mut p, 100.0, 0.99), None);
    assert_eq!(gated_step(&mut p, 100.0, 0.99), None);
    assert_eq!(
        gated_step(&mut p, 100.0, 0.99),
        Some(Some(0.08)),
        "patience spent: through, clipped to the ceiling"
    );
    // A nominal gradient passes on its own: no clip, and the count of let-throughs restarts.
    assert_eq!(gated_step(&mut p, 1.0, 0.99), Some(None));
    for _ in 0..2 {
        assert_eq!(gated_step(&mut p, 100.0, 0.99), None);
    }
    assert_eq!(gated_step(&mut p, 100.0, 0.99), Some(Some(0.08)));
    for _ in 0..2 {
        assert_eq!(gated_step(&mut p, 100.0, 0.99), None);
    }
    // The second let-through in a row: clipped, and the gate starts over ...
    assert_eq!(gated_step(&mut p, 100.0, 0.99), Some(Some(0.08)));
    // ... so the new scale passes (too few norms to judge), and is judged from its third on.
    for _ in 0..3 {
        assert_eq!(gated_step(&mut p, 100.0, 0.99), Some(None));
    }
    assert_eq!(gated_step(&mut p, 110.0, 0.99), Some(None));
    assert_eq!(gated_step(&mut p, 1e5, 0.99), None);
    // A non-finite gradient cannot be clipped: after the patience it passes as it is.
    let mut p = started(&config, Mode::Enforce, Some(1.0));
    for _ in 0..3 {
        gated_step(&mut p, 1.0, 0.99);
    }
    gated_step(&mut p, f64::NAN, 0.99);
    gated_step(&mut p, f64::NAN, 0.99);
    assert_eq!(gated_step(&mut p, f64::NAN, 0.99), Some(None));
    gated_step(&mut p, f64::INFINITY, 0.99);
    gated_step(&mut p, f64::INFINITY, 0.99);
    assert_eq!(gated_step(&mut p, f64::INFINITY, 0.99), Some(None));
}

#[test]
fn the_update_gate_restarts_after_a_lasting_change_of_update_size() {
    let config = ControllerConfig::default().with_update_gate(GateConfig {
        patience: 1,
        restart_after: 2,
        ..GateConfig::default()
    });
    let mut p = started(&config, Mode::Enforce, Some(1.0));
    for _ in 0..3 {
        measured_update(&mut p, 0.99, Some(1.0));
    }
    let gated = |p: &mut StepProtocol| {
        update_gate_reason(&measured_update(p, 0.99, Some(100.0)).1).is_some()
    };
    assert!(gated(&mut p), "rejected");
    assert!(!gated(&mut p), "patience 1 spent: let through (first)");
    assert!(gated(&mut p), "rejected again: [1, 1, 1, 100] has median 1");
    assert!(!gated(&mut p), "let through (second): the gate restarts");
    // Young again with no history: the new size passes, and is judged from its third value on.
    for _ in 0..3 {
        assert!(!gated(&mut p));
    }
    let (_, done) = measured_update(&mut p, 0.99, Some(1e4));
    assert!(
        update_gate_reason(&done).is_some(),
        "judged against the new size"
    );
}

/// One measured step with an update norm: the clip factor the protocol asks for after the
/// proposal, and whether the update gate rejected it.
fn clipped_update(p: &mut StepProtocol, y: f64, update: f64) -> (Option<f64>, bool) {
    assert!(matches!(
        p.begin_step(None).unwrap(),
        StepPlan::Propose { measure: true }
    ));
    let clip = p.update_clip(update);
    assert_eq!(p.update_clip(update), clip, "a query: no state changes");
    p.decide_with_update(Some(y), Some(update)).unwrap();
    let done = p.complete(Completion::default()).unwrap();
    (clip, update_gate_reason(&done).is_some())
}

#[test]
fn after_its_patience_the_update_gate_lets_an_outsized_update_through_clipped_to_its_ceiling() {
    let config = ControllerConfig::default().with_update_gate(GateConfig {
        patience: 2,
        ..GateConfig::default()
    });
    let mut p = started(&config, Mode::Enforce, Some(1.0));
    for _ in 0..3 {
        assert_eq!(clipped_update(&mut p, 0.99, 1.0), (None, false));
    }
    // Young ceiling: 8 × median 1. Rejected twice (no clip asked: nothing is let through) ...
    assert_eq!(clipped_update(&mut p, 0.99, 100.0), (None, true));
    assert_eq!(clipped_update(&mut p, 0.99, 100.0), (None, true));
    // ... then let through, scaled to the ceiling: 8 / 100.
    assert_eq!(clipped_update(&mut p, 0.99, 100.0), (Some(0.08), false));
    // The streak starts over; a nominal update is never scaled.
    assert_eq!(clipped_update(&mut p, 0.99, 100.0), (None, true));
    assert_eq!(clipped_update(&mut p, 0.99, 1.0), (None, false));
    // A non-finite update cannot be scaled: after the patience it is the probe's to judge.
    for _ in 0..2 {
        assert_eq!(clipped_update(&mut p, 0.99, f64::NAN), (None, true));
    }
    assert_eq!(clipped_update(&mut p, 0.99, f64::NAN), (None, false));

    // Outside a measured proposal, in observe mode, or with the gate off: never a clip.
    let mut p = started(&config, Mode::Enforce, Some(1.0));
    assert_eq!(p.update_clip(100.0), None, "no step open");
    let mut observe = started(&config, Mode::Observe, Some(1.0));
    let mut off = started(
        &ControllerConfig::default().with_update_gate(GateConfig {
            enabled: false,
            patience: 2,
            ..GateConfig::default()
        }),
        Mode::Enforce,
        Some(1.0),
    );
    for q in [&mut p, &mut observe, &mut off] {
        for _ in 0..3 {
            clipped_update(q, 0.99, 1.0);
        }
        for _ in 0..2 {
            clipped_update(q, 0.99, 100.0);
        }
    }
    assert_eq!(clipped_update(&mut observe, 0.99, 100.0).0, None);
    assert_eq!(clipped_update(&mut off, 0.99, 100.0).0, None);
    assert_eq!(clipped_update(&mut p, 0.99, 100.0).0, Some(0.08));
    // An unprobed step (probe interval 2) asks for no clip either.
    let mut sparse = started(
        &config.clone().with_probe_interval(2),
        Mode::Enforce,
        Some(1.0),
    );
    assert!(matches!(
        sparse.begin_step(None).unwrap(),
        StepPlan::Propose { measure: false }
    ));
    assert_eq!(sparse.update_clip(100.0), None);
}

#[test]
fn current_fingerprint_is_the_one_recorded_for_the_last_accepted_state() {
    let config = ControllerConfig::default();
    let mut p = started(&config, Mode::Enforce, Some(1.0));
    assert_eq!(p.current_fingerprint(), None, "nothing fingerprinted yet");
    p.fingerprint_initial_state(41);
    assert_eq!(p.current_fingerprint(), Some(41));
    let commit = |p: &mut StepProtocol, y: f64, fingerprint: u64| {
        p.begin_step(None).unwrap();
        p.decide(Some(y)).unwrap();
        p.complete(Completion {
            fingerprint: Some(fingerprint),
            restored_fingerprint: None,
        })
        .unwrap()
    };
    commit(&mut p, 0.99, 42);
    assert_eq!(p.current_fingerprint(), Some(42));
    // A rejected proposal leaves the last accepted state's fingerprint.
    let done = commit(&mut p, 50.0, 42);
    assert_eq!(done.action, Action::Restore);
    assert_eq!(p.current_fingerprint(), Some(42));
    commit(&mut p, 0.98, 43);
    assert_eq!(p.current_fingerprint(), Some(43));
}

/// A protocol whose ladder resets the optimizer at the second counted rejection, whose update gate
/// has patience 3 and restarts after 2 let-throughs, with three nominal updates (norm 1) accepted.
fn ladder_beside_the_update_gate() -> StepProtocol {
    let config = ControllerConfig::default()
        .with_update_gate(GateConfig {
            patience: 3,
            restart_after: 2,
            ..GateConfig::default()
        })
        .with_ladder(LadderConfig {
            enabled: true,
            rejections_per_rung: 2,
            rejection_window: 2,
            rungs: vec![Rung::ResetOptimizer, Rung::ResetOptimizer],
            cooldown: 50,
        });
    let mut p = StepProtocol::new(&config, Mode::Enforce, Some(1.0))
        .unwrap()
        .with_optimizer_reset(true);
    p.start().unwrap();
    p.complete(Completion::default()).unwrap();
    for _ in 0..3 {
        let (d, _) = measured_update(&mut p, 0.99, Some(1.0));
        assert!(matches!(d, Directive::Commit(_)));
    }
    p
}

#[test]
fn a_rejected_outsized_update_is_restored_without_climbing_the_ladder_while_the_patience_lasts() {
    // The probe rejects (y = 50) proposals whose update is 100× the accepted ones: a bad
    // proposal from a healthy state. The patience's three are restored, the ladder untouched,
    // whether the probe or the update gate rejects them.
    let mut p = ladder_beside_the_update_gate();
    for (y, reason) in [
        (50.0, "the probe"),
        (0.99, "the update gate"),
        (50.0, "the probe"),
    ] {
        let (d, done) = measured_update(&mut p, y, Some(100.0));
        assert_eq!(d, Directive::Restore, "rejected by {reason}");
        assert_eq!(done.action, Action::Restore);
        assert_eq!(p.ladder_level(), 0, "rejected by {reason}: no rung");
        // The record names the rule that rejected it: the probe's own, when it did.
        let gate_named = update_gate_reason(&done).is_some();
        assert_eq!(gate_named, reason == "the update gate", "{reason}");
    }
    assert_eq!(p.counters().escalations, 0);
    assert_eq!(p.counters().optimizer_resets, 0);
    // Patience spent: the next one is let through, clipped, and the probe's rejection of it
    // counts; the streak starts over, so the one after is the gate's again.
    assert!(matches!(
        p.begin_step(None).unwrap(),
        StepPlan::Propose { measure: true }
    ));
    assert_eq!(p.update_clip(100.0), Some(0.08), "8 × median 1 over 100");
    assert_eq!(
        p.decide_with_update(Some(50.0), Some(100.0)).unwrap(),
        Directive::Restore
    );
    p.complete(Completion::default()).unwrap();
    let (d, _) = measured_update(&mut p, 50.0, Some(100.0));
    assert_eq!(d, Directive::Restore, "the gate's own again: not counted");
    assert_eq!(p.ladder_level(), 0, "one counted rejection of two");
    // A nominal-sized proposal the probe rejects is the state's problem: it counts, and with
    // the let-through's rejection before it the rung fires.
    let (d, _) = measured_update(&mut p, 50.0, Some(1.0));
    assert_eq!(d, Directive::ResetOptimizer);
    assert_eq!(p.ladder_level(), 1);
}

#[test]
fn without_an_outsized_update_two_probe_rejections_climb_the_ladder() {
    // The same rejections with nominal update norms (or none): each one counts.
    for update in [Some(1.0), None] {
        let mut p = ladder_beside_the_update_gate();
        let (d, _) = measured_update(&mut p, 50.0, update);
        assert_eq!(d, Directive::Restore, "{update:?}");
        let (d, _) = measured_update(&mut p, 50.0, update);
        assert_eq!(d, Directive::ResetOptimizer, "{update:?}");
    }
}

#[test]
fn let_throughs_the_probe_rejects_still_count_toward_the_update_gates_restart() {
    // A lasting ×100 change of update size that the probe rejects even clipped: after
    // `restart_after` (2) let-throughs the gate starts over, so the ladder is not held off for
    // good, and it fires on the counted rejections.
    let mut p = ladder_beside_the_update_gate();
    let mut counted = 0;
    for _ in 0..2 {
        for _ in 0..3 {
            let (d, _) = measured_update(&mut p, 50.0, Some(100.0));
            assert_eq!(d, Directive::Restore, "within the patience");
        }
        let (d, _) = measured_update(&mut p, 50.0, Some(100.0));
        counted += 1;
        assert_eq!(
            d,
            if counted == 2 {
                Directive::ResetOptimizer
            } else {
                Directive::Restore
            },
            "let-through {counted}: counted by the ladder"
        );
    }
    // The gate started over with no history: the same proposals are now the probe's alone and
    // every one counts, up the last rung and to the stop.
    let (d, _) = measured_update(&mut p, 50.0, Some(100.0));
    assert_eq!(d, Directive::Restore);
    let (d, _) = measured_update(&mut p, 50.0, Some(100.0));
    assert_eq!(d, Directive::ResetOptimizer, "second rung");
    measured_update(&mut p, 50.0, Some(100.0));
    let (d, _) = measured_update(&mut p, 50.0, Some(100.0));
    assert_eq!(
        d,
        Directive::Stop,
        "the ladder ran out: the run is not held off for good"
    );
}

#[test]
fn a_non_finite_update_climbs_the_ladder_as_any_non_finite_proposal_does() {
    // A NaN update says nothing about the state it came from being healthy: rejected by the
    // probe, or by the update gate when the probe did not, it is counted by the ladder.
    for (y, by) in [(50.0, "the probe"), (0.99, "the update gate")] {
        let mut p = ladder_beside_the_update_gate();
        let (d, done) = measured_update(&mut p, y, Some(f64::NAN));
        assert_eq!(d, Directive::Restore, "{by}");
        assert_eq!(update_gate_reason(&done).is_some(), by == "the update gate");
        let (d, _) = measured_update(&mut p, y, Some(f64::NAN));
        assert_eq!(d, Directive::ResetOptimizer, "rejected by {by}: counted");
    }
}
