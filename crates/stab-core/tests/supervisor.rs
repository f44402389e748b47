//! The generic supervisor: cadence, observers, error paths.

use std::sync::{Arc, Mutex};

use stab_core::{
    ControllerConfig, InMemoryStore, JsonLinesWriter, RecordCollector, StabError, StepObserver,
    StepOutcome, StepRecord, Supervisor,
};

#[derive(Debug, thiserror::Error)]
#[error("closure failed on purpose")]
struct Boom;

type Sup = Supervisor<i64, InMemoryStore<i64>>;

fn supervisor(config: &ControllerConfig) -> Sup {
    Supervisor::new(config, InMemoryStore::new(), &0, 1.0).unwrap()
}

#[test]
fn probe_interval_measures_every_kth_step_and_rolls_back_past_unprobed_steps() {
    let config = ControllerConfig::default().with_probe_interval(3);
    let mut sup = supervisor(&config);
    let mut state = 0_i64;
    let mut measured = Vec::new();
    for t in 0..6 {
        let step = sup
            .step(
                state,
                |s| Ok::<_, Boom>(s + 1),
                |s| {
                    measured.push(*s);
                    // Step 5 (the second probe) blows up.
                    Ok(if t == 5 { 100.0 } else { 1.0 })
                },
            )
            .unwrap();
        assert_eq!(sup.next_step(), t + 1);
        assert_eq!(step.outcome.is_rejection(), t == 5, "step {t}");
        assert_eq!(
            step.outcome.record().is_some(),
            t == 2 || t == 5,
            "step {t}"
        );
        match (t, &step.outcome) {
            (2, StepOutcome::Decided(r)) => assert!(r.decision.is_accepted()),
            (5, StepOutcome::Decided(r)) => assert!(!r.decision.is_accepted()),
            (_, StepOutcome::Unprobed { step }) => assert_eq!(*step, t),
            other => panic!("unexpected outcome {other:?}"),
        }
        state = step.state;
    }
    assert_eq!(measured, vec![3, 6]);
    assert!(format!("{sup:?}").starts_with("Supervisor { protocol: StepProtocol"));
    // The rejection at step 5 rolled back to the state accepted at step 2 (three increments).
    assert_eq!(state, 3);
}

#[test]
fn observers_see_every_decision_as_json_lines() {
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Shared::default();
    let mut sup =
        supervisor(&ControllerConfig::default()).with_observer(JsonLinesWriter::new(sink.clone()));
    let mut state = 0;
    for y in [1.1, f64::NAN, 7.0, 0.9] {
        state = sup
            .step(state, |s| Ok::<_, Boom>(s + 1), |_| Ok(y))
            .unwrap()
            .state;
    }
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let records: Vec<StepRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 4);
    let accepted: Vec<bool> = records.iter().map(|r| r.decision.is_accepted()).collect();
    assert_eq!(accepted, [true, false, false, true]);
    assert!(records[1].measurement.is_nan());
    assert!(text.contains("non-finite-measurement"));
    assert!(text.contains("innovation-above-threshold"));
    assert_eq!(state, 2);
}

#[test]
fn closure_failures_are_errors_with_the_stage_and_step() {
    let mut sup = supervisor(&ControllerConfig::default());
    let err = sup
        .step(0, |_| Err::<i64, _>(Boom), |_| Ok(1.0))
        .unwrap_err();
    assert!(
        matches!(
            err,
            StabError::Closure {
                stage: "propose",
                step: 0,
                ..
            }
        ),
        "{err}"
    );
    let err = sup.step(0, Ok::<_, Boom>, |_| Err(Boom)).unwrap_err();
    assert!(
        matches!(
            err,
            StabError::Closure {
                stage: "measure",
                step: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn failing_observer_is_reported_not_swallowed() {
    struct Broken;
    impl StepObserver for Broken {
        fn on_step(&mut self, record: &StepRecord) -> Result<(), stab_core::ObserverError> {
            Err(stab_core::ObserverError {
                step: record.step,
                source: "disk full".into(),
            })
        }
    }
    let mut sup = supervisor(&ControllerConfig::default()).with_observer(Broken);
    let err = sup
        .step(0, |s| Ok::<_, Boom>(s + 1), |_| Ok(1.0))
        .unwrap_err();
    assert!(err.to_string().contains("disk full"), "{err}");
}

#[test]
fn invalid_configuration_is_rejected_at_construction() {
    let config = ControllerConfig::default().with_alpha(1.0);
    let err = Supervisor::new(&config, InMemoryStore::new(), &0_i64, 1.0).unwrap_err();
    assert!(err.to_string().contains("alpha = 1"), "{err}");
    let err = Supervisor::new(
        &ControllerConfig::default(),
        InMemoryStore::new(),
        &0_i64,
        f64::INFINITY,
    )
    .unwrap_err();
    assert!(matches!(err, StabError::NonFiniteInitialMeasurement { .. }));
}

#[test]
fn record_collector_keeps_records_in_order() {
    let mut collector = RecordCollector::default();
    let mut controller =
        stab_core::Controller::from_config(&ControllerConfig::default(), 1.0).unwrap();
    for y in [1.0, 2.0, 1.0] {
        collector.on_step(&controller.decide(y)).unwrap();
    }
    let steps: Vec<u64> = collector.records.iter().map(|r| r.step).collect();
    assert_eq!(steps, [0, 1, 2]);
}
