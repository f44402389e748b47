//! A burn-train `Learner` run guarded through `TrainStep::optimize` (feature `train`): an
//! injected learning-rate spike is rolled back, after each rollback the `Learner`'s model and
//! optimizer are byte for byte the last accepted state, the guard's numbers reach the metric
//! logger item by item, and the `Learner`'s own bookkeeping (scheduler, iteration count, data,
//! gradient accumulation, final model) behaves as `stab_burn::learner` documents.
//!
//! Data: the seeded synthetic blobs of `tests/common` (a unit test, not a result).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::lr_scheduler::{LrScheduler, LrSchedulerRecord};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Device;
use burn::tensor::activation::log_softmax;
use burn_train::{
    ClassificationOutput, InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep,
};
use common::{Batch, Net, StateBytes, adamw, assert_same_state, batch, checkpointing};
use stab_burn::checkpoint;
use stab_burn::learner::{GuardMetricKind, LearnerGuard};
use stab_burn::{
    CheckpointPolicy, Checkpointer, Fault, FaultKind, FaultSchedule, Guard, GuardConfig, Probe,
    StepAction, StepReport, StoreKind,
};

const LR: f64 = 0.01;
const BATCH: usize = 8;

/// What the test's `optimize` override saw at each step.
#[derive(Debug)]
struct Entry {
    /// Step index (every `optimize` call).
    step: u64,
    report: StepReport,
    /// The `Learner`'s model and optimizer as `optimize` hands them back.
    after: StateBytes,
}

#[derive(Debug, Default)]
struct Log {
    faults: FaultSchedule,
    /// The state the guard starts from (its first snapshot), taken before the first step.
    initial: Option<StateBytes>,
    entries: Vec<Entry>,
    calls: u64,
}

/// The model: the common Conv2d + BatchNorm + Linear net, the guard handle, and the test's log.
#[derive(Module, Debug)]
struct Guarded {
    net: Net,
    #[module(skip)]
    stab: LearnerGuard<Guarded>,
    #[module(skip)]
    log: Arc<Mutex<Log>>,
}

fn forward(net: &Net, batch: &Batch) -> ClassificationOutput {
    let output = net.forward(batch.x.clone());
    let logp = log_softmax(output.clone(), 1);
    let loss = (logp * batch.targets.clone()).sum_dim(1).mean().neg();
    ClassificationOutput::new(loss, output, batch.labels.clone())
}

impl TrainStep for Guarded {
    type Input = Batch;
    type Output = ClassificationOutput;

    fn step(&self, batch: Batch) -> TrainOutput<ClassificationOutput> {
        let item = forward(&self.net, &batch);
        TrainOutput::new(self, item.loss.backward(), item)
    }

    fn optimize(
        self,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        grads: GradientsParams,
    ) -> Self {
        let log = Arc::clone(&self.log);
        let (step, lr) = {
            let mut log = log.lock().unwrap();
            if log.initial.is_none() {
                log.initial = Some(StateBytes::of(&self.net, optim));
            }
            let step = log.calls;
            log.calls += 1;
            (step, log.faults.lr(step, lr.base()))
        };
        // The two lines a user adds (here the learning rate goes through the fault injector).
        let stab = self.stab.clone();
        let model = stab.optimize(self, optim, lr.into(), grads);

        let report = stab.last_report().expect("a guarded step reports");
        let after = StateBytes::of(&model.net, optim);
        log.lock().unwrap().entries.push(Entry {
            step,
            report,
            after,
        });
        model
    }
}

impl InferenceStep for Guarded {
    type Input = Batch;
    type Output = ClassificationOutput;

    fn step(&self, batch: Batch) -> ClassificationOutput {
        forward(&self.net, &batch)
    }
}

/// Batches of the common synthetic data, one seed per item.
#[derive(Clone)]
struct Seeds;

impl Batcher<u64, Batch> for Seeds {
    fn batch(&self, items: Vec<u64>, device: &Device) -> Batch {
        batch(items[0], items.len(), device)
    }
}

/// A constant learning rate that counts how often the `Learner` steps it.
#[derive(Clone)]
struct CountingLr(Arc<AtomicUsize>);

