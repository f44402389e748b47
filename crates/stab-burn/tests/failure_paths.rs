//! Nothing is lost on a failure path. Every error raised after the step protocol has decided a
//! step hands back, through `Guard::take_last_accepted`, the state that decision left, bit for
//! bit (parameters, BatchNorm running statistics and optimizer state), with the optimizer holding
//! the matching state: a failing observer (after a commit and after a rejection), a failed save
//! or ring copy of a commit, a failed save after an optimizer reset, a failed release after a
//! rewind. An error before the decision (a probe that fails) hands back the last accepted state
//! from the store, and the guard goes on. Where the store cannot bring the last accepted state
//! back (a failed restore) or brings back another one (an inexact restore, caught by
//! `verify_restores`), nothing is handed back as if it were. A failing observer and a failing
//! store are small implementations of the public traits. With the `train` feature, the same
//! failures through burn-train's `optimize` hook leave the model and the `Learner`'s optimizer
//! one consistent state.
//!
//! The overlapped guard's probe failures (a probe that panics or hangs) end in typed errors and
//! hand back the last accepted state; dropping the guard does not wait for a hung probe.
//!
//! Not reachable through the public API on Flex: `GuardError::Fingerprint` (a device read of a
//! state that fails), documented on `Guard::take_last_accepted`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burn::module::Module;
use burn::nn::Linear;
use burn::optim::ModuleOptimizer;
use burn::tensor::Device;

use common::{Net, StateBytes, adamw, assert_same_state, batch, grads, probe};
use stab_burn::{
    DEFAULT_PROBE_TIMEOUT, DeviceStore, Fault, FaultKind, FaultSchedule, Guard, GuardConfig,
    GuardError, GuardMode, Measure, OverlappedGuard, ProbeError, SlotExport, StateStore,
    StoreError, StoreMemory,
};
use stab_core::{
    ControllerConfig, LadderConfig, ObserverError, RingConfig, Rung, SafetyViolation, SlotId,
    StepObserver, StepRecord,
};

const LR: f64 = 1e-2;
/// The step every test makes fail.
const FAILING: u64 = 3;

/// What a [`ScriptedStore`] is told to do, and what it was given; shared with the test.
#[derive(Default)]
struct Script {
    /// Fail the next save (then clear the flag).
    fail_next_save: bool,
    /// Fail every restore and rewind.
    fail_restores: bool,
    /// Hand back a restored state with one parameter changed.
    corrupt_restores: bool,
    /// Fail a save of a state whose optimizer holds no state (after an optimizer reset; set it
    /// after the build, whose initial state has none either).
    fail_reset_saves: bool,
    /// Fail every release of a ring slot.
    fail_releases: bool,
    /// Fail every copy between ring slots.
    fail_copies: bool,
    /// Every state handed to `save`, in order (the first is the initial state).
    saved: Vec<StateBytes>,
}

/// A device store that records every saved state and fails on request.
struct ScriptedStore {
    inner: DeviceStore<Net>,
    script: Arc<Mutex<Script>>,
}

impl ScriptedStore {
    fn new() -> (Self, Arc<Mutex<Script>>) {
        let script = Arc::new(Mutex::new(Script::default()));
        let store = Self {
            inner: DeviceStore::new(),
            script: Arc::clone(&script),
        };
        (store, script)
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap()
    }

    fn restored(
        &self,
        restored: Result<(Net, ModuleOptimizer), StoreError>,
    ) -> Result<(Net, ModuleOptimizer), StoreError> {
        let (model, optim) = restored?;
        if self.script().corrupt_restores {
            return Ok((corrupt(model), optim));
        }
        Ok((model, optim))
    }

    fn refuse(&self) -> Result<(), StoreError> {
        if self.script().fail_restores {
            return Err(StoreError::OptimizerRecord {
                store: "scripted",
                operation: "deserialize",
                message: "the host copy is unreadable (test)".into(),
            });
        }
        Ok(())
    }
}

/// `model` with its classifier's weights moved by 1: a state that is not the one saved.
fn corrupt(model: Net) -> Net {
    let Net { conv, bn, fc } = model;
    let Linear { weight, bias } = fc;
    Net {
        conv,
        bn,
        fc: Linear {
            weight: weight.map(|w| w.add_scalar(1.0)),
            bias,
        },
    }
}

