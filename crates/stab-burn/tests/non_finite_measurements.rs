//! A NaN or infinite measurement is a rejection with its own reason, never an acceptance, and
//! it leaves the reference where it was.

mod common;

use burn::module::Module;
use common::{Net, adamw, batch, grads, probe};
use stab_burn::{
    Fault, FaultKind, FaultSchedule, Guard, GuardConfig, Measure, ProbeError, StepAction,
};
use stab_core::RejectionReason;

fn run_with(fault: FaultKind) {
    let device = common::training_device();
    let mut model = Net::new(&device);
    let mut guard = Guard::builder(
        GuardConfig::default()
            .with_gradient_gate(false)
            .with_verify_restores(true),
    )
    .probe(probe(&device))
    .build(&model, adamw())
    .unwrap();
    for t in 0..2 {
        let (g, _) = grads(&model, &batch(t, 16, &device));
        model = guard.step(0.01, model, g).unwrap().model;
    }
    let reference = guard.reference().unwrap();

    let (g, _) = grads(&model, &batch(2, 16, &device));
    let g = FaultSchedule::new(0)
        .with(Fault::new(fault, 2, 1))
        .grads(2, g, &model);
    let out = guard.step(0.01, model, g).unwrap();

    let record = out.report.record.as_ref().unwrap();
    assert!(record.measurement.is_nan(), "{record:?}");
    assert_eq!(out.report.action, StepAction::Restore);
    assert!(matches!(
        record.decision.rejection_reason(),
        Some(RejectionReason::NonFiniteMeasurement { measurement }) if measurement.is_nan()
    ));
    assert_eq!(record.reference.to_bits(), reference.to_bits());
    assert_eq!(record.reference_after.to_bits(), reference.to_bits());
    assert_eq!(guard.reference().unwrap().to_bits(), reference.to_bits());
    // The restored model measures what the last accepted one did.
    assert!(probe(&device).measure(&out.model).unwrap().is_finite());
}

#[test]
fn nan_probe_loss_is_a_rejection_and_leaves_the_reference_unchanged() {
    run_with(FaultKind::GradientNan);
}

#[test]
fn infinite_gradients_give_a_nan_probe_loss_that_is_rejected_the_same_way() {
    run_with(FaultKind::GradientInf);
}

/// A measurement that returns whatever it is told, to drive the controller directly.
struct Scripted(std::sync::Mutex<Vec<f64>>);

impl Measure<Net> for Scripted {
    fn measure(&self, _model: &Net) -> Result<f64, ProbeError> {
        Ok(self.0.lock().unwrap().remove(0))
    }
}

#[test]
fn positive_and_negative_infinity_are_rejected_and_the_run_continues() {
    let device = common::training_device();
    let mut model = Net::new(&device);
    let script = vec![1.0, 0.9, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 0.8];
    let mut guard = Guard::builder(GuardConfig::default().with_gradient_gate(false))
        .probe(Scripted(std::sync::Mutex::new(script)))
        .build(&model, adamw())
        .unwrap();
    let mut actions = Vec::new();
    for t in 0..5 {
        let (g, _) = grads(&model, &batch(t, 16, &device));
        let out = guard.step(0.01, model, g).unwrap();
        actions.push(out.report.action);
        model = out.model;
    }
    use stab_core::Action::{Commit as Committed, Restore as RolledBack};
    assert_eq!(
        actions,
        [Committed, RolledBack, RolledBack, RolledBack, Committed]
    );
    assert_eq!(guard.counters().rejected, 3);
    assert!(model.devices().len() == 1);
}

#[test]
fn a_non_finite_initial_probe_loss_is_an_error_not_a_reference() {
    let device = common::training_device();
    let model = Net::new(&device);
    let err = Guard::builder(GuardConfig::default().with_gradient_gate(false))
        .probe(Scripted(std::sync::Mutex::new(vec![f64::NAN])))
        .build(&model, adamw())
        .unwrap_err();
    assert!(err.to_string().contains("not finite"), "{err}");
}
