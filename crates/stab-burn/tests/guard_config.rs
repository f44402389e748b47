//! The guard's configuration and modes.

mod common;

use common::{Net, adamw, batch, grads, probe};
use stab_burn::{
    Fault, FaultKind, FaultSchedule, Guard, GuardConfig, GuardError, GuardMode, StoreKind,
};
use stab_core::SignalKind;

#[test]
fn guard_config_round_trips_through_json_and_rejects_unknown_fields() {
    let config = GuardConfig::default()
        .with_epsilon(0.25)
        .with_signal(SignalKind::GradientNormSpike)
        .with_store(StoreKind::Host)
        .with_mode(GuardMode::Observe)
        .with_verify_restores(true);
    let json = serde_json::to_string(&config).unwrap();
    assert_eq!(serde_json::from_str::<GuardConfig>(&json).unwrap(), config);
    let partial: GuardConfig =
        serde_json::from_str(r#"{"store": "host", "controller": {"epsilon": 0.3}}"#).unwrap();
    assert_eq!(partial.store, StoreKind::Host);
    assert_eq!(partial.controller.epsilon, Some(0.3));
    assert!(partial.monitor && !partial.verify_restores);
    assert!(serde_json::from_str::<GuardConfig>(r#"{"stor": "host"}"#).is_err());
}

#[test]
fn the_probe_signal_without_a_probe_is_a_typed_error() {
    let device = common::training_device();
    let model = Net::new(&device);
    let err = Guard::builder(GuardConfig::default())
        .build(&model, adamw())
        .unwrap_err();
    assert!(matches!(err, GuardError::MissingProbe));
    let err = Guard::builder(GuardConfig::default().with_epsilon(-1.0))
        .probe(probe(&device))
        .build(&model, adamw())
        .unwrap_err();
    assert!(err.to_string().contains("epsilon"), "{err}");
}

#[test]
fn observe_mode_keeps_every_proposal_but_reports_the_rejections() {
    let device = common::training_device();
    let mut model = Net::new(&device);
    let mut guard = Guard::builder(GuardConfig::default().with_mode(GuardMode::Observe))
        .probe(probe(&device))
        .build(&model, adamw())
        .unwrap();
    let faults = FaultSchedule::new(0).with(Fault::new(FaultKind::GradientNan, 2, 1));
    let mut actions = Vec::new();
    for t in 0..3 {
        let (g, _) = grads(&model, &batch(t, 16, &device));
        let g = faults.grads(t, g, &model);
        let out = guard.step(0.01, model, g).unwrap();
        actions.push(out.report.action);
        model = out.model;
    }
    use stab_core::Action::{Commit as Committed, Observe as Observed};
    assert_eq!(actions, [Committed, Committed, Observed]);
    assert_eq!(guard.counters().rejected, 1);
    assert!(guard.measure_probe(&model).unwrap().unwrap().is_nan());
    assert_eq!(
        guard.store_memory().device_private,
        0,
        "observe mode takes no snapshot"
    );
}

#[test]
fn a_guard_can_move_to_another_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Guard<Net>>();
    assert_send::<stab_burn::HostStore<Net>>();
    assert_send::<stab_burn::DeviceStore<Net>>();
}

#[test]
fn step_reports_say_where_the_time_went() {
    let device = common::training_device();
    let mut model = Net::new(&device);
    // Gate off: the NaN gradient must reach the probe to be rolled back.
    let mut guard = Guard::builder(GuardConfig::default().with_gradient_gate(false))
        .probe(probe(&device))
        .build(&model, adamw())
        .unwrap();
    let faults = FaultSchedule::new(0).with(Fault::new(FaultKind::GradientNan, 1, 1));
    let mut timings = Vec::new();
    for t in 0..2 {
        let (g, _) = grads(&model, &batch(t, 16, &device));
        let g = faults.grads(t, g, &model);
        let out = guard.step(0.01, model, g).unwrap();
        timings.push(out.report.timings);
        model = out.model;
    }
    let zero = std::time::Duration::ZERO;
    assert!(timings[0].optimizer > zero && timings[0].measure > zero);
    assert!(timings[0].snapshot > zero && timings[0].restore == zero);
    assert!(timings[1].restore > zero && timings[1].snapshot == zero);
    assert_eq!(
        timings[1].total(),
        timings[1].optimizer + timings[1].control()
    );
}