impl StateStore<Net> for ScriptedStore {
    fn name(&self) -> &'static str {
        "scripted"
    }

    fn save(&mut self, model: &Net, optim: &ModuleOptimizer) -> Result<(), StoreError> {
        let mut script = self.script();
        let state = StateBytes::of(model, optim);
        let reset = state.optim_tensors.is_empty();
        script.saved.push(state);
        if std::mem::take(&mut script.fail_next_save) || (script.fail_reset_saves && reset) {
            return Err(StoreError::WorkerUnavailable {
                message: "no space left on device (test)".into(),
            });
        }
        drop(script);
        self.inner.save(model, optim)
    }

    fn restore(
        &mut self,
        rejected_model: Net,
        rejected_optim: ModuleOptimizer,
    ) -> Result<(Net, ModuleOptimizer), StoreError> {
        self.refuse()?;
        let restored = self.inner.restore(rejected_model, rejected_optim);
        self.restored(restored)
    }

    fn copy(&mut self, from: SlotId, to: SlotId) -> Result<(), StoreError> {
        if self.script().fail_copies {
            return Err(StoreError::WorkerUnavailable {
                message: "cannot copy the slot (test)".into(),
            });
        }
        self.inner.copy(from, to)
    }

    fn rewind(
        &mut self,
        slot: SlotId,
        rejected_model: Net,
        rejected_optim: ModuleOptimizer,
    ) -> Result<(Net, ModuleOptimizer), StoreError> {
        self.refuse()?;
        let restored = self.inner.rewind(slot, rejected_model, rejected_optim);
        self.restored(restored)
    }

    fn release(&mut self, slot: SlotId) -> Result<(), StoreError> {
        if self.script().fail_releases {
            return Err(StoreError::WorkerUnavailable {
                message: "cannot free the slot (test)".into(),
            });
        }
        self.inner.release(slot)
    }

    fn memory(&self) -> StoreMemory {
        self.inner.memory()
    }

    fn export(&self, slot: SlotId) -> Result<SlotExport, StoreError> {
        self.inner.export(slot)
    }
}

/// A JSON-lines sink on a full disk, at step `fail_at`.
struct FailingObserver {
    fail_at: u64,
}

impl StepObserver for FailingObserver {
    fn on_step(&mut self, record: &StepRecord) -> Result<(), ObserverError> {
        if record.step == self.fail_at {
            return Err(ObserverError {
                step: record.step,
                source: Box::new(std::io::Error::other("no space left on device (test)")),
            });
        }
        Ok(())
    }
}

/// The device's random generator is global and the tests run on parallel threads: every seeded
/// initialization happens under this lock.
static RNG: Mutex<()> = Mutex::new(());

fn initial_model(device: &Device) -> Net {
    let _draws = RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    device.seed(5);
    let drawn = Net::new(device);
    // burn initializes parameters lazily: read them all now, under the lock.
    Net::new(device).load_record(drawn.into_record())
}

fn config() -> GuardConfig {
    GuardConfig::default().with_verify_restores(true)
}

/// A learning-rate spike at step [`FAILING`] only: the probe rejects that proposal.
fn spike() -> FaultSchedule {
    FaultSchedule::new(1).with(Fault::new(
        FaultKind::LearningRateScale { factor: 300.0 },
        FAILING,
        1,
    ))
}

/// A guard on the scripted store (and the observer, if given), stepped to just before
/// [`FAILING`]; every step so far committed.
fn guard_before_failing_step(
    observer: Option<FailingObserver>,
) -> (Guard<Net>, Net, Arc<Mutex<Script>>, Device) {
    let device = common::training_device();
    let model = initial_model(&device);
    let (store, script) = ScriptedStore::new();
    let mut builder = Guard::builder(config()).probe(probe(&device)).store(store);
    if let Some(observer) = observer {
        builder = builder.observer(observer);
    }
    let mut guard = builder.build(&model, adamw()).unwrap();
    let mut model = model;
    for t in 0..FAILING {
        let (g, _) = grads(&model, &batch(t, 16, &device));
        model = guard.step(spike().lr(t, LR), model, g).unwrap().model;
    }
    assert_eq!(
        script.lock().unwrap().saved.len() as u64,
        FAILING + 1,
        "the initial state and one commit per step"
    );
    (guard, model, script, device)
}

