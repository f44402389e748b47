//! The overlapped guard follows the sequential guard's trajectory exactly: on a run with
//! rejections (a learning-rate spike the probe catches, a gradient blow-up the gate catches),
//! every record and the final parameters, optimizer state and BatchNorm running statistics are
//! identical, for both stores and with a probe every step or every third step (on Flex, whose
//! kernels are deterministic; other backends check the overlapped run's own recoveries).

mod common;

use std::sync::Mutex;

use burn::module::Module;

use common::{
    Net, StateBytes, adamw, assert_same_state, batch, deterministic_backend, grads, probe,
};
use stab_burn::{
    Fault, FaultKind, FaultSchedule, Guard, GuardConfig, GuardError, OverlappedGuard, StoreKind,
};
use stab_core::{Action, SignalKind, StepRecord};

const STEPS: u64 = 48;
const LR: f64 = 1e-2;

fn faults() -> FaultSchedule {
    FaultSchedule::new(7)
        .with(Fault::new(
            FaultKind::LearningRateScale { factor: 300.0 },
            10,
            3,
        ))
        .with(Fault::new(
            FaultKind::GradientScale { factor: 300.0 },
            40,
            2,
        ))
}

fn config(store: StoreKind, interval: u64) -> GuardConfig {
    GuardConfig::default()
        .with_store(store)
        .with_probe_interval(interval)
        .with_verify_restores(true)
}

/// The faulted gradient of `model` on step `step`'s batch.
fn faulted_grads(
    faults: &FaultSchedule,
    step: u64,
    model: &Net,
    device: &burn::tensor::Device,
) -> burn::optim::GradientsParams {
    let (g, _) = grads(model, &batch(step, 16, device));
    faults.grads(step, g, model)
}

/// The device's random generator is global, and the tests of this file run on parallel threads:
/// every draw from it happens under this lock, so a seeded initialization is never interleaved
/// with another test's draws.
static RNG: Mutex<()> = Mutex::new(());

/// The same initial values for both runs (fresh parameter ids: states are compared by path),
/// with running statistics of their own (a clone would share them with the other run).
fn initial_model(device: &burn::tensor::Device) -> Net {
    let _draws = RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    device.seed(3);
    let drawn = Net::new(device);
    // burn initializes parameters lazily, on first use: read them all now, under the lock.
    Net::new(device).load_record(drawn.into_record())
}

fn sequential(store: StoreKind, interval: u64) -> (Vec<StepRecord>, StateBytes) {
    let device = common::training_device();
    let mut model = initial_model(&device);
    let faults = faults();
    let mut guard = Guard::builder(config(store, interval))
        .probe(probe(&device))
        .build(&model, adamw())
        .unwrap();
    let mut records = Vec::new();
    for step in 0..STEPS {
        let g = faulted_grads(&faults, step, &model, &device);
        let out = guard.step(faults.lr(step, LR), model, g).unwrap();
        model = out.model;
        records.extend(out.report.record);
    }
    (records, StateBytes::of(&model, guard.optimizer()).by_path())
}

fn overlapped(store: StoreKind, interval: u64) -> (Vec<StepRecord>, StateBytes, u32) {
    let device = common::training_device();
    let mut model = initial_model(&device);
    let faults = faults();
    let guard = Guard::builder(config(store, interval))
        .probe(probe(&device))
        .build(&model, adamw())
        .unwrap();
    let mut guard = OverlappedGuard::new(guard).unwrap();
    let mut records = Vec::new();
    let mut regrads = 0;
    for step in 0..STEPS {
        let g = faulted_grads(&faults, step, &model, &device);
        let out = guard
            .step(faults.lr(step, LR), model, g, |restored| {
                regrads += 1;
                faulted_grads(&faults, step, restored, &device)
            })
            .unwrap();
        model = out.model;
        records.extend(out.decided.into_iter().filter_map(|r| r.record));
    }
    let (model, last, guard) = guard.finish(model).unwrap();
    records.extend(last.and_then(|r| r.record));
    (
        records,
        StateBytes::of(&model, guard.optimizer()).by_path(),
        regrads,
    )
}