impl LrScheduler for CountingLr {
    fn step(&mut self) -> f64 {
        self.0.fetch_add(1, Ordering::SeqCst);
        LR
    }
    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new()
    }
    fn load_record(&mut self, _record: LrSchedulerRecord) {}
}

struct Run {
    model: Guarded,
    log: Arc<Mutex<Log>>,
    scheduler_steps: usize,
    stab: LearnerGuard<Guarded>,
}

/// Trains `items` training items (batches of 8, two epochs' worth in `epochs`) under the guard,
/// an ×1000 learning-rate spike on `spike`, metrics written under `dir`.
fn run(dir: &Path, items: u64, epochs: usize, accumulation: usize, spike: (u64, u64)) -> Run {
    let config = GuardConfig::default()
        .with_gradient_gate(false)
        .with_drift_detection(false)
        .with_epsilon(0.5)
        .with_verify_restores(true);
    let fault = Fault::new(
        FaultKind::LearningRateScale { factor: 1000.0 },
        spike.0,
        spike.1,
    );
    let device = common::training_device();
    run_with(
        dir,
        (items, epochs, accumulation),
        config,
        fault,
        Net::new(&device),
        None,
    )
}

/// [`run`] with a guard configuration, a fault and an initial network of the caller's, and,
/// with `resumable = Some((steps_per_epoch, resume_from))`, checkpoints: the `Learner`'s own at
/// every epoch's end, the guard's (`LearnerGuard::checkpoint_epochs`) under `dir/stab`, and a
/// resume of both from epoch `resume_from` when it is given.
fn run_with(
    dir: &Path,
    (items, epochs, accumulation): (u64, usize, usize),
    config: GuardConfig,
    fault: Fault,
    net: Net,
    resumable: Option<(u64, Option<usize>)>,
) -> Run {
    let device = common::training_device();
    let plain = device.clone().inner();
    let log = Arc::new(Mutex::new(Log {
        faults: FaultSchedule::new(0).with(fault),
        ..Log::default()
    }));
    let stab = LearnerGuard::new();
    let model = Guarded {
        net,
        stab: stab.clone(),
        log: Arc::clone(&log),
    };
    let probe_batches = common::probe(&plain).batches().to_vec();
    let probe = Probe::new(probe_batches, |m: &Guarded, b: &Batch| {
        common::loss(&m.net, b)
    })
    .unwrap();
    let builder = Guard::builder(config).probe(probe);
    let policy = CheckpointPolicy {
        every_accepted: 1,
        keep: 2,
        on_recovery: false,
    };
    let stab_dir = dir.join("stab");
    match resumable {
        None => stab.install(builder),
        Some((steps_per_epoch, None)) => {
            stab.install(builder);
            let checkpointer = Checkpointer::new(&stab_dir, policy).unwrap();
            stab.checkpoint_epochs(checkpointer, steps_per_epoch);
        }
        Some((steps_per_epoch, Some(epoch))) => {
            let found = checkpoint::latest(&stab_dir)
                .unwrap()
                .expect("a guard checkpoint");
            assert_eq!(found.extra::<u64>().unwrap(), epoch as u64);
            let checkpointer = Checkpointer::resuming(&stab_dir, policy, &found).unwrap();
            stab.install_resumed(builder, found);
            stab.checkpoint_epochs(checkpointer, steps_per_epoch);
            // The fault schedule counts optimizer steps from the start of the run.
            log.lock().unwrap().calls = epoch as u64 * steps_per_epoch;
        }
    }

    let seeds: Vec<u64> = (0..items * BATCH as u64).collect();
    let train = DataLoaderBuilder::new(Seeds)
        .batch_size(BATCH)
        .set_device(plain.clone())
        .build(InMemDataset::new(seeds));
    let valid = DataLoaderBuilder::new(Seeds)
        .batch_size(BATCH)
        .set_device(plain)
        .build(InMemDataset::new((50_000..50_016).collect::<Vec<u64>>()));
    let calls = Arc::new(AtomicUsize::new(0));
    let learner = Learner::new(model, adamw(), CountingLr(Arc::clone(&calls)));
    let mut training = SupervisedTraining::new(dir, train, valid)
        .num_epochs(epochs)
        .with_application_logger(None);
    if accumulation > 1 {
        training = training.grads_accumulation(accumulation);
    }
    if let Some((_, resume_from)) = resumable {
        training = training.with_default_checkpointers();
        if let Some(epoch) = resume_from {
            training = training.checkpoint(epoch);
        }
    }
    let training = stab.register_accumulated(training, accumulation);
    let result = training.launch(learner);
    assert!(result.error.is_none(), "{:?}", result.error);
    let error = stab.take_error();
    assert!(error.is_none(), "{error:?}");
    Run {
        model: result.model,
        log,
        scheduler_steps: calls.load(Ordering::SeqCst),
        stab,
    }
}

