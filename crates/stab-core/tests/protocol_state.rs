//! The protocol's saved state: a protocol rebuilt from its state (through JSON) continues exactly
//! as the original does, rewinds and optimizer resets after the resume point included; states
//! of another version, configuration or mode, or taken mid-step, are refused with typed errors.

use stab_core::{
    Action, Completion, ControllerConfig, Directive, LadderConfig, Mode, PROTOCOL_STATE_VERSION,
    ProtocolState, ProtocolStateError, RingConfig, Rung, SignalKind, StepPlan, StepProtocol,
};

/// A small deterministic generator (SplitMix64) for measurements and gradient norms.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Step `t`'s measurement and gradient norm: a slowly improving loss with noise, a burst of bad
/// proposals (rejections that climb the ladder) and a creeping drift under ε.
fn inputs(t: u64, rng: &mut Rng) -> (f64, f64) {
    let noise = rng.next() - 0.5;
    let base = 2.0 * 0.997_f64.powi(t as i32) + 0.05 * noise;
    let y = match t {
        40..=52 | 170..=178 => 9.0 + noise,
        120..=130 => base + 0.06 * (t - 119) as f64,
        200..=240 if t.is_multiple_of(3) => 7.0,
        _ => base,
    };
    let norm = if t > 100 && t % 37 == 5 {
        1e4
    } else {
        1.0 + 0.1 * noise
    };
    (y, norm)
}

/// The driver's store, reduced to the fingerprint of the state each slot holds: it obeys each
/// directive and reports fingerprints the way a real driver does.
#[derive(Clone, Default)]
struct FakeStore {
    slots: std::collections::HashMap<u8, u64>,
    saves: u64,
}

impl FakeStore {
    fn save(&mut self) -> u64 {
        self.saves += 1;
        let fingerprint = 1000 + self.saves;
        self.slots.insert(0, fingerprint);
        fingerprint
    }

    fn obey(&mut self, directive: &Directive) -> Completion {
        let current = |s: &Self| s.slots.get(&0).copied();
        match directive {
            Directive::Keep => Completion::default(),
            Directive::Commit(update) => {
                let fingerprint = self.save();
                for (from, to) in update.copies() {
                    let value = self.slots[&from.0];
                    self.slots.insert(to.0, value);
                }
                Completion::fingerprinted(fingerprint)
            }
            Directive::Restore | Directive::Stop => Completion {
                fingerprint: current(self),
                restored_fingerprint: None,
            },
            Directive::ResetOptimizer => {
                let restored = current(self);
                Completion {
                    fingerprint: Some(self.save()),
                    restored_fingerprint: restored,
                }
            }
            Directive::Rewind { slot, release } => {
                let value = self.slots[&slot.0];
                self.slots.insert(0, value);
                for slot in release {
                    self.slots.remove(&slot.0);
                }
                Completion::fingerprinted(value)
            }
        }
    }
}

/// One step; returns a description of everything the protocol said (compared with `{:?}`, so that
/// NaN fields of gate records compare equal).
fn step(p: &mut StepProtocol, store: &mut FakeStore, y: f64, norm: f64) -> String {
    let plan = p.begin_step(Some(norm)).unwrap();
    let directive = match plan {
        StepPlan::Skip => Directive::Keep,
        StepPlan::Propose { measure } => p.decide(measure.then_some(y)).unwrap(),
    };
    let completed = p.complete(store.obey(&directive)).unwrap();
    format!("{plan:?} {directive:?} {completed:?}")
}

fn config() -> ControllerConfig {
    ControllerConfig::default()
        .with_probe_interval(1)
        .with_drift_detection(true)
        .with_ring(RingConfig { ages: vec![4, 16] })
        .with_ladder(LadderConfig {
            rejections_per_rung: 3,
            rejection_window: 4,
            rungs: vec![
                Rung::Rewind,
                Rung::ResetOptimizer,
                Rung::Rewind,
                Rung::Rewind,
                Rung::Rewind,
                Rung::Rewind,
            ],
            cooldown: 8,
            ..LadderConfig::default()
        })
}

fn started(config: &ControllerConfig, store: &mut FakeStore) -> StepProtocol {
    let mut p = StepProtocol::new(config, Mode::Enforce, Some(2.0))
        .unwrap()
        .with_optimizer_reset(true);
    let directive = p.start().unwrap();
    p.complete(store.obey(&directive)).unwrap();
    p
}

fn round_trip(state: &ProtocolState) -> ProtocolState {
    let json = serde_json::to_string(state).unwrap();
    serde_json::from_str(&json).unwrap()
}

