//! Training runs: one (model, arm, seed) at a time, on the device Burn selects.
//!
//! All arms of a seed share the initialization (the device generator is seeded before `init`)
//! and the minibatch order ([`BatchPlan`] maps (seed, step) to indices, with no hidden cursor), so
//! they differ only in what the controller does. A rejected step consumes its minibatch.

use std::path::Path;
use std::time::{Duration, Instant};

use burn::module::{ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use indicatif::ProgressBar;
use stab_burn::checkpoint;
use stab_burn::{
    CheckpointPolicy, Checkpointer, Fault, FaultKind, FaultSchedule, Guard, GuardConfig, GuardMode,
    Probe, StepInputs,
};
use stab_core::{ControllerConfig, SignalKind};
use stab_models::data::{BatchPlan, CharCorpus, CharDataset, Split, VisionDataset};
use stab_models::{CharTransformerConfig, LossModel, paper_adamw};

use crate::cli::FaultChoice;
use crate::error::XtaskError;
use crate::reproduce::plan::Plan;
use crate::reproduce::records::{Arm, ModelKind, RunLog, StepLog};

/// Points Burn at a backend for the rest of the process (`BURN_DEVICE`).
///
/// # Errors
/// [`XtaskError::InvalidSetting`] if the backend is not compiled in.
pub fn select_backend(name: &str) -> Result<(), XtaskError> {
    // SAFETY: called from the main thread before any other thread exists or reads the
    // environment (the experiments start after it).
    unsafe { std::env::set_var("BURN_DEVICE", name) };
    stab_burn::training_device()
        .map(|_| ())
        .map_err(|e| XtaskError::InvalidSetting {
            field: "--backend",
            value: name.to_owned(),
            why: e.to_string(),
        })
}

enum Task {
    Vision(VisionDataset),
    /// The training data, and a dataset cut with [`EVAL_WINDOWS`] held-out windows for the
    /// evaluation loss.
    Text(CharDataset, CharDataset),
}

/// Test images of the evaluation set (after the probe's): the yardstick of the last steps.
pub const EVAL_IMAGES: usize = 512;
/// Held-out windows of the text evaluation set.
pub const EVAL_WINDOWS: usize = 128;
/// Steps at the end of a run whose evaluation loss is recorded (the last-10 mean).
const EVAL_STEPS: u64 = 10;

/// One model's data, device and settings, loaded once and reused by every seed and arm.
pub struct Workload {
    device: Device,
    device_name: String,
    task: Task,
}

fn data_err(e: impl std::fmt::Display) -> XtaskError {
    XtaskError::Data(e.to_string())
}

fn controller_err(e: impl std::fmt::Display) -> XtaskError {
    XtaskError::Controller(e.to_string())
}

impl Workload {
    /// Loads the data of `model` (CIFAR-10 from `--data-dir` if it holds it, else Fashion-MNIST;
    /// the synthetic repeated-phrase corpus for the Transformer).
    ///
    /// # Errors
    /// Missing or corrupt data, or no usable device.
    pub fn load(plan: &Plan, model: ModelKind) -> Result<Self, XtaskError> {
        let selected = stab_burn::training_device().map_err(controller_err)?;
        let task = match model {
            ModelKind::Resnet18 => {
                Task::Vision(VisionDataset::discover(plan.data_dir.as_deref()).map_err(data_err)?)
            }
            ModelKind::Transformer => Task::Text(
                CharDataset::new(
                    CharCorpus::synthetic(),
                    plan.transformer.seq_len,
                    plan.probe_size,
                )
                .map_err(data_err)?,
                CharDataset::new(
                    CharCorpus::synthetic(),
                    plan.transformer.seq_len,
                    EVAL_WINDOWS,
                )
                .map_err(data_err)?,
            ),
        };
        Ok(Self {
            device_name: selected.name.clone(),
            device: selected.device,
            task,
        })
    }

    /// Where the data came from, for every record and the report.
    pub fn data_source(&self) -> String {
        match &self.task {
            Task::Vision(data) => data.source_name(),
            Task::Text(data, _) => data.source_name().to_owned(),
        }
    }

    /// Trains one (arm, seed) and returns its log.
    ///
    /// # Errors
    /// Data, model or controller failures.
    pub fn run(
        &self,
        plan: &Plan,
        arm: Arm,
        seed: u64,
        checkpoints: &Path,
        bar: &ProgressBar,
    ) -> Result<RunLog, XtaskError> {
        let run = RunSetup {
            plan,
            arm,
            seed,
            checkpoints,
            bar,
        };
        let train_device = self.device.clone().autodiff();
        self.device.seed(seed);
        let (model_kind, batch_size, steps) = match &self.task {
            Task::Vision(data) => {
                let model = data
                    .resnet_config(plan.resnet.width)
                    .init(&train_device)
                    .map_err(data_err)?;
                let batches =
                    BatchPlan::new(seed, data.train_len(), plan.resnet.batch).map_err(data_err)?;
                let probe = data
                    .probe_batch(plan.probe_size, &self.device)
                    .map_err(data_err)?;
                let first = plan.probe_size.min(data.test_len());
                let last = (first + EVAL_IMAGES).min(data.test_len());
                let eval = data
                    .batch(
                        Split::Test,
                        &(first..last).collect::<Vec<_>>(),
                        &self.device,
                    )
                    .map_err(data_err)?;
                let steps = train(
                    model,
                    |step| {
                        data.train_batch(&batches.indices(step), &self.device)
                            .map_err(data_err)
                    },
                    probe,
                    eval,
                    plan.resnet.lr,
                    &run,
                )?;
                (ModelKind::Resnet18, plan.resnet.batch, steps)
            }
            Task::Text(data, held_out) => {
                let t = &plan.transformer;
                let model = CharTransformerConfig::new(data.vocab_size())
                    .with_seq_len(t.seq_len)
                    .with_d_model(t.d_model)
                    .with_n_heads(t.heads)
                    .with_n_layers(t.layers)
                    .with_d_ff(4 * t.d_model)
                    .init(&train_device)
                    .map_err(data_err)?;
                let batches = BatchPlan::new(seed, data.train_len(), t.batch).map_err(data_err)?;
                let probe = data.probe_batch(&self.device).map_err(data_err)?;
                let eval = held_out.probe_batch(&self.device).map_err(data_err)?;
                let steps = train(
                    model,
                    |step| {
                        data.train_batch(&batches.indices(step), &self.device)
                            .map_err(data_err)
                    },
                    probe,
                    eval,
                    t.lr,
                    &run,
                )?;
                (ModelKind::Transformer, t.batch, steps)
            }
        };
        Ok(RunLog {
            model: model_kind,
            arm,
            seed,
            data_source: self.data_source(),
            device: self.device_name.clone(),
            batch_size,
            probe_size: plan.probe_size,
            steps,
        })
    }
}

/// The guard configuration of an arm. The baseline observes (it measures and decides exactly as
/// a controller would, for the figures, but keeps every proposal). The clean arm runs stab's
/// defaults without the fault: every rollback there is a false positive.
fn guard_config(plan: &Plan, arm: Arm) -> GuardConfig {
    let mut stab = ControllerConfig::default().with_alpha(plan.alpha);
    stab.epsilon = plan.epsilon;
    match arm {
        Arm::Baseline => GuardConfig::default()
            .with_controller(stab)
            .with_mode(GuardMode::Observe),
        Arm::Clean | Arm::Controlled => GuardConfig::default().with_controller(stab),
        Arm::ProbeOnly => GuardConfig::default().with_controller(
            stab.with_gradient_gate(false)
                .with_update_gate(stab_core::GateConfig {
                    enabled: false,
                    ..stab_core::GateConfig::default()
                }),
        ),
        Arm::Algorithm1 => GuardConfig::default().with_controller(
            ControllerConfig::algorithm_1()
                .with_epsilon(plan.epsilon.unwrap_or(stab_core::PAPER_EPSILON))
                .with_alpha(plan.alpha),
        ),
        Arm::LossRollback => GuardConfig::default().with_controller(
            ControllerConfig::algorithm_1()
                .with_signal(SignalKind::LossSpike)
                .with_epsilon(plan.loss_spike_threshold)
                .with_spike_window(plan.loss_spike_window),
        ),
    }
}

/// What identifies one run and where it checkpoints.
struct RunSetup<'a> {
    plan: &'a Plan,
    arm: Arm,
    seed: u64,
    checkpoints: &'a Path,
    bar: &'a ProgressBar,
}