/// What a metric logger wrote for `name` in epoch `epoch`: the value of each item, and the
/// epoch's final value (the last line, marked `,final`).
fn logged(dir: &Path, epoch: usize, name: &str) -> (Vec<String>, String) {
    let path = dir
        .join("train")
        .join(format!("epoch-{epoch}"))
        .join(format!("{}.log", name.replace(' ', "_")));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let last = lines.pop().expect("an epoch's final value");
    let last = last
        .strip_suffix(",final")
        .unwrap_or_else(|| panic!("{}: no final value: {last}", path.display()))
        .to_string();
    (lines, last)
}

#[test]
fn learner_rollbacks_restore_the_last_accepted_state_and_reach_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let items = 36;
    let spike = (20, 3);
    let run = run(dir.path(), items, 1, 1, spike);
    let log = run.log.lock().unwrap();

    // One optimizer step per item, every one guarded; the scheduler advanced for each, the
    // rejected ones included; no batch was retried (36 items, 36 steps).
    assert_eq!(log.entries.len() as u64, items);
    assert_eq!(run.scheduler_steps as u64, items);
    assert_eq!(run.stab.with_guard(|g| g.counters().steps), Some(items));

    // The spike was caught, and only the spike.
    let rolled: Vec<u64> = log
        .entries
        .iter()
        .filter(|e| e.report.rolled_back())
        .map(|e| e.step)
        .collect();
    assert_eq!(rolled, (spike.0..spike.0 + spike.1).collect::<Vec<_>>());

    // After each rollback the Learner's model (parameters and running statistics) and its
    // optimizer are byte for byte the last accepted state.
    let mut accepted = log.initial.clone().expect("initial state");
    for entry in &log.entries {
        match entry.report.action {
            StepAction::Commit => accepted = entry.after.clone(),
            StepAction::Restore => assert_same_state(&accepted, &entry.after),
            other => panic!("step {}: unexpected action {other:?}", entry.step),
        }
    }

    // The metrics, item by item, are the guard's numbers of that item's step.
    let (rollbacks, rollbacks_final) = logged(dir.path(), 1, GuardMetricKind::Rollbacks.name());
    let (innovation, _) = logged(dir.path(), 1, GuardMetricKind::Innovation.name());
    let (reference, _) = logged(dir.path(), 1, GuardMetricKind::Reference.name());
    let (threshold, threshold_final) = logged(dir.path(), 1, GuardMetricKind::Threshold.name());
    let (recoveries, _) = logged(dir.path(), 1, GuardMetricKind::Recoveries.name());
    assert_eq!(innovation.len() as u64, items);
    let mut so_far = 0u64;
    for (i, entry) in log.entries.iter().enumerate() {
        so_far += u64::from(entry.report.rolled_back());
        let record = entry.report.record.as_ref().expect("every step is probed");
        assert_eq!(rollbacks[i], so_far.to_string(), "rollbacks at item {i}");
        assert_eq!(
            innovation[i],
            record.innovation.to_string(),
            "ν at item {i}"
        );
        assert_eq!(reference[i], record.reference.to_string(), "ŷ at item {i}");
        assert_eq!(threshold[i], "0.5", "ε at item {i}");
        assert_eq!(recoveries[i], "0", "recoveries at item {i}");
    }
    assert_eq!(so_far, spike.1);
    // The epoch's value: the count at its end for a count, the mean for a per-step number.
    assert_eq!(rollbacks_final, spike.1.to_string());
    assert_eq!(threshold_final, "0.5");

    // The model the Learner ends with is the last step's state.
    let last = &log.entries.last().unwrap().after;
    assert_eq!(module_bytes(&run.model.net), module_bytes_of(last));
}

