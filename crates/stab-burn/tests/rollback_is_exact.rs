//! Proposition 7.4 on a real Burn model: a rejected step leaves parameters, BatchNorm running
//! statistics and the AdamW state byte-identical to before it, for both stores, whichever thread
//! ran the training forward; and training continues exactly as from an untouched copy.

mod common;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use common::{Net, StateBytes, adamw, assert_same_state, batch, grads, probe};
use stab_burn::{
    Fault, FaultKind, FaultSchedule, Guard, GuardConfig, RunningStateSnapshot, StepAction,
    StoreKind,
};
use stab_core::{RejectionReason, SignalKind};

const LR: f64 = 0.01;

/// NaN gradients from step 3 on make every later proposal's probe loss NaN: a certain rejection.
fn nan_from(step: u64) -> FaultSchedule {
    FaultSchedule::new(0).with(Fault::new(FaultKind::GradientNan, step, u64::MAX - step))
}

fn guarded(store: StoreKind, model: &Net) -> Guard<Net> {
    guarded_with(store, SignalKind::Probe, model)
}

/// With the probe signal, the probe's `valid()` view happens to merge pending BatchNorm updates
/// before the guard saves or restores; the gradient-norm signal measures before the step and
/// never builds that view, so the stores' own merging is what is tested. ε is huge there: only
/// the non-finite norm of NaN gradients is rejected.
fn guarded_with(store: StoreKind, signal: SignalKind, model: &Net) -> Guard<Net> {
    let device = model.devices()[0].clone();
    let epsilon = if signal == SignalKind::Probe {
        0.5
    } else {
        1e12
    };
    Guard::builder(
        GuardConfig::default()
            .with_gradient_gate(false)
            .with_store(store)
            .with_signal(signal)
            .with_epsilon(epsilon)
            .with_verify_restores(true),
    )
    .probe(probe(&device))
    .build(model, adamw())
    .unwrap()
}

/// Three accepted AdamW steps, so that moments, step counts and running statistics are all
/// non-trivial.
fn warm_up(guard: &mut Guard<Net>, mut model: Net) -> Net {
    let device = model.devices()[0].clone();
    for t in 0..3 {
        let (g, _) = grads(&model, &batch(t, 16, &device));
        let out = guard.step(LR, model, g).unwrap();
        assert!(
            matches!(
                out.report.action,
                StepAction::Commit | StepAction::Calibrate
            ),
            "warm-up step {t}: {:?}",
            out.report
        );
        model = out.model;
    }
    model
}

fn rejected_step_restores_everything_byte_for_byte(store: StoreKind) {
    let device = common::training_device();
    let model = Net::new(&device);
    let mut guard = guarded(store, &model);
    let model = warm_up(&mut guard, model);
    let before = StateBytes::of(&model, guard.optimizer());

    // The rejected step runs a training forward (BatchNorm updates its statistics) and an AdamW
    // update (moments and step counts advance) before the guard sees it.
    let (g, _) = grads(&model, &batch(99, 16, &device));
    let g = nan_from(3).grads(3, g, &model);
    let out = guard.step(LR, model, g).unwrap();
    assert_eq!(out.report.action, StepAction::Restore);
    assert!(matches!(
        out.report
            .record
            .as_ref()
            .unwrap()
            .decision
            .rejection_reason(),
        Some(RejectionReason::NonFiniteMeasurement { .. })
    ));

    let after = StateBytes::of(&out.model, guard.optimizer());
    assert!(!before.running().is_empty() && !before.optim_tensors.is_empty());
    assert_same_state(&before, &after);
}

#[test]
fn rejected_step_restores_params_running_stats_and_adamw_state_byte_for_byte_device_store() {
    rejected_step_restores_everything_byte_for_byte(StoreKind::Device);
}

#[test]
fn rejected_step_restores_params_running_stats_and_adamw_state_byte_for_byte_host_store() {
    rejected_step_restores_everything_byte_for_byte(StoreKind::Host);
}

fn next_step_after_a_rollback_equals_the_same_step_from_an_untouched_copy(store: StoreKind) {
    let device = common::training_device();
    let model = Net::new(&device);
    let mut guard = guarded(store, &model);
    let model = warm_up(&mut guard, model);

    // An untouched copy: its own running statistics (`valid().train()` rebuilds them), its own
    // optimizer state (a record round trip).
    let copy_model = model.valid().train();
    let mut copy_optim: ModuleOptimizer = adamw().load_record(guard.optimizer().to_record());

    // A rejected step on the guarded side only.
    let (g, _) = grads(&model, &batch(99, 16, &device));
    let out = guard
        .step(LR, model.clone(), nan_from(3).grads(3, g, &model))
        .unwrap();
    assert_eq!(out.report.action, StepAction::Restore);

    // The same good step on both sides.
    let good = batch(4, 16, &device);
    let (g, _) = grads(&out.model, &good);
    let out = guard.step(LR, out.model, g).unwrap();
    assert_eq!(out.report.action, StepAction::Commit);
    let (g, _) = grads(&copy_model, &good);
    let copy_model = copy_optim.step(LR, copy_model, g);

    assert_same_state(
        &StateBytes::of(&copy_model, &copy_optim),
        &StateBytes::of(&out.model, guard.optimizer()),
    );
}