/// The fault's effect on a run: the lr spike rejected by the probe, the blow-up gated, and the
/// number of proposals discarded.
fn recoveries(records: &[StepRecord]) -> (usize, usize, usize) {
    let restores = records
        .iter()
        .filter(|r| r.action == Action::Restore)
        .count();
    let skips = records.iter().filter(|r| r.action == Action::Skip).count();
    let discarded = records
        .iter()
        .filter(|r| r.action.discards_proposal())
        .count();
    (restores, skips, discarded)
}

fn same_trajectory(store: StoreKind, interval: u64) {
    let (actual, actual_state, regrads) = overlapped(store, interval);
    let (restores, skips, discarded) = recoveries(&actual);
    assert!(
        restores >= 1,
        "the lr spike is rejected by the probe: {actual:#?}"
    );
    assert!(skips >= 1, "the gradient blow-up is gated: {actual:#?}");
    assert_eq!(
        regrads as usize, discarded,
        "each discarded proposal costs one speculative gradient"
    );
    if !deterministic_backend() {
        eprintln!(
            "bitwise comparison with the sequential guard skipped: it needs a deterministic backend (Flex, LibTorch CPU)"
        );
        return;
    }
    let (expected, expected_state) = sequential(store, interval);
    assert_eq!(recoveries(&expected), (restores, skips, discarded));
    assert_eq!(actual.len(), expected.len());
    for (a, e) in actual.iter().zip(&expected) {
        assert_eq!(a.step, e.step);
        assert_eq!(a.action, e.action, "step {}", e.step);
        assert_eq!(
            a.measurement.to_bits(),
            e.measurement.to_bits(),
            "step {}",
            e.step
        );
        assert_eq!(
            a.reference.to_bits(),
            e.reference.to_bits(),
            "step {}",
            e.step
        );
        assert_eq!(a.decision, e.decision, "step {}", e.step);
    }
    assert_same_state(&expected_state, &actual_state);
}

#[test]
fn overlapped_probe_follows_the_sequential_trajectory_device_store() {
    same_trajectory(StoreKind::Device, 1);
}

#[test]
fn overlapped_probe_follows_the_sequential_trajectory_host_store() {
    same_trajectory(StoreKind::Host, 1);
}

#[test]
fn overlapped_probe_follows_the_sequential_trajectory_every_third_step() {
    same_trajectory(StoreKind::Device, 3);
}

#[test]
fn only_the_probe_signal_can_be_overlapped() {
    let device = common::training_device();
    let model = initial_model(&device);
    let guard: Guard<Net> = Guard::builder(
        GuardConfig::default()
            .with_signal(SignalKind::LossSpike)
            .with_epsilon(3.0),
    )
    .build(&model, adamw())
    .unwrap();
    let err = OverlappedGuard::new(guard).unwrap_err();
    assert!(
        matches!(
            err,
            GuardError::OverlapNeedsProbe {
                signal: SignalKind::LossSpike
            }
        ),
        "{err}"
    );
}

#[test]
fn finish_hands_back_a_guard_that_probes_on_its_own_again() {
    let device = common::training_device();
    let mut model = initial_model(&device);
    let guard = Guard::builder(config(StoreKind::Device, 1))
        .probe(probe(&device))
        .build(&model, adamw())
        .unwrap();
    let mut guard = OverlappedGuard::new(guard).unwrap();
    for step in 0..3 {
        let (g, _) = grads(&model, &batch(step, 16, &device));
        model = guard
            .step(LR, model, g, |m| grads(m, &batch(step, 16, &device)).0)
            .unwrap()
            .model;
    }
    let shown = format!("{guard:?}");
    assert!(shown.starts_with("OverlappedGuard"), "{shown}");
    assert!(shown.contains("in_flight: Some(2)"), "{shown}");
    let (model, last, mut guard) = guard.finish(model).unwrap();
    assert_eq!(
        last.map(|r| r.step),
        Some(2),
        "the last proposal is decided"
    );
    // The probe is back in the guard: a sequential step measures again.
    let (g, _) = grads(&model, &batch(3, 16, &device));
    let out = guard.step(LR, model, g).unwrap();
    assert_eq!(out.report.step, 3);
    assert!(out.report.record.is_some_and(|r| r.measurement.is_finite()));
}
