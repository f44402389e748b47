//! The recovery actions of the step protocol through the Burn guard, with both stores: a gated
//! gradient leaves the state untouched, a rewind brings back the chosen ring entry bit for bit
//! (parameters, optimizer state, running statistics, the controller's reference), an optimizer
//! reset keeps the parameters and clears the optimizer, and an exhausted ladder stops with the
//! last accepted state handed back.

mod common;

use std::collections::HashMap;

use common::{Net, StateBytes, adamw, assert_same_state, batch, grads, probe};
use stab_burn::{Fault, FaultKind, FaultSchedule, Guard, GuardConfig, GuardError, StoreKind};
use stab_core::{
    Action, ControllerConfig, GateConfig, LadderConfig, RejectionReason, RingConfig, Rung,
    StabError,
};

fn recovery_config(store: StoreKind, rungs: Vec<Rung>) -> GuardConfig {
    GuardConfig::default()
        .with_store(store)
        .with_verify_restores(true)
        .with_controller(
            ControllerConfig::default()
                .with_ring(RingConfig { ages: vec![2, 4] })
                .with_ladder(LadderConfig {
                    enabled: true,
                    rejections_per_rung: 2,
                    rejection_window: 2,
                    rungs,
                    cooldown: 50,
                })
                .with_gradient_gate(false)
                .with_drift_detection(false),
        )
}

fn gated_gradient_leaves_the_state_untouched(store: StoreKind) {
    let device = common::training_device();
    let mut model = Net::new(&device);
    let config = GuardConfig::default().with_store(store).with_controller(
        ControllerConfig::default().with_gate(GateConfig {
            warmup: 4,
            ..GateConfig::default()
        }),
    );
    let mut guard = Guard::builder(config)
        .probe(probe(&device))
        .build(&model, adamw())
        .unwrap();
    let faults = FaultSchedule::new(0)
        .with(Fault::new(FaultKind::GradientScale { factor: 300.0 }, 6, 1))
        .with(Fault::new(FaultKind::GradientNan, 7, 1));
    let mut actions = Vec::new();
    for t in 0..9 {
        let (g, _) = grads(&model, &batch(t, 16, &device));
        let g = faults.grads(t, g, &model);
        let before = StateBytes::of(&model, guard.optimizer());
        let out = guard.step(0.01, model, g).unwrap();
        let after = StateBytes::of(&out.model, guard.optimizer());
        actions.push(out.report.action);
        if out.report.action == Action::Skip {
            assert_same_state(&before, &after);
            assert!(matches!(
                out.report
                    .record
                    .as_ref()
                    .unwrap()
                    .decision
                    .rejection_reason(),
                Some(RejectionReason::GradientGate { .. })
            ));
        }
        model = out.model;
    }
    assert_eq!(
        actions,
        [
            Action::Commit,
            Action::Commit,
            Action::Commit,
            Action::Commit,
            Action::Commit,
            Action::Commit,
            Action::Skip,
            Action::Skip,
            Action::Commit
        ],
        "the 300x and NaN gradients are gated, nothing else"
    );
    assert_eq!(guard.counters().gate_rejections, 2);
}

#[test]
fn gated_gradient_leaves_the_state_untouched_device_store() {
    gated_gradient_leaves_the_state_untouched(StoreKind::Device);
}

#[test]
fn gated_gradient_leaves_the_state_untouched_host_store() {
    gated_gradient_leaves_the_state_untouched(StoreKind::Host);
}

fn rewind_restores_the_ring_entry_bit_for_bit(store: StoreKind) {
    let device = common::training_device();
    let mut model = Net::new(&device);
    let mut guard = Guard::builder(recovery_config(store, vec![Rung::Rewind, Rung::Rewind]))
        .probe(probe(&device))
        .build(&model, adamw())
        .unwrap();
    // position → (state, reference ŷ after accepting it)
    let mut accepted: HashMap<u64, (StateBytes, f64)> = HashMap::new();
    accepted.insert(
        0,
        (
            StateBytes::of(&model, guard.optimizer()),
            guard.reference().unwrap(),
        ),
    );
    let faults = FaultSchedule::new(0).with(Fault::new(FaultKind::GradientNan, 7, 4));
    let mut rewinds = Vec::new();
    for t in 0..13 {
        let (g, _) = grads(&model, &batch(t, 16, &device));
        let g = faults.grads(t, g, &model);
        let out = guard.step(0.01, model, g).unwrap();
        let state = StateBytes::of(&out.model, guard.optimizer());
        match out.report.action {
            Action::Commit => {
                accepted.insert(t + 1, (state, guard.reference().unwrap()));
            }
            Action::Rewind { to_position } => {
                let (expected, reference) = &accepted[&to_position];
                assert_same_state(expected, &state);
                assert_eq!(
                    guard.reference().unwrap().to_bits(),
                    reference.to_bits(),
                    "the controller's reference comes back with the state"
                );
                rewinds.push((t, to_position));
            }
            Action::Restore => {}
            other => panic!("step {t}: unexpected {other:?}"),
        }
        model = out.model;
    }
    // NaN at 7..11: rejections 7, 8 → rung 1 rewinds to the youngest snapshot older than the
    // last accepted state (position 7): the ring (ages 2, 4) holds 6, 4 and 0 → 6. Rejections
    // 9, 10 → rung 2 goes further back than the first rewind: 4.
    assert_eq!(rewinds, [(8, 6), (10, 4)]);
    assert_eq!(guard.counters().rewinds, 2);
    assert_eq!(guard.counters().escalations, 2);
}