/// Parameters and running statistics by id and path, whatever their `require_grad` flag (the
/// `Learner` hands its final model back in validation mode).
fn module_bytes_of(state: &StateBytes) -> Vec<(String, String, Vec<u8>)> {
    state
        .tensors
        .iter()
        .map(|(id, path, _, bytes)| (id.clone(), path.clone(), bytes.clone()))
        .collect()
}

fn module_bytes(net: &Net) -> Vec<(String, String, Vec<u8>)> {
    module_bytes_of(&StateBytes::of(net, &adamw()))
}

#[test]
fn a_rejected_last_step_is_not_what_the_learner_keeps() {
    // The spike covers the epoch's last two items: the Learner ends (and would checkpoint) on
    // the restored state, never on the rejected proposal.
    let dir = tempfile::tempdir().unwrap();
    let items = 16;
    let run = run(dir.path(), items, 1, 1, (items - 2, 2));
    let log = run.log.lock().unwrap();
    let last = log.entries.last().unwrap();
    assert_eq!(last.report.action, StepAction::Restore);
    let committed = log
        .entries
        .iter()
        .rev()
        .find(|e| e.report.action == StepAction::Commit)
        .unwrap();
    assert_same_state(&committed.after, &last.after);
    assert_eq!(
        module_bytes(&run.model.net),
        module_bytes_of(&committed.after)
    );
}

#[test]
fn with_gradient_accumulation_one_guarded_step_per_window_and_metrics_follow() {
    // Two epochs of 10 items, windows of 3: steps after items 3, 6, 9 and 10 (the epoch's last
    // item closes a partial window), 4 per epoch.
    let dir = tempfile::tempdir().unwrap();
    let run = run(dir.path(), 10, 2, 3, (5, 1));
    let log = run.log.lock().unwrap();
    assert_eq!(log.entries.len(), 8);
    assert_eq!(run.scheduler_steps, 8);
    let rolled: Vec<u64> = log
        .entries
        .iter()
        .filter(|e| e.report.rolled_back())
        .map(|e| e.step)
        .collect();
    assert_eq!(rolled, vec![5]);

    // Item i of an epoch shows the last step completed by then; before the epoch's first step,
    // the previous epoch's last one.
    let steps_by_item = |epoch: usize| -> Vec<Option<usize>> {
        let base = 4 * (epoch - 1);
        (1..=10usize)
            .map(|i| {
                let done = i / 3 + usize::from(i == 10);
                (base + done).checked_sub(1)
            })
            .collect()
    };
    for epoch in 1..=2 {
        let (innovation, _) = logged(dir.path(), epoch, GuardMetricKind::Innovation.name());
        let expected: Vec<String> = steps_by_item(epoch)
            .into_iter()
            .flatten()
            .map(|s| {
                log.entries[s]
                    .report
                    .innovation()
                    .expect("probed")
                    .to_string()
            })
            .collect();
        assert_eq!(innovation, expected, "epoch {epoch}");
    }
}

/// A guard configuration whose ladder climbs within a few rejections (restores, then ring
/// rewinds and an optimizer reset): the checkpoint tests' fixture, with the absolute ε of
/// [`run`], no drift detector and no update gate. (With the update gate, the ×1000 learning
/// rate's proposals are outsized updates, the proposals' fault: restored for the gate's patience
/// without climbing the ladder, which these tests are about.)
fn climbing_ladder() -> GuardConfig {
    let mut config = checkpointing::config(StoreKind::Device)
        .with_epsilon(0.5)
        .with_drift_detection(false);
    config.controller.update_gate.enabled = false;
    config
}