#[test]
fn a_resumed_protocol_continues_exactly_like_the_original() {
    const STEPS: u64 = 300;
    let config = config();
    // The uninterrupted run, its trace and its state before every step.
    let mut store = FakeStore::default();
    let mut p = started(&config, &mut store);
    let mut rng = Rng(11);
    let mut trace = Vec::new();
    let mut states = Vec::new();
    let mut actions = Vec::new();
    for t in 0..STEPS {
        let state = p.save_state().unwrap();
        // What the state says of the run is what the protocol says.
        assert_eq!(state.slot_positions(), p.slot_positions());
        assert_eq!(state.counters(), p.counters());
        assert_eq!(state.next_step(), p.next_step());
        states.push((state, store.clone()));
        let (y, norm) = inputs(t, &mut rng);
        trace.push(step(&mut p, &mut store, y, norm));
        actions.push(trace.last().unwrap().clone());
    }
    let end = serde_json::to_string(&p.save_state().unwrap()).unwrap();
    let seen = |needle: &str, from: usize| actions[from..].iter().any(|a| a.contains(needle));
    // Every kind of decision happens, after the resume points below too.
    for needle in ["Rewind", "ResetOptimizer", "Restore", "Skip", "Commit"] {
        assert!(seen(needle, 30), "no {needle} after step 30");
    }
    assert!(p.counters().drift_alarms > 0, "{:?}", p.counters());

    // Resume at many points, through JSON; the rest of the run must be identical.
    for resume in (1..STEPS).step_by(13) {
        let (saved, store) = &states[resume as usize];
        let mut store = store.clone();
        let state = round_trip(saved);
        assert_eq!(&state, saved);
        assert_eq!(state.next_step(), resume);
        let mut q = StepProtocol::from_state(&config, Mode::Enforce, state).unwrap();
        let mut rng = Rng(11);
        for t in 0..STEPS {
            let (y, norm) = inputs(t, &mut rng);
            if t >= resume {
                assert_eq!(
                    step(&mut q, &mut store, y, norm),
                    trace[t as usize],
                    "resumed at {resume}"
                );
            }
        }
        assert_eq!(
            serde_json::to_string(&q.save_state().unwrap()).unwrap(),
            end,
            "resumed at {resume}: final state differs"
        );
    }
}

#[test]
fn every_signal_saves_and_restores_its_history() {
    for signal in [
        SignalKind::Probe,
        SignalKind::LossSpike,
        SignalKind::GradientNormSpike,
        SignalKind::GradientAgreement,
    ] {
        let config = ControllerConfig::default()
            .with_signal(signal)
            .with_spike_window(6)
            .with_epsilon(3.0);
        let mut store = FakeStore::default();
        let mut p = StepProtocol::new(&config, Mode::Enforce, None).unwrap();
        let directive = p.start().unwrap();
        p.complete(store.obey(&directive)).unwrap();
        let mut rng = Rng(3);
        let mut ys: Vec<f64> = (0..60).map(|_| 0.5 + rng.next()).collect();
        ys[30] = 40.0;
        for &y in &ys[..20] {
            step(&mut p, &mut store, y, 1.0);
        }
        let mut resumed_store = store.clone();
        let mut q =
            StepProtocol::from_state(&config, Mode::Enforce, round_trip(&p.save_state().unwrap()))
                .unwrap();
        for &y in &ys[20..] {
            assert_eq!(
                step(&mut q, &mut resumed_store, y, 1.0),
                step(&mut p, &mut store, y, 1.0),
                "{signal:?}"
            );
        }
        assert_eq!(q.reference(), p.reference());
    }
}

#[test]
fn wrong_version_configuration_or_mode_is_refused() {
    let config = config();
    let p = started(&config, &mut FakeStore::default());
    let state = p.save_state().unwrap();
    assert_eq!(state.version(), PROTOCOL_STATE_VERSION);

    let mut json: serde_json::Value = serde_json::to_value(&state).unwrap();
    json["version"] = serde_json::json!(PROTOCOL_STATE_VERSION + 1);
    let future: ProtocolState = serde_json::from_value(json).unwrap();
    assert_eq!(future.version(), PROTOCOL_STATE_VERSION + 1);
    let err = StepProtocol::from_state(&config, Mode::Enforce, future).unwrap_err();
    assert_eq!(
        err,
        ProtocolStateError::Version {
            found: PROTOCOL_STATE_VERSION + 1,
            supported: PROTOCOL_STATE_VERSION
        }
    );
    assert!(err.to_string().contains("version"));

    let other = config.clone().with_epsilon(0.25);
    let err = StepProtocol::from_state(&other, Mode::Enforce, state.clone()).unwrap_err();
    assert!(matches!(err, ProtocolStateError::Mismatch { what } if what.contains("config")));
    let err = StepProtocol::from_state(&config, Mode::Observe, state.clone()).unwrap_err();
    assert_eq!(err, ProtocolStateError::Mismatch { what: "mode" });

    // A state whose ring does not fit its own configuration.
    let mut json: serde_json::Value = serde_json::to_value(&state).unwrap();
    json["slots"].as_array_mut().unwrap().pop();
    let damaged: ProtocolState = serde_json::from_value(json).unwrap();
    let err = StepProtocol::from_state(&config, Mode::Enforce, damaged).unwrap_err();
    assert!(
        matches!(err, ProtocolStateError::Inconsistent { .. }),
        "{err}"
    );
}