#[test]
fn rewind_restores_the_ring_entry_bit_for_bit_device_store() {
    rewind_restores_the_ring_entry_bit_for_bit(StoreKind::Device);
}

#[test]
fn rewind_restores_the_ring_entry_bit_for_bit_host_store() {
    rewind_restores_the_ring_entry_bit_for_bit(StoreKind::Host);
}

#[test]
fn optimizer_reset_keeps_the_parameters_and_clears_the_optimizer_state() {
    let device = common::training_device();
    let mut model = Net::new(&device);
    let mut guard = Guard::builder(recovery_config(
        StoreKind::Device,
        vec![Rung::ResetOptimizer],
    ))
    .probe(probe(&device))
    .build(&model, adamw())
    .unwrap();
    let faults = FaultSchedule::new(0).with(Fault::new(FaultKind::GradientNan, 3, 2));
    let mut last_accepted = None;
    for t in 0..6 {
        let (g, _) = grads(&model, &batch(t, 16, &device));
        let g = faults.grads(t, g, &model);
        let out = guard.step(0.01, model, g).unwrap();
        let state = StateBytes::of(&out.model, guard.optimizer());
        match out.report.action {
            Action::Commit => last_accepted = Some(state),
            Action::Restore => {}
            Action::ResetOptimizer => {
                assert_eq!(t, 4);
                let last: &StateBytes = last_accepted.as_ref().unwrap();
                assert_eq!(
                    state.tensors, last.tensors,
                    "parameters and running stats kept"
                );
                assert!(state.optim_tensors.is_empty(), "moments cleared");
                assert!(!last.optim_tensors.is_empty());
            }
            other => panic!("step {t}: unexpected {other:?}"),
        }
        model = out.model;
    }
    assert_eq!(guard.counters().optimizer_resets, 1);
    // The optimizer starts afresh and training goes on.
    assert!(!guard.optimizer().to_record_is_empty());
}

trait RecordIsEmpty {
    fn to_record_is_empty(&self) -> bool;
}

impl RecordIsEmpty for burn::optim::ModuleOptimizer {
    fn to_record_is_empty(&self) -> bool {
        burn_pack::Reader::from_bytes(self.into_bytes().unwrap())
            .unwrap()
            .tensor_names()
            .is_empty()
    }
}

fn exhausted_ladder_stops_and_hands_the_last_accepted_state_back(store: StoreKind) {
    let device = common::training_device();
    let mut model = Net::new(&device);
    let mut guard = Guard::builder(recovery_config(store, vec![Rung::Rewind]))
        .probe(probe(&device))
        .build(&model, adamw())
        .unwrap();
    let faults = FaultSchedule::new(0).with(Fault::new(FaultKind::GradientNan, 3, 100));
    let mut last_accepted = StateBytes::of(&model, guard.optimizer());
    for t in 0..20 {
        let (g, _) = grads(&model, &batch(t, 16, &device));
        let g = faults.grads(t, g, &model);
        match guard.step(0.01, model, g) {
            Ok(out) => {
                if matches!(out.report.action, Action::Commit | Action::Rewind { .. }) {
                    last_accepted = StateBytes::of(&out.model, guard.optimizer());
                }
                model = out.model;
            }
            Err(GuardError::Controller(StabError::RecoveryExhausted(why))) => {
                // NaN from step 3: rejections 3, 4 → rewind; 5, 6 → no rung left.
                assert_eq!(t, 6);
                assert_eq!(why.rungs, 1);
                let last = guard.take_last_accepted().expect("handed back");
                assert_same_state(&last_accepted, &StateBytes::of(&last, guard.optimizer()));
                let (g, _) = grads(&last, &batch(t, 16, &device));
                let again = guard.step(0.01, last, g).unwrap_err();
                assert!(
                    matches!(again, GuardError::Controller(StabError::Stopped(_))),
                    "{again}"
                );
                return;
            }
            Err(other) => panic!("{other}"),
        }
    }
    panic!("the ladder never ran out");
}

#[test]
fn exhausted_ladder_stops_and_hands_the_last_accepted_state_back_device_store() {
    exhausted_ladder_stops_and_hands_the_last_accepted_state_back(StoreKind::Device);
}

#[test]
fn exhausted_ladder_stops_and_hands_the_last_accepted_state_back_host_store() {
    exhausted_ladder_stops_and_hands_the_last_accepted_state_back(StoreKind::Host);
}