/// The failing step: its error.
fn failing_step(guard: &mut Guard<Net>, model: Net, device: &Device) -> GuardError {
    let (g, _) = grads(&model, &batch(FAILING, 16, device));
    match guard.step(spike().lr(FAILING, LR), model, g) {
        Ok(step) => panic!("step {FAILING} succeeded: {:?}", step.report),
        Err(error) => error,
    }
}

fn last_saved(script: &Arc<Mutex<Script>>) -> StateBytes {
    script.lock().unwrap().saved.last().unwrap().clone()
}

#[test]
fn a_failing_observer_after_a_commit_hands_back_the_committed_state() {
    let (mut guard, model, script, device) =
        guard_before_failing_step(Some(FailingObserver { fail_at: FAILING }));
    // The plain learning rate: this step commits.
    let (g, _) = grads(&model, &batch(FAILING, 16, &device));
    let error = guard.step(LR, model, g).unwrap_err();
    assert!(
        matches!(&error, GuardError::Observer(e) if e.step == FAILING),
        "{error}"
    );
    assert_eq!(
        script.lock().unwrap().saved.len() as u64,
        FAILING + 2,
        "the step committed"
    );
    let handed = guard
        .take_last_accepted()
        .expect("the committed state is handed back");
    assert!(guard.take_last_accepted().is_none(), "taken once");
    // Bit for bit the state the store saved for the commit, optimizer included.
    assert_same_state(
        &last_saved(&script),
        &StateBytes::of(&handed, guard.optimizer()),
    );
    // The step was complete: the run goes on from the state handed back.
    let (g, _) = grads(&handed, &batch(FAILING + 1, 16, &device));
    let next = guard.step(LR, handed, g).unwrap();
    assert_eq!(next.report.step, FAILING + 1);
    assert_eq!(
        script.lock().unwrap().saved.len() as u64,
        FAILING + 3,
        "the next step committed"
    );
}

#[test]
fn a_failing_observer_after_a_rejection_hands_back_the_restored_state() {
    let (mut guard, model, script, device) =
        guard_before_failing_step(Some(FailingObserver { fail_at: FAILING }));
    let last_accepted = last_saved(&script);
    let error = failing_step(&mut guard, model, &device);
    assert!(
        matches!(&error, GuardError::Observer(e) if e.step == FAILING),
        "{error}"
    );
    assert_eq!(guard.counters().rejected, 1, "the spike was rejected");
    assert_eq!(
        script.lock().unwrap().saved.len() as u64,
        FAILING + 1,
        "nothing committed"
    );
    let handed = guard.take_last_accepted().expect("a state is handed back");
    assert_same_state(&last_accepted, &StateBytes::of(&handed, guard.optimizer()));
}

