//! `Guard::step_lent_with` (the step a burn-train `Learner` uses, on the optimizer it lends)
//! takes the same decisions and leaves the same state as `Guard::step` on its own optimizer:
//! through accepted steps and NaN-gradient rejections, the lent optimizer ends byte for byte
//! where the owning guard's optimizer does, and after each rejection it is the last accepted
//! state.
//!
//! Data: the seeded synthetic blobs of `tests/common` (a unit test, not a result).

mod common;

use burn::module::Module;
use common::{Net, StateBytes, adamw, assert_same_state, batch, grads, probe};
use stab_burn::{Fault, FaultKind, FaultSchedule, Guard, GuardConfig, StepAction, StepInputs};

const LR: f64 = 0.01;

fn guard(model: &Net) -> Guard<Net> {
    let device = model.devices()[0].clone();
    Guard::builder(
        GuardConfig::default()
            .with_gradient_gate(false)
            .with_epsilon(0.5)
            .with_verify_restores(true),
    )
    .probe(probe(&device))
    .build(model, adamw())
    .unwrap()
}

#[test]
fn a_lent_optimizer_follows_the_owned_one_and_is_restored_in_place() {
    let device = common::training_device();
    let initial = Net::new(&device);
    let faults = FaultSchedule::new(0).with(Fault::new(FaultKind::GradientNan, 4, 2));

    let mut owning = guard(&initial);
    let mut lending = guard(&initial);
    let mut lent = adamw();
    let (mut a, mut b) = (initial.clone(), initial);
    let mut accepted = StateBytes::of(&b, &lent);
    let mut actions = Vec::new();

    for t in 0..8u64 {
        let data = batch(t, 16, &device);
        let (ga, _) = grads(&a, &data);
        let (gb, _) = grads(&b, &data);
        let ga = faults.grads(t, ga, &a);
        let gb = faults.grads(t, gb, &b);

        let out_a = owning.step(LR, a, ga).unwrap();
        let out_b = lending
            .step_lent_with(&mut lent, LR, b, gb, StepInputs::default())
            .unwrap();
        assert_eq!(out_a.report.action, out_b.report.action, "step {t}");
        a = out_a.model;
        b = out_b.model;

        let state_a = StateBytes::of(&a, owning.optimizer());
        let state_b = StateBytes::of(&b, &lent);
        assert_same_state(&state_a, &state_b);
        match out_b.report.action {
            StepAction::Commit => accepted = state_b,
            StepAction::Restore => assert_same_state(&accepted, &state_b),
            other => panic!("step {t}: unexpected {other:?}"),
        }
        actions.push(out_b.report.action);
    }
    let restores = actions
        .iter()
        .filter(|a| **a == StepAction::Restore)
        .count();
    assert_eq!(restores, 2, "{actions:?}");
}