/// Issue 20: the escalation ladder inside a `Learner`. A ×1000 learning rate for 6 steps drives
/// restores, ring rewinds and an optimizer reset; at every step the `Learner`'s model and
/// optimizer, and the step's report, are those of the same guarded run written as a plain loop
/// (same initial network, batches, learning rate and fault), bit for bit on Flex.
#[test]
fn the_ladder_rewinds_inside_a_learner_exactly_as_in_a_plain_loop() {
    if !common::deterministic_backend() {
        eprintln!("skipped: a bit-for-bit comparison of two runs needs a deterministic backend");
        return;
    }
    let device = common::training_device();
    let initial = checkpointing::initial_record();
    let load = || checkpointing::initial_model(&initial);
    let items = 30;
    let fault = || Fault::new(FaultKind::LearningRateScale { factor: 1000.0 }, 10, 6);
    let dir = tempfile::tempdir().unwrap();
    let run = run_with(
        dir.path(),
        (items, 1, 1),
        climbing_ladder(),
        fault(),
        load(),
        None,
    );
    let log = run.log.lock().unwrap();
    assert_eq!(log.entries.len() as u64, items);

    // The same run as a plain loop.
    let plain = device.clone().inner();
    let probe = Probe::new(
        common::probe(&plain).batches().to_vec(),
        |m: &Net, b: &Batch| common::loss(m, b),
    )
    .unwrap();
    let mut net = load();
    let mut probe = Some(probe);
    let mut guard = None;
    let faults = FaultSchedule::new(0).with(fault());
    let mut actions = Vec::new();
    for (t, entry) in log.entries.iter().enumerate() {
        let t = t as u64;
        let batch = batch(t * BATCH as u64, BATCH, &device);
        let grads = GradientsParams::from_grads(common::loss(&net, &batch).backward(), &net);
        // As `LearnerGuard` does: the guard is built at the first optimizer step, after that
        // step's training forward has moved the running statistics (y₀ sees them).
        let guard = guard.get_or_insert_with(|| {
            Guard::builder(climbing_ladder())
                .probe(probe.take().unwrap())
                .build(&net, adamw())
                .unwrap()
        });
        let out = guard.step(faults.lr(t, LR), net, grads).unwrap();
        net = out.model;
        let strip = |report: &StepReport| {
            let mut report = report.clone();
            report.timings = Default::default();
            format!("{report:?}")
        };
        assert_eq!(strip(&entry.report), strip(&out.report), "step {t}");
        assert_same_state(
            &checkpointing::comparable(&StateBytes::of(&net, guard.optimizer())),
            &checkpointing::comparable(&entry.after),
        );
        actions.push(out.report.action);
    }
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, StepAction::Rewind { .. }))
            && actions.contains(&StepAction::ResetOptimizer)
            && actions.contains(&StepAction::Restore),
        "the ladder climbed: {actions:?}"
    );
}

/// Issue 20: a guarded `Learner` run killed after its first epoch and resumed (the `Learner`
/// from its own checkpoint, the guard from the one `LearnerGuard::checkpoint_epochs` wrote)
/// continues exactly: every step of the second epoch, with a ×1000 learning rate that drives
/// restores, ring rewinds and an optimizer reset, has the report, parameters, running
/// statistics and optimizer state of the uninterrupted run, bit for bit on Flex.
#[test]
fn a_learner_run_killed_after_an_epoch_resumes_exactly() {
    if !common::deterministic_backend() {
        eprintln!("skipped: a bit-for-bit comparison of two runs needs a deterministic backend");
        return;
    }
    let device = common::training_device();
    let initial = checkpointing::initial_record();
    let load = || checkpointing::initial_model(&initial);
    let items = 12;
    let fault = || Fault::new(FaultKind::LearningRateScale { factor: 1000.0 }, 15, 6);
    let config = climbing_ladder;

    let whole = tempfile::tempdir().unwrap();
    let uninterrupted = run_with(
        whole.path(),
        (items, 2, 1),
        config(),
        fault(),
        load(),
        Some((items, None)),
    );
    let killed = tempfile::tempdir().unwrap();
    // The first process: one epoch, its checkpoints written, then gone.
    drop(run_with(
        killed.path(),
        (items, 1, 1),
        config(),
        fault(),
        load(),
        Some((items, None)),
    ));
    // The second: built afresh (other initial values), resumed from epoch 1.
    let resumed = run_with(
        killed.path(),
        (items, 2, 1),
        config(),
        fault(),
        Net::new(&device),
        Some((items, Some(1))),
    );

    let whole_log = uninterrupted.log.lock().unwrap();
    let resumed_log = resumed.log.lock().unwrap();
    let second_epoch = &whole_log.entries[items as usize..];
    assert_eq!(resumed_log.entries.len(), second_epoch.len());
    let strip = |report: &StepReport| {
        let mut report = report.clone();
        report.timings = Default::default();
        format!("{report:?}")
    };
    for (expected, actual) in second_epoch.iter().zip(&resumed_log.entries) {
        assert_eq!(expected.step, actual.step);
        assert_eq!(
            strip(&expected.report),
            strip(&actual.report),
            "step {}",
            expected.step
        );
        assert_same_state(
            &checkpointing::comparable(&expected.after),
            &checkpointing::comparable(&actual.after),
        );
    }
    let actions: Vec<StepAction> = second_epoch.iter().map(|e| e.report.action).collect();
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, StepAction::Rewind { .. }))
            && actions.contains(&StepAction::Restore),
        "the fault after the resume drove the ladder: {actions:?}"
    );
}

