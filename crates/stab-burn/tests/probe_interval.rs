//! With a probe interval k > 1, only every k-th step is measured, snapshots follow the same
//! cadence, and a rejection rolls back to the last probed-and-accepted state (past the unprobed
//! steps in between).

mod common;

use common::{Net, StateBytes, adamw, assert_same_state, batch, grads, probe};
use stab_burn::{Fault, FaultKind, FaultSchedule, Guard, GuardConfig, StoreKind};

fn run(store: StoreKind) {
    let device = common::training_device();
    let mut model = Net::new(&device);
    let mut guard = Guard::builder(
        GuardConfig::default()
            .with_gradient_gate(false)
            .with_probe_interval(3)
            .with_store(store)
            .with_verify_restores(true),
    )
    .probe(probe(&device))
    .build(&model, adamw())
    .unwrap();
    // Steps 0, 1 unprobed; 2 probed. Then 3, 4 unprobed (4 is poisoned); 5 probed → rejected.
    let faults = FaultSchedule::new(0).with(Fault::new(FaultKind::GradientNan, 4, 1));
    let mut actions = Vec::new();
    let mut after_step_2 = None;
    for t in 0..6 {
        let (g, _) = grads(&model, &batch(t, 16, &device));
        let g = faults.grads(t, g, &model);
        let out = guard.step(0.01, model, g).unwrap();
        actions.push(out.report.action);
        model = out.model;
        if t == 2 {
            after_step_2 = Some(StateBytes::of(&model, guard.optimizer()));
        }
    }
    use stab_core::Action::{Commit as Committed, Restore as RolledBack, Unprobed};
    assert_eq!(
        actions,
        [
            Unprobed, Unprobed, Committed, Unprobed, Unprobed, RolledBack
        ]
    );
    assert_same_state(
        &after_step_2.unwrap(),
        &StateBytes::of(&model, guard.optimizer()),
    );
    assert_eq!(guard.counters().steps, 2, "only probed steps are decided");
}

#[test]
fn a_rejection_rolls_back_to_the_last_probed_and_accepted_state_device_store() {
    run(StoreKind::Device);
}

#[test]
fn a_rejection_rolls_back_to_the_last_probed_and_accepted_state_host_store() {
    run(StoreKind::Host);
}