#[test]
fn next_step_after_a_rollback_equals_the_same_step_from_an_untouched_copy_device_store() {
    next_step_after_a_rollback_equals_the_same_step_from_an_untouched_copy(StoreKind::Device);
}

#[test]
fn next_step_after_a_rollback_equals_the_same_step_from_an_untouched_copy_host_store() {
    next_step_after_a_rollback_equals_the_same_step_from_an_untouched_copy(StoreKind::Host);
}

/// The training forward runs on another thread, so its BatchNorm update is a pending value of
/// *that* thread: the snapshot (on this thread) must merge it, and the restore must discard the
/// rejected step's.
fn rollback_is_exact_when_the_training_forward_runs_on_another_thread(
    store: StoreKind,
    signal: SignalKind,
) {
    let device = common::training_device();
    let model = Net::new(&device);
    let mut guard = guarded_with(store, signal, &model);
    let model = warm_up(&mut guard, model);
    let stats_before = StateBytes::of(&model, guard.optimizer());

    let forward_elsewhere = |model: Net, seed: u64| {
        let device = device.clone();
        std::thread::spawn(move || {
            let (g, _) = grads(&model, &batch(seed, 16, &device));
            (model, g)
        })
        .join()
        .unwrap()
    };

    // Accepted step, forward on another thread: the snapshot must include its update.
    let (model, g) = forward_elsewhere(model, 5);
    let out = guard.step(LR, model, g).unwrap();
    assert_eq!(out.report.action, StepAction::Commit);
    let accepted = StateBytes::of(&out.model, guard.optimizer());
    assert_ne!(
        accepted.running(),
        stats_before.running(),
        "the accepted step must have moved the running statistics"
    );

    // Rejected step, forward on yet another thread.
    let (model, g) = forward_elsewhere(out.model, 6);
    let g = nan_from(4).grads(4, g, &model);
    let out = guard.step(LR, model, g).unwrap();
    assert_eq!(out.report.action, StepAction::Restore);
    assert_same_state(&accepted, &StateBytes::of(&out.model, guard.optimizer()));

    // And the restored statistics stay restored: a later forward on this thread must start from
    // them, not from a pending value of the rejected step merged late.
    let restored = out.model;
    let plain = restored.valid();
    let again = StateBytes::of(&plain.train(), guard.optimizer());
    assert_eq!(accepted.running(), again.running());
}

#[test]
fn rollback_is_exact_when_the_training_forward_runs_on_another_thread_device_store() {
    for signal in [SignalKind::Probe, SignalKind::GradientNormSpike] {
        rollback_is_exact_when_the_training_forward_runs_on_another_thread(
            StoreKind::Device,
            signal,
        );
    }
}

#[test]
fn rollback_is_exact_when_the_training_forward_runs_on_another_thread_host_store() {
    for signal in [SignalKind::Probe, SignalKind::GradientNormSpike] {
        rollback_is_exact_when_the_training_forward_runs_on_another_thread(StoreKind::Host, signal);
    }
}

#[test]
fn running_state_snapshot_merges_pending_updates_of_other_threads_and_discards_later_ones() {
    let device = common::training_device();
    let model = Net::new(&device);
    let optim = adamw();
    // A forward on another thread leaves its update pending under that thread's id.
    let model = {
        let device = device.clone();
        std::thread::spawn(move || {
            let _ = grads(&model, &batch(1, 16, &device));
            model
        })
        .join()
        .unwrap()
    };
    let snapshot = RunningStateSnapshot::capture(&model);
    let captured = StateBytes::of(&model, &optim);
    assert_eq!(snapshot.len(), 2, "BatchNorm running mean and variance");
    assert_eq!(snapshot.bytes(), 2 * 4 * 4);

    // Two more forwards here, one left pending; the restore must drop both.
    let _ = grads(&model, &batch(2, 16, &device));
    let _ = grads(&model, &batch(3, 16, &device));
    let restored = snapshot.restore(model.clone()).unwrap();
    assert_eq!(
        StateBytes::of(&restored, &optim).running(),
        captured.running()
    );
    // Written through the shared handle: the original module sees it too.
    assert_eq!(StateBytes::of(&model, &optim).running(), captured.running());
}

#[test]
fn a_module_clone_alone_is_not_a_snapshot_of_running_statistics() {
    // The trap the stores avoid, shown directly: a clone shares BatchNorm statistics, so a
    // training forward on the live model changes the "snapshot" too.
    let device = common::training_device();
    let model = Net::new(&device);
    let clone = model.clone();
    let before = StateBytes::of(&clone, &adamw());
    let _ = grads(&model, &batch(1, 16, &device));
    let after = StateBytes::of(&clone, &adamw());
    assert_ne!(before.running(), after.running());
    assert_eq!(before.params(), after.params());
}