/// A guard checkpoint resumed beside a `Learner` that did not resume (other parameters) is
/// refused at the first step with a typed error naming the checkpoint, and the `Learner` is
/// stopped with its own model and optimizer untouched by the guard.
#[test]
fn a_guard_checkpoint_beside_another_learner_state_is_refused() {
    let device = common::training_device();
    let fault = || Fault::new(FaultKind::LearningRateScale { factor: 1000.0 }, 100, 1);
    let dir = tempfile::tempdir().unwrap();
    drop(run_with(
        dir.path(),
        (6, 1, 1),
        climbing_ladder(),
        fault(),
        Net::new(&device),
        Some((6, None)),
    ));
    // One guard checkpoint per epoch, at its last optimizer step.
    let written: Vec<String> = std::fs::read_dir(dir.path().join("stab"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(written, ["step-000000000006"]);
    // The guard resumes from epoch 1, the Learner starts from scratch (no `checkpoint(1)`).
    let found = checkpoint::latest(&dir.path().join("stab"))
        .unwrap()
        .expect("a guard checkpoint");
    let stab = LearnerGuard::<Guarded>::new();
    let plain = device.clone().inner();
    let probe = Probe::new(
        common::probe(&plain).batches().to_vec(),
        |m: &Guarded, b: &Batch| common::loss(&m.net, b),
    )
    .unwrap();
    stab.install_resumed(Guard::builder(climbing_ladder()).probe(probe), found);
    assert_eq!(
        format!("{stab:?}"),
        r#"LearnerGuard { stage: "resuming", .. }"#
    );
    let interrupter = burn_train::Interrupter::new();
    stab.stop_on_failure(interrupter.clone());
    let model = Guarded {
        net: Net::new(&device),
        stab: stab.clone(),
        log: Arc::default(),
    };
    let mut optim = adamw();
    let grads = GradientsParams::from_grads(
        common::loss(&model.net, &batch(0, BATCH, &device)).backward(),
        &model,
    );
    // After the forward (its running statistics are the Learner's, and must stay).
    let before = StateBytes::of(&model.net, &optim);
    let after = stab.optimize(model, &mut optim, LR.into(), grads);
    eprintln!(
        "DBG stage {stab:?} report {:?}",
        stab.last_report().map(|r| r.action)
    );
    let error = stab.take_error().expect("the resume is refused");
    assert!(
        matches!(&error, stab_burn::GuardError::Checkpoint(inner)
            if matches!(**inner, stab_burn::CheckpointError::Record { .. })),
        "{error}"
    );
    assert!(error.to_string().contains("resume the Learner"), "{error}");
    assert!(interrupter.should_stop());
    assert_eq!(
        format!("{stab:?}"),
        r#"LearnerGuard { stage: "failed", .. }"#
    );
    assert_same_state(&before, &StateBytes::of(&after.net, &optim));
}
