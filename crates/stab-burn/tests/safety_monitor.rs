//! stab-core's safety monitor runs beside the guard: over a run with several kinds of fault it
//! finds no violation, and it does catch an inexact restore when there is one.

mod common;

use burn::optim::ModuleOptimizer;
use common::{Net, adamw, batch, grads, probe};
use stab_burn::{
    DeviceStore, Fault, FaultKind, FaultSchedule, Guard, GuardConfig, GuardError, StateStore,
    StoreError, StoreKind, StoreMemory,
};
use stab_core::{SafetyViolation, SlotId};

fn faults() -> FaultSchedule {
    FaultSchedule::new(11)
        .with(Fault::new(
            FaultKind::LearningRateScale { factor: 1000.0 },
            4,
            2,
        ))
        .with(Fault::new(FaultKind::GradientNan, 8, 1))
        .with(Fault::new(FaultKind::InputNoise { amplitude: 50.0 }, 10, 1))
        .with(Fault::new(FaultKind::LabelFlip { num_classes: 3 }, 12, 1))
        .with(Fault::new(FaultKind::GradientInf, 14, 1))
}

fn run(store: StoreKind) {
    let device = common::training_device();
    let mut model = Net::new(&device);
    let mut guard = Guard::builder(
        GuardConfig::default()
            .with_store(store)
            .with_monitor(true)
            .with_verify_restores(true),
    )
    .probe(probe(&device))
    .build(&model, adamw())
    .unwrap();
    let faults = faults();
    let mut rolled_back = Vec::new();
    for t in 0..18 {
        let mut b = batch(t, 16, &device);
        b.x = faults.inputs(t, b.x);
        b.labels = faults.checked_labels(t, b.labels).unwrap();
        b.targets = b.labels.clone().one_hot::<2>(3).float();
        let (g, _) = grads(&model, &b);
        let g = faults.grads(t, g, &model);
        // Every step is checked: Theorem 7.3, Proposition 7.5 on each decision and, with
        // verify_restores, Proposition 7.4 on each restore. Any violation is an Err here.
        let out = guard.step(faults.lr(t, 0.01), model, g).unwrap();
        // A rejection: rolled back after the probe, or a NaN gradient gated before the step.
        if out.report.is_rejection() {
            rolled_back.push(t);
        }
        model = out.model;
    }
    for t in [4, 8, 14] {
        assert!(
            rolled_back.contains(&t),
            "step {t} rolled back: {rolled_back:?}"
        );
    }
}

#[test]
fn safety_monitor_reports_no_violation_over_a_faulty_run_device_store() {
    run(StoreKind::Device);
}

#[test]
fn safety_monitor_reports_no_violation_over_a_faulty_run_host_store() {
    run(StoreKind::Host);
}

/// A store that "restores" the rejected proposal: the monitor must notice.
struct Forgetful(DeviceStore<Net>);

impl StateStore<Net> for Forgetful {
    fn name(&self) -> &'static str {
        "forgetful"
    }
    fn save(&mut self, model: &Net, optim: &ModuleOptimizer) -> Result<(), StoreError> {
        self.0.save(model, optim)
    }
    fn restore(
        &mut self,
        rejected_model: Net,
        rejected_optim: ModuleOptimizer,
    ) -> Result<(Net, ModuleOptimizer), StoreError> {
        Ok((rejected_model, rejected_optim))
    }
    fn copy(&mut self, from: SlotId, to: SlotId) -> Result<(), StoreError> {
        self.0.copy(from, to)
    }
    fn rewind(
        &mut self,
        _slot: SlotId,
        rejected_model: Net,
        rejected_optim: ModuleOptimizer,
    ) -> Result<(Net, ModuleOptimizer), StoreError> {
        Ok((rejected_model, rejected_optim))
    }
    fn release(&mut self, slot: SlotId) -> Result<(), StoreError> {
        self.0.release(slot)
    }
    fn memory(&self) -> StoreMemory {
        StateStore::memory(&self.0)
    }
}

#[test]
fn safety_monitor_catches_an_inexact_restore() {
    let device = common::training_device();
    let model = Net::new(&device);
    // Gate off: the NaN gradient must reach the probe, so that the store is asked to restore.
    let mut guard = Guard::builder(
        GuardConfig::default()
            .with_verify_restores(true)
            .with_gradient_gate(false),
    )
    .probe(probe(&device))
    .store(Forgetful(DeviceStore::new()))
    .build(&model, adamw())
    .unwrap();
    let (g, _) = grads(&model, &batch(0, 16, &device));
    let g = FaultSchedule::new(0)
        .with(Fault::new(FaultKind::GradientNan, 0, 1))
        .grads(0, g, &model);
    let err = guard.step(0.01, model, g).unwrap_err();
    assert!(
        matches!(
            err,
            GuardError::Safety(SafetyViolation::InexactRestore { step: 0, .. })
        ),
        "{err}"
    );
}