/// Checkpoints of a run in flight, for `--resume`: every 25 accepted steps and after each
/// recovery action of the ladder; the newest is kept.
fn checkpoint_policy() -> CheckpointPolicy {
    CheckpointPolicy {
        every_accepted: 25,
        keep: 1,
        on_recovery: true,
    }
}

fn train<M>(
    model: M,
    next_batch: impl Fn(u64) -> Result<M::Batch, XtaskError>,
    probe: M::Batch,
    eval: M::Batch,
    lr: f64,
    run: &RunSetup<'_>,
) -> Result<Vec<StepLog>, XtaskError>
where
    M: LossModel + 'static,
    M::Batch: Send + Sync + 'static,
{
    let RunSetup {
        plan,
        arm,
        seed,
        checkpoints,
        bar,
    } = *run;
    let kind = match plan.fault_kind {
        FaultChoice::GradientScale => FaultKind::GradientScale { factor: plan.zeta },
        FaultChoice::LrScale => FaultKind::LearningRateScale { factor: plan.zeta },
        FaultChoice::NanGradient => FaultKind::GradientNan,
    };
    let faults = if arm.faulted() {
        FaultSchedule::new(seed).with(Fault::new(kind, plan.fault_start, plan.fault_len))
    } else {
        FaultSchedule::new(seed)
    };
    let probe_for_figures = probe.clone();
    let measure =
        Probe::new(vec![probe], |m: &M, b: &M::Batch| m.loss(b)).map_err(controller_err)?;
    let builder = Guard::builder(guard_config(plan, arm)).probe(measure);
    let resumed = if plan.resume {
        checkpoint::latest(checkpoints).map_err(controller_err)?
    } else {
        None
    };
    // The run resumed from its own checkpoints owns them; a new run gets an empty folder
    // (`reproduce` refuses one with checkpoints unless `--fresh` removed them).
    let mut checkpointer = match &resumed {
        Some(checkpoint) => Checkpointer::resuming(checkpoints, checkpoint_policy(), checkpoint),
        None => Checkpointer::new(checkpoints, checkpoint_policy()),
    }
    .map_err(controller_err)?;
    // The state carried from step to step: the guard, the model and the records so far (the
    // checkpoint's extra value: the step index is their length).
    let (mut guard, mut model, mut logs) = match resumed {
        Some(checkpoint) => {
            for skipped in checkpoint.skipped() {
                eprintln!("skipped a damaged checkpoint: {skipped}");
            }
            let resumed = builder
                .resume::<Vec<StepLog>>(&checkpoint, model, paper_adamw().init())
                .map_err(controller_err)?;
            bar.set_position(resumed.step);
            (resumed.guard, resumed.model, resumed.extra)
        }
        None => {
            let guard = builder
                .build(&model, paper_adamw().init())
                .map_err(controller_err)?;
            (guard, model, Vec::with_capacity(plan.steps as usize))
        }
    };
    let start = logs.len() as u64;

    for step in start..plan.steps {
        let batch = next_batch(step)?;
        let started = Instant::now();
        let loss = model.loss(&batch);
        let train_loss = scalar(loss.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let grads = faults.grads(step, grads, &model);
        let forward_backward = started.elapsed();
        // For the records only (not timed): the norm the gradient gate judges.
        let grad_norm = stab_burn::gradient_norm(&grads, &model).ok();

        let guarded = guard
            .step_with(
                faults.lr(step, lr),
                model,
                grads,
                StepInputs::training_loss(train_loss),
            )
            .map_err(controller_err)?;
        model = guarded.model;
        let report = guarded.report;
        let timings = report.timings;

        // Probe loss and norm of the state carried forward, for figures (not timed); the
        // evaluation loss on the last steps, the yardstick of the comparisons.
        let probe_loss = scalar(model.valid().loss(&probe_for_figures));
        let eval_loss =
            (step + EVAL_STEPS >= plan.steps).then(|| scalar(model.valid().loss(&eval)));
        let record = report.record.as_ref();
        logs.push(StepLog {
            step,
            train_loss,
            probe_loss,
            measurement: record.map(|r| r.measurement),
            innovation: record.map(|r| r.innovation),
            reference: record.map(|r| r.reference),
            threshold: record.map(|r| r.threshold),
            rejected: arm.guarded() && report.is_rejection(),
            action: record.map(|r| action_name(r.action)),
            rung: record.and_then(|r| r.rung),
            fault: faults.is_active(step),
            grad_norm,
            update_norm: report.update_norm,
            eval_loss,
            param_norm: param_l2_norm(&model.valid()),
            step_seconds: (forward_backward + timings.optimizer).as_secs_f64(),
            control_seconds: control_time(arm, &timings).as_secs_f64(),
        });
        checkpointer
            .after_step(&guard, &model, &report, &logs)
            .map_err(controller_err)?;
        bar.inc(1);
    }
    Ok(logs)
}

/// The controller's share of a step: measurement, snapshot, restore. The baseline's
/// measurement is taken for the figures only and costs it nothing.
fn control_time(arm: Arm, timings: &stab_burn::StepTimings) -> Duration {
    match arm {
        Arm::Baseline => Duration::ZERO,
        _ => timings.measure + timings.snapshot + timings.restore,
    }
}

/// The action's stable name (its serde tag).
fn action_name(action: stab_core::Action) -> String {
    serde_json::to_value(action)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f32>() as f64
}

/// ℓ2 norm of every float parameter (running statistics are not parameters).
fn param_l2_norm<M: Module>(model: &M) -> f64 {
    struct SumSquares(Option<Tensor<1>>);
    impl ModuleVisitor for SumSquares {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let s = param.val().powi_scalar(2).sum();
            self.0 = Some(match self.0.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
    let mut visitor = SumSquares(None);
    model.visit(&mut visitor);
    visitor.0.map(|t| scalar(t).sqrt()).unwrap_or(0.0)
}