#[test]
fn a_failed_save_of_a_commit_hands_back_the_accepted_proposal() {
    let (mut guard, model, script, device) = guard_before_failing_step(None);
    let previous = last_saved(&script);
    script.lock().unwrap().fail_next_save = true;
    // No spike at this step: use the plain learning rate.
    let (g, _) = grads(&model, &batch(FAILING, 16, &device));
    let error = guard.step(LR, model, g).unwrap_err();
    assert!(
        matches!(
            &error,
            GuardError::Store {
                operation: "save",
                step: FAILING,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(
        guard.counters().accepted,
        FAILING + 1,
        "the step was accepted"
    );
    let handed = guard
        .take_last_accepted()
        .expect("the accepted proposal is handed back");
    let proposal = last_saved(&script);
    assert_same_state(&proposal, &StateBytes::of(&handed, guard.optimizer()));
    assert_ne!(
        proposal, previous,
        "the state handed back is the new one, not the store's previous snapshot"
    );
}

#[test]
fn a_failed_restore_hands_back_nothing() {
    let (mut guard, model, script, device) = guard_before_failing_step(None);
    script.lock().unwrap().fail_restores = true;
    let error = failing_step(&mut guard, model, &device);
    assert!(
        matches!(
            &error,
            GuardError::Store {
                operation: "restore",
                step: FAILING,
                source: StoreError::OptimizerRecord { .. },
            }
        ),
        "{error}"
    );
    assert_eq!(guard.counters().rejected, 1, "the spike was rejected");
    assert!(
        guard.take_last_accepted().is_none(),
        "the rejected proposal is not handed back as if accepted"
    );
}

#[test]
fn an_inexact_restore_is_a_safety_violation_and_hands_back_nothing() {
    let (mut guard, model, script, device) = guard_before_failing_step(None);
    script.lock().unwrap().corrupt_restores = true;
    let error = failing_step(&mut guard, model, &device);
    assert!(
        matches!(
            &error,
            GuardError::Safety(SafetyViolation::InexactRestore { step: FAILING, .. })
        ),
        "{error}"
    );
    assert!(
        guard.take_last_accepted().is_none(),
        "a state that fails its fingerprint check is not handed back"
    );
}

/// Runs `FAILING + 1` steps of an observe-mode guard with `probe`; returns the last step's
/// outcome: its model, or its error and the model handed back, with the guard's optimizer.
fn observed_run(probe: impl Measure<Net> + 'static) -> (Result<Net, GuardError>, StateBytes) {
    let device = common::training_device();
    let mut model = initial_model(&device);
    let mut guard = Guard::builder(config().with_mode(GuardMode::Observe))
        .probe(probe)
        .build(&model, adamw())
        .unwrap();
    for t in 0..=FAILING {
        let (g, _) = grads(&model, &batch(t, 16, &device));
        match guard.step(LR, model, g) {
            Ok(step) => model = step.model,
            Err(error) => {
                let handed = guard
                    .take_last_accepted()
                    .expect("observe mode hands the proposal back");
                let state = StateBytes::of(&handed, guard.optimizer()).by_path();
                assert_eq!(guard.next_step(), t + 1, "the step is given up");
                return (Err(error), state);
            }
        }
    }
    let state = StateBytes::of(&model, guard.optimizer()).by_path();
    (Ok(model), state)
}

#[test]
fn a_failed_probe_in_observe_mode_hands_back_the_proposal() {
    let device = common::training_device();
    let failing = Misbehaving {
        probe: probe(&device),
        calls: AtomicUsize::new(0),
        at: FAILING as usize,
        kind: Misbehaviour::Fail,
    };
    let (outcome, handed) = observed_run(failing);
    let error = outcome.expect_err("the probe failed");
    assert!(
        matches!(error, GuardError::Probe { step: FAILING, .. }),
        "{error}"
    );
    // Observe mode keeps every proposal: the state handed back is the one an observed run whose
    // probe works continues from (not the initial state, the only one such a guard saves).
    let (outcome, expected) = observed_run(probe(&device));
    assert!(outcome.is_ok());
    if common::deterministic_backend() {
        assert_same_state(&expected, &handed);
    }
}

/// A configuration whose ladder rewinds and resets the optimizer: a snapshot ring of ages 2 and
/// 4, two rejections per rung, rungs rewind then optimizer reset (as `tests/checkpoint.rs`).
fn ladder_config() -> GuardConfig {
    config().with_controller(
        ControllerConfig::default()
            .with_ring(RingConfig { ages: vec![2, 4] })
            .with_ladder(LadderConfig {
                enabled: true,
                rejections_per_rung: 2,
                rejection_window: 3,
                rungs: vec![Rung::Rewind, Rung::ResetOptimizer, Rung::Rewind],
                cooldown: 4,
            })
            .with_gradient_gate(false),
    )
}

/// Runs [`ladder_config`] on the scripted store with NaN gradients from step 14 on, `script`
/// set after the build, until a step fails; returns its error.
fn ladder_run_until_failure(
    script: impl FnOnce(&mut Script),
) -> (GuardError, Guard<Net>, Arc<Mutex<Script>>) {
    let device = common::training_device();
    let mut model = initial_model(&device);
    let (store, shared) = ScriptedStore::new();
    let mut guard = Guard::builder(ladder_config())
        .probe(probe(&device))
        .store(store)
        .build(&model, adamw())
        .unwrap();
    script(&mut shared.lock().unwrap());
    let faults = FaultSchedule::new(0).with(Fault::new(FaultKind::GradientNan, 14, 10));
    for t in 0..30 {
        let (g, _) = grads(&model, &batch(t, 16, &device));
        let g = faults.grads(t, g, &model);
        match guard.step(LR, model, g) {
            Ok(step) => model = step.model,
            Err(error) => return (error, guard, shared),
        }
    }
    panic!("no step failed: the ladder never reached the failing operation");
}

#[test]
fn a_failed_save_after_an_optimizer_reset_hands_back_the_reset_state() {
    let (error, mut guard, script) = ladder_run_until_failure(|s| s.fail_reset_saves = true);
    assert!(
        matches!(
            &error,
            GuardError::Store {
                operation: "save",
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(guard.counters().optimizer_resets, 1);
    let handed = guard
        .take_last_accepted()
        .expect("the reset state is handed back");
    let reset = last_saved(&script);
    assert!(
        reset.optim_tensors.is_empty(),
        "the optimizer state was cleared"
    );
    // The restored parameters and statistics with the cleared optimizer: the state the reset
    // left, as handed to the store.
    assert_same_state(&reset, &StateBytes::of(&handed, guard.optimizer()));
}

#[test]
fn a_failed_ring_copy_after_a_commit_hands_back_the_committed_state() {
    let (error, mut guard, script) = ladder_run_until_failure(|s| s.fail_copies = true);
    assert!(
        matches!(
            &error,
            GuardError::Store {
                operation: "copy",
                ..
            }
        ),
        "{error}"
    );
    let handed = guard
        .take_last_accepted()
        .expect("the committed state is handed back");
    // The commit's save went through; the ring's copy of it did not.
    assert_same_state(
        &last_saved(&script),
        &StateBytes::of(&handed, guard.optimizer()),
    );
}

#[test]
fn a_failed_release_after_a_rewind_hands_back_the_rewound_state() {
    let (error, mut guard, script) = ladder_run_until_failure(|s| s.fail_releases = true);
    assert!(
        matches!(
            &error,
            GuardError::Store {
                operation: "release",
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(guard.counters().rewinds, 1);
    let handed = guard
        .take_last_accepted()
        .expect("the rewound state is handed back");
    let handed = StateBytes::of(&handed, guard.optimizer());
    // An older accepted state, as it was saved: not the last one.
    let script = script.lock().unwrap();
    let position = script.saved.iter().position(|saved| *saved == handed);
    assert!(
        position.is_some_and(|p| p + 1 < script.saved.len()),
        "the rewound state is an older saved state (found at {position:?} of {})",
        script.saved.len()
    );
}

/// The probe of the overlapped tests: the real one, except the `at`-th measurement on the probe
/// thread (0-based, the build's own measurement not counted), which panics or blocks.
struct Misbehaving {
    probe: stab_burn::Probe<Net, common::Batch>,
    calls: AtomicUsize,
    at: usize,
    kind: Misbehaviour,
}

enum Misbehaviour {
    /// Returns a [`ProbeError`].
    Fail,
    Panic,
    /// Blocks until released (or an hour), then records that it finished.
    Hang {
        release: Mutex<Receiver<()>>,
        finished: Arc<AtomicBool>,
    },
}

impl Measure<Net> for Misbehaving {
    fn measure(&self, model: &Net) -> Result<f64, ProbeError> {
        // Call 0 is the build's measurement of the initial model.
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if call == self.at + 1 {
            match &self.kind {
                Misbehaviour::Fail => {
                    return Err(ProbeError::TensorRead {
                        message: "device lost (test)".into(),
                    });
                }
                Misbehaviour::Panic => panic!("test probe panic"),
                Misbehaviour::Hang { release, finished } => {
                    let _ = release
                        .lock()
                        .unwrap()
                        .recv_timeout(Duration::from_secs(3600));
                    finished.store(true, Ordering::SeqCst);
                }
            }
        }
        self.probe.measure(model)
    }
}

/// An overlapped guard (on the scripted store) whose probe misbehaves on step 1's proposal;
/// runs steps 0 and 1 and returns the error of step 2 (which waits for step 1's probe).
fn overlapped_until_the_probe_fails(
    kind: Misbehaviour,
    timeout: Option<Duration>,
) -> (OverlappedGuard<Net>, GuardError, Arc<Mutex<Script>>) {
    let device = common::training_device();
    let mut model = initial_model(&device);
    let probe = Misbehaving {
        probe: probe(&device),
        calls: AtomicUsize::new(0),
        at: 1,
        kind,
    };
    let (store, script) = ScriptedStore::new();
    let guard = Guard::builder(config())
        .probe(probe)
        .store(store)
        .build(&model, adamw())
        .unwrap();
    let guard = OverlappedGuard::new(guard).unwrap();
    assert_eq!(guard.probe_timeout(), Some(DEFAULT_PROBE_TIMEOUT));
    // No bound for the steps that must succeed, however slow the machine running the tests.
    let mut guard = guard.with_probe_timeout(None);
    assert_eq!(guard.probe_timeout(), None);
    for step in 0..2 {
        let (g, _) = grads(&model, &batch(step, 16, &device));
        model = guard
            .step(LR, model, g, |m| grads(m, &batch(step, 16, &device)).0)
            .unwrap()
            .model;
    }
    assert_eq!(
        script.lock().unwrap().saved.len(),
        2,
        "the initial state and step 0's commit"
    );
    // The bound applies to step 1's proposal, in flight.
    guard.set_probe_timeout(timeout);
    assert_eq!(guard.probe_timeout(), timeout);
    let (g, _) = grads(&model, &batch(2, 16, &device));
    let error = guard
        .step(LR, model, g, |m| grads(m, &batch(2, 16, &device)).0)
        .unwrap_err();
    (guard, error, script)
}

/// After a probe that panicked or hung: the last accepted state (step 0's commit) is handed
/// back, bit for bit; the guard refuses further steps and cannot be finished, with typed errors
/// (no hang, no panic).
fn hands_back_and_refuses_to_go_on(mut guard: OverlappedGuard<Net>, script: &Arc<Mutex<Script>>) {
    let handed = guard
        .take_last_accepted()
        .expect("the last accepted state is handed back");
    assert_same_state(
        &last_saved(script),
        &StateBytes::of(&handed, guard.guard().optimizer()),
    );
    let device = common::training_device();
    let (g, _) = grads(&handed, &batch(3, 16, &device));
    let again = guard
        .step(LR, handed.clone(), g, |m| {
            grads(m, &batch(3, 16, &device)).0
        })
        .unwrap_err();
    assert!(matches!(again, GuardError::ProbeThread { .. }), "{again}");
    let finished = guard.finish(handed).unwrap_err();
    assert!(
        matches!(finished, GuardError::ProbeThread { .. }),
        "{finished}"
    );
}

#[test]
fn a_failed_probe_hands_back_the_last_accepted_state_and_the_guard_goes_on() {
    let device = common::training_device();
    let mut model = initial_model(&device);
    let probe = Misbehaving {
        probe: probe(&device),
        calls: AtomicUsize::new(0),
        at: FAILING as usize,
        kind: Misbehaviour::Fail,
    };
    let (store, script) = ScriptedStore::new();
    let mut guard = Guard::builder(config())
        .probe(probe)
        .store(store)
        .build(&model, adamw())
        .unwrap();
    for t in 0..FAILING {
        let (g, _) = grads(&model, &batch(t, 16, &device));
        model = guard.step(LR, model, g).unwrap().model;
    }
    let last_accepted = last_saved(&script);
    let (g, _) = grads(&model, &batch(FAILING, 16, &device));
    let error = guard.step(LR, model, g).unwrap_err();
    assert!(
        matches!(
            &error,
            GuardError::Probe {
                step: FAILING,
                source: ProbeError::TensorRead { .. }
            }
        ),
        "{error}"
    );
    // The proposal was never decided: the last accepted state comes back from the store (the
    // batch's forward had moved the running statistics), with its optimizer state.
    let handed = guard
        .take_last_accepted()
        .expect("the last accepted state is handed back");
    assert_same_state(&last_accepted, &StateBytes::of(&handed, guard.optimizer()));
    assert_eq!(guard.next_step(), FAILING + 1, "the step is given up");
    let (g, _) = grads(&handed, &batch(FAILING + 1, 16, &device));
    let next = guard.step(LR, handed, g).unwrap();
    assert_eq!(next.report.step, FAILING + 1);
    assert_eq!(
        script.lock().unwrap().saved.len() as u64,
        FAILING + 2,
        "the guard goes on and commits"
    );
}

#[test]
fn an_overlapped_probe_that_panics_is_a_typed_error() {
    let (guard, error, script) = overlapped_until_the_probe_fails(Misbehaviour::Panic, None);
    match &error {
        GuardError::ProbePanicked { step, message, .. } => {
            assert_eq!(*step, 1);
            assert_eq!(message, "test probe panic");
        }
        other => panic!("expected ProbePanicked, got {other}"),
    }
    hands_back_and_refuses_to_go_on(guard, &script);
}

#[test]
fn an_overlapped_probe_that_hangs_times_out_and_the_drop_does_not_wait_for_it() {
    let (release, hold): (Sender<()>, Receiver<()>) = channel();
    let finished = Arc::new(AtomicBool::new(false));
    let timeout = Duration::from_millis(200);
    let (guard, error, script) = overlapped_until_the_probe_fails(
        Misbehaviour::Hang {
            release: Mutex::new(hold),
            finished: Arc::clone(&finished),
        },
        Some(timeout),
    );
    match &error {
        GuardError::ProbeTimeout {
            step,
            timeout: bound,
            waited,
        } => {
            assert_eq!(*step, 1);
            assert_eq!(*bound, timeout);
            assert!(*waited >= timeout, "gave up after {waited:?}");
        }
        other => panic!("expected ProbeTimeout, got {other}"),
    }
    // `finish` (inside) and the drop return while the probe is still blocked.
    hands_back_and_refuses_to_go_on(guard, &script);
    assert!(
        !finished.load(Ordering::SeqCst),
        "the guard was dropped without waiting for the hung probe"
    );
    // Never released: the detached probe thread stays blocked until the process exits. Woken,
    // it would run the probe while the other tests, or the process's exit, tear the backend
    // down (LibTorch then crashed the test binary at exit, once in three runs).
    std::mem::forget(release);
}

/// The same failures inside burn-train's `TrainStep::optimize` hook: the model `optimize` returns
/// and the `Learner`'s optimizer are always one consistent state.
#[cfg(feature = "train")]
mod learner {
    use super::*;
    use burn_train::Interrupter;
    use stab_burn::learner::LearnerGuard;

    /// A handle on the scripted store (and the observer, if given), driven through `optimize`
    /// to just before [`FAILING`] as a `Learner` would: its model, its optimizer.
    fn handle_before_failing_step(
        observer: Option<FailingObserver>,
    ) -> (
        LearnerGuard<Net>,
        Interrupter,
        Net,
        ModuleOptimizer,
        Arc<Mutex<Script>>,
        Device,
    ) {
        let device = common::training_device();
        let mut model = initial_model(&device);
        let (store, script) = ScriptedStore::new();
        let mut builder = Guard::builder(config()).probe(probe(&device)).store(store);
        if let Some(observer) = observer {
            builder = builder.observer(observer);
        }
        let handle = LearnerGuard::new();
        let interrupter = Interrupter::new();
        handle.stop_on_failure(interrupter.clone());
        handle.install(builder);
        let mut optim = adamw();
        for t in 0..FAILING {
            let (g, _) = grads(&model, &batch(t, 16, &device));
            model = handle.optimize(model, &mut optim, spike().lr(t, LR).into(), g);
        }
        assert!(handle.take_error().is_none());
        assert!(!interrupter.should_stop());
        (handle, interrupter, model, optim, script, device)
    }

    #[test]
    fn a_failing_observer_leaves_the_learner_the_committed_model_and_optimizer() {
        let (handle, interrupter, model, mut optim, script, device) =
            handle_before_failing_step(Some(FailingObserver { fail_at: FAILING }));
        let (g, _) = grads(&model, &batch(FAILING, 16, &device));
        let model = handle.optimize(model, &mut optim, LR.into(), g);
        let error = handle.take_error().expect("the observer's error is kept");
        assert!(matches!(error, GuardError::Observer(_)), "{error}");
        assert!(interrupter.should_stop(), "the Learner is stopped");
        assert_eq!(
            script.lock().unwrap().saved.len() as u64,
            FAILING + 2,
            "the step committed"
        );
        // Before: the pre-step model with the committed optimizer. Now: the committed state.
        assert_same_state(&last_saved(&script), &StateBytes::of(&model, &optim));
    }

    #[test]
    fn a_failed_restore_leaves_the_learner_the_state_before_the_step() {
        let (handle, interrupter, model, mut optim, script, device) =
            handle_before_failing_step(None);
        script.lock().unwrap().fail_restores = true;
        let (g, _) = grads(&model, &batch(FAILING, 16, &device));
        // The state as the Learner lends it: the batch's forward has run.
        let before = StateBytes::of(&model, &optim);
        let model = handle.optimize(model, &mut optim, spike().lr(FAILING, LR).into(), g);
        let error = handle.take_error().expect("the store's error is kept");
        assert!(
            matches!(
                error,
                GuardError::Store {
                    operation: "restore",
                    ..
                }
            ),
            "{error}"
        );
        assert!(interrupter.should_stop(), "the Learner is stopped");
        // Not the rejected proposal's optimizer state beside the pre-step model: both as before.
        assert_same_state(&before, &StateBytes::of(&model, &optim));
    }
}