#[test]
fn a_state_is_taken_between_steps_only() {
    let config = config();
    let mut p = StepProtocol::new(&config, Mode::Enforce, Some(1.0)).unwrap();
    assert_eq!(
        p.save_state().unwrap_err(),
        ProtocolStateError::NotBetweenSteps { expected: "start" }
    );
    p.start().unwrap();
    p.complete(Completion::default()).unwrap();
    p.begin_step(None).unwrap();
    assert_eq!(
        p.save_state().unwrap_err(),
        ProtocolStateError::NotBetweenSteps { expected: "decide" }
    );
    p.decide(Some(0.9)).unwrap();
    assert_eq!(
        p.save_state().unwrap_err(),
        ProtocolStateError::NotBetweenSteps {
            expected: "complete"
        }
    );
    let done = p.complete(Completion::default()).unwrap();
    assert_eq!(done.action, Action::Commit);
    assert!(p.save_state().is_ok());
}

#[test]
fn a_slot_fingerprint_set_after_resume_guards_the_restores() {
    let config = config();
    let p = started(&config, &mut FakeStore::default());
    let state = p.save_state().unwrap();
    let mut p = StepProtocol::from_state(&config, Mode::Enforce, state).unwrap();
    p.set_slot_fingerprint(stab_core::SlotId::CURRENT, Some(42));
    assert!(matches!(
        p.begin_step(Some(1.0)).unwrap(),
        StepPlan::Propose { measure: true }
    ));
    assert_eq!(p.decide(Some(1e6)).unwrap(), Directive::Restore);
    let err = p.complete(Completion::fingerprinted(41)).unwrap_err();
    assert!(
        matches!(
            err,
            stab_core::StabError::Safety(stab_core::SafetyViolation::InexactRestore {
                expected: 42,
                actual: 41,
                ..
            })
        ),
        "{err}"
    );
}

/// An edit of a saved state's JSON.
type JsonEdit = dyn Fn(&mut serde_json::Value);

#[test]
fn a_state_that_contradicts_itself_is_refused() {
    let config = config();
    let p = started(&config, &mut FakeStore::default());
    let state = p.save_state().unwrap();
    assert_eq!(state.config(), &config);
    assert_eq!(state.mode(), Mode::Enforce);
    let edited = |edit: &JsonEdit| {
        let mut json = serde_json::to_value(&state).unwrap();
        edit(&mut json);
        let damaged: ProtocolState = serde_json::from_value(json).unwrap();
        StepProtocol::from_state(&config, Mode::Enforce, damaged).unwrap_err()
    };
    let cases: [(&str, &JsonEdit); 4] = [
        ("no last accepted state", &|j| {
            j["slots"][0] = serde_json::Value::Null
        }),
        ("detectors", &|j| j["gate"] = serde_json::Value::Null),
        ("detectors", &|j| j["drift"] = serde_json::Value::Null),
        ("monitor", &|j| j["controller"] = serde_json::Value::Null),
    ];
    for (what, edit) in cases {
        let err = edited(edit);
        assert!(
            matches!(&err, ProtocolStateError::Inconsistent { reason } if reason.contains(what)),
            "{what}: {err}"
        );
    }
    // The untouched state is accepted (the edits above are what is refused).
    assert!(StepProtocol::from_state(&config, Mode::Enforce, state.clone()).is_ok());
    // Observe mode keeps no snapshot: an empty slot 0 is its normal state.
    let mut observe = StepProtocol::new(&config, Mode::Observe, Some(2.0)).unwrap();
    observe.start().unwrap();
    observe.complete(Completion::default()).unwrap();
    let saved = observe.save_state().unwrap();
    assert_eq!(saved.slot_positions().first(), Some(&None));
    assert_eq!(saved.mode(), Mode::Observe);
    assert!(StepProtocol::from_state(&config, Mode::Observe, saved).is_ok());
}

#[test]
fn a_spike_history_must_fit_its_window() {
    let spike = |window: usize, history: Vec<f64>| {
        stab_core::SignalState::Spike {
            name: "loss-spike".to_owned(),
            window,
            history,
        }
        .into_signal()
    };
    assert!(spike(2, vec![1.0]).is_ok());
    assert!(spike(2, vec![1.0, 2.0]).is_ok());
    assert!(spike(3, vec![]).is_err(), "empty history");
    assert!(
        spike(2, vec![1.0, 2.0, 3.0]).is_err(),
        "longer than its window"
    );
    assert!(spike(1, vec![1.0]).is_err(), "window below 2");
    assert!(spike(0, vec![1.0]).is_err(), "window below 2");
    let unknown = stab_core::SignalState::Spike {
        name: "loss-spik".to_owned(),
        window: 4,
        history: vec![1.0],
    };
    assert!(unknown.into_signal().unwrap_err().contains("loss-spik"));
}
