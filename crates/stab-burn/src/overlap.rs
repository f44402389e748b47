//! The overlapped guard: the probe of step t's proposal runs on a second thread while the
//! training loop computes step t + 1's forward and backward from that proposal.
//!
//! The probe of θ_prop does not depend on the next step's gradient, and the next step's gradient
//! is computed from θ_prop whenever θ_prop is accepted (almost always). So the guard hands θ_prop
//! back at once, measures it on its probe thread, and decides at the start of the next call,
//! before the next optimizer step. When the proposal turns out rejected, the speculative gradient
//! is discarded and recomputed from the restored state (the `regrad` closure), so the run follows
//! the sequential [`Guard`]'s trajectory exactly: every decision, every parameter bit, the
//! optimizer state and the BatchNorm running statistics.
//!
//! Running statistics need care: the next step's training forward updates them in place (burn
//! shares them between clones of a module), while the accepted state must be saved as it was
//! right after the optimizer step. The guard captures them when it proposes, puts them back for
//! the save, and then restores the next forward's update.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use serde::Serialize;
use stab_core::SignalKind;

use crate::checkpoint::{CheckpointError, CheckpointInfo, Checkpointer};
use crate::error::{GuardError, ProbeError};
use crate::guard::{Guard, Proposed, StepInputs};
use crate::probe::Measure;
use crate::report::{GuardedStep, StepReport};
use crate::running_state::RunningStateSnapshot;

/// A [`Guard`] whose probe runs concurrently with the next step's forward and backward.
///
/// ```text
/// let mut guard = OverlappedGuard::new(guard)?;
/// for step in 0..steps {
///     let batch = next_batch(step);
///     let grads = gradients(&model, &batch);
///     let out = guard.step(lr, model, grads, |restored| gradients(restored, &batch))?;
///     model = out.model;               // this step's proposal, being probed
///     reports.extend(out.decided);     // the steps decided during this call
/// }
/// let (model, last, guard) = guard.finish(model)?; // decides the last proposal
/// ```
///
/// Only the probe signal is supported ([`GuardError::OverlapNeedsProbe`] otherwise). The probe
/// measures `model.valid()`, a copy whose running statistics are detached from the training
/// model, so the forward running beside it cannot change the measurement.
///
/// # Checkpoints
/// Between two calls a proposal is always in flight, and a checkpoint cannot hold a step half
/// done: [`OverlappedGuard::checkpoint_to`] first decides that proposal, then writes the
/// checkpoint with [`Guard::checkpoint_to`]. Resume as for a sequential run
/// ([`crate::GuardBuilder::resume`]) and wrap the resumed guard with [`OverlappedGuard::new`]: on
/// a deterministic backend the resumed run is the uninterrupted overlapped run, bit for bit.
///
/// # A probe that panics or hangs
/// A probe that panics fails the step that waits for it with [`GuardError::ProbePanicked`]; one
/// that takes longer than [`OverlappedGuard::probe_timeout`] fails it with
/// [`GuardError::ProbeTimeout`]. The proposal is not decided: the guard brings the last accepted
/// state back from the store ([`OverlappedGuard::take_last_accepted`]). Either ends the
/// overlapped run, whose probe is lost; continue with a new guard from that state. A hung probe
/// thread is left behind, never joined: dropping the guard does not wait for it.
pub struct OverlappedGuard<M: Module + 'static> {
    guard: Guard<M>,
    worker: ProbeWorker<M>,
    in_flight: Option<InFlight<M>>,
    probe_timeout: Option<Duration>,
}

/// What [`OverlappedGuard::checkpoint_to`] returns: the decided proposal and the outcome of the
/// write. The write's failure is a field rather than the method's error so that the model to
/// continue from is never lost with it.
#[derive(Debug)]
pub struct OverlappedCheckpoint<M> {
    /// The model to continue from: the proposal that was in flight if it was accepted, the state
    /// the guard went back to otherwise. Compute the next gradient from this model.
    pub model: M,
    /// The report of the proposal decided before writing (empty when none was in flight).
    pub decided: Vec<StepReport>,
    /// The checkpoint written, or why it could not be (the previous checkpoints are untouched;
    /// the run can go on).
    pub written: Result<CheckpointInfo, CheckpointError>,
}

impl<M: Module + 'static> std::fmt::Debug for OverlappedGuard<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlappedGuard")
            .field("guard", &self.guard)
            .field(
                "in_flight",
                &self.in_flight.as_ref().map(|p| p.proposed.step),
            )
            .finish_non_exhaustive()
    }
}

/// What one call of [`OverlappedGuard::step`] returns.
#[derive(Debug)]
pub struct OverlappedStep<M> {
    /// The model to compute the next gradient from: this step's proposal while its probe runs
    /// (or, when the step was decided at once, the state the decision left).
    pub model: M,
    /// Reports of the steps decided during this call, oldest first: the previous step's (its
    /// probe finished), and this step's when it needed no probe (unprobed or gated steps).
    pub decided: Vec<StepReport>,
}

/// How long [`OverlappedGuard`] waits, by default, for a probe measurement: ten minutes, counted
/// from the moment the proposal is handed to the probe thread. Far beyond any probe meant to cost
/// a fraction of a step, so it only turns a hang into an error; set your own bound with
/// [`OverlappedGuard::with_probe_timeout`].
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(600);

/// A proposal whose probe is running.
struct InFlight<M> {
    proposed: Proposed<M>,
    /// The running statistics as the optimizer step left them (what a commit must save).
    running: RunningStateSnapshot,
}

impl<M: Module + 'static> OverlappedGuard<M> {
    /// Moves `guard`'s probe onto a thread of its own.
    ///
    /// # Errors
    /// [`GuardError::OverlapNeedsProbe`] for another signal, [`GuardError::MissingProbe`]
    /// without a probe, [`GuardError::ProbeThread`] if the thread cannot start.
    pub fn new(mut guard: Guard<M>) -> Result<Self, GuardError> {
        let signal = guard.config().controller.signal;
        if signal != SignalKind::Probe {
            return Err(GuardError::OverlapNeedsProbe { signal });
        }
        let probe = guard.take_probe().ok_or(GuardError::MissingProbe)?;
        let worker = ProbeWorker::spawn(probe)?;
        Ok(Self {
            guard,
            worker,
            in_flight: None,
            probe_timeout: Some(DEFAULT_PROBE_TIMEOUT),
        })
    }

    /// Bounds how long a probe measurement may take, counted from the moment the proposal is
    /// handed to the probe thread (so the time it runs beside the caller's forward and backward
    /// counts): past it, the step waiting for it fails with [`GuardError::ProbeTimeout`] instead
    /// of waiting forever. `None` waits as long as the probe takes. The default is
    /// [`DEFAULT_PROBE_TIMEOUT`].
    pub fn with_probe_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.probe_timeout = timeout;
        self
    }

    /// Changes the bound of [`OverlappedGuard::with_probe_timeout`] during a run (e.g. a looser
    /// one for the first steps, whose probe may include a GPU backend's kernel compilation and
    /// autotuning). Applies from the next wait, to the proposal in flight too.
    pub fn set_probe_timeout(&mut self, timeout: Option<Duration>) {
        self.probe_timeout = timeout;
    }

    /// The bound on a probe measurement ([`OverlappedGuard::with_probe_timeout`]).
    pub fn probe_timeout(&self) -> Option<Duration> {
        self.probe_timeout
    }

    /// One guarded step. `model` is what the previous call returned (the model the guard was
    /// built from, the first time) and `grads` its gradient on this step's batch. `regrad`
    /// computes this step's gradient again from another state: it is called only when the
    /// previous proposal is rejected, with the state the guard went back to.
    ///
    /// # Errors
    /// As [`Guard::step`] (see [`OverlappedGuard::take_last_accepted`] for the state a failure
    /// hands back); [`GuardError::ProbePanicked`] or [`GuardError::ProbeTimeout`] when the
    /// previous proposal's probe panicked or overran [`OverlappedGuard::probe_timeout`];
    /// [`GuardError::ProbeThread`] after such a failure. An error ends the overlapped run.
    pub fn step(
        &mut self,
        lr: impl Into<ModuleLearningRate>,
        model: M,
        grads: GradientsParams,
        regrad: impl FnOnce(&M) -> GradientsParams,
    ) -> Result<OverlappedStep<M>, GuardError> {
        // After a probe that panicked or hung, the step it measured was never decided.
        if let Some(error) = self.worker.unavailable() {
            return Err(error);
        }
        let mut decided = Vec::new();
        let (model, grads) = match self.in_flight.take() {
            None => (model, grads),
            Some(in_flight) => {
                let settled = self.settle(in_flight, model)?;
                decided.push(settled.report);
                if decided[0].action.discards_proposal() {
                    // The gradient was computed from a state the guard has discarded.
                    drop(grads);
                    let grads = regrad(&settled.model);
                    (settled.model, grads)
                } else {
                    (settled.model, grads)
                }
            }
        };
        let proposed = self
            .guard
            .propose(lr, model, grads, StepInputs::default())?;
        if !proposed.needs_probe() {
            let settled = self.guard.settle(proposed, None)?;
            decided.push(settled.report);
            return Ok(OverlappedStep {
                model: settled.model,
                decided,
            });
        }
        // Merges the forward's pending running-statistic updates, as the sequential probe's
        // `valid()` would, and keeps the values for the save.
        let running = RunningStateSnapshot::capture(&proposed.model);
        self.worker.send(proposed.model.valid())?;
        let model = proposed.model.clone();
        self.in_flight = Some(InFlight { proposed, running });
        Ok(OverlappedStep { model, decided })
    }

    /// Decides the proposal still in flight and ends overlapping. `model` is what the last
    /// [`OverlappedGuard::step`] returned. Gives back the state to continue from, the last
    /// step's report (when a proposal was in flight) and the guard, its probe back in place.
    ///
    /// # Errors
    /// As [`OverlappedGuard::step`]. After a probe that panicked or hung, the probe (and with it
    /// the guard) cannot be taken back: [`GuardError::ProbeThread`].
    pub fn finish(mut self, model: M) -> Result<(M, Option<StepReport>, Guard<M>), GuardError> {
        let (model, last) = match self.in_flight.take() {
            Some(in_flight) => {
                let settled = self.settle(in_flight, model)?;
                (settled.model, Some(settled.report))
            }
            None => (model, None),
        };
        let probe = self.worker.stop()?;
        self.guard.put_probe(probe);
        Ok((model, last, self.guard))
    }

    /// Decides the proposal in flight, if any, and keeps overlapping: the next
    /// [`OverlappedGuard::step`] starts from the returned model with nothing in flight. `model`
    /// is what the last [`OverlappedGuard::step`] returned; call this before computing the next
    /// gradient from it (the returned model is then the decided state exactly, running
    /// statistics included). What [`OverlappedGuard::checkpoint_to`] does before writing.
    ///
    /// # Errors
    /// As [`OverlappedGuard::step`].
    pub fn settle_in_flight(&mut self, model: M) -> Result<OverlappedStep<M>, GuardError> {
        match self.in_flight.take() {
            Some(in_flight) => {
                let settled = self.settle(in_flight, model)?;
                Ok(OverlappedStep {
                    model: settled.model,
                    decided: vec![settled.report],
                })
            }
            None => Ok(OverlappedStep {
                model,
                decided: Vec::new(),
            }),
        }
    }

    /// Decides the proposal in flight ([`OverlappedGuard::settle_in_flight`]), then writes a
    /// checkpoint of the run into `dir` with [`Guard::checkpoint_to`] (which removes no other
    /// checkpoint; `extra` is the training loop's position *after* this step). `model` is what
    /// the last [`OverlappedGuard::step`] returned, before any forward on the next batch.
    /// Continue with the returned model: the next gradient is computed from it, and the next
    /// [`OverlappedGuard::step`] starts with nothing in flight.
    ///
    /// Resume with [`crate::GuardBuilder::resume`] and [`OverlappedGuard::new`] around the
    /// resumed guard (and the same [`OverlappedGuard::with_probe_timeout`]).
    ///
    /// # Errors
    /// Deciding the proposal fails as [`OverlappedGuard::step`] does (nothing is written then).
    /// A failed write is not an error of this method: it is in
    /// [`OverlappedCheckpoint::written`], with the model to continue from beside it.
    pub fn checkpoint_to<E: Serialize>(
        &mut self,
        model: M,
        dir: &Path,
        extra: &E,
    ) -> Result<OverlappedCheckpoint<M>, GuardError> {
        self.settle_and_write(model, |guard, model| guard.checkpoint_to(model, dir, extra))
    }

    /// [`OverlappedGuard::checkpoint_to`] through a [`Checkpointer`], which keeps the newest
    /// [`crate::CheckpointPolicy::keep`] of its own checkpoints ([`Checkpointer::write`]; its
    /// cadence is the caller's to apply).
    ///
    /// # Errors
    /// As [`OverlappedGuard::checkpoint_to`].
    pub fn checkpoint_with<E: Serialize>(
        &mut self,
        model: M,
        checkpointer: &mut Checkpointer,
        extra: &E,
    ) -> Result<OverlappedCheckpoint<M>, GuardError> {
        self.settle_and_write(model, |guard, model| {
            checkpointer.write(guard, model, extra)
        })
    }

    /// Decides the proposal in flight, then writes with `write`; a failed write is returned
    /// beside the model to continue from.
    fn settle_and_write(
        &mut self,
        model: M,
        write: impl FnOnce(&Guard<M>, &M) -> Result<CheckpointInfo, CheckpointError>,
    ) -> Result<OverlappedCheckpoint<M>, GuardError> {
        let OverlappedStep { model, decided } = self.settle_in_flight(model)?;
        let written = write(&self.guard, &model);
        Ok(OverlappedCheckpoint {
            model,
            decided,
            written,
        })
    }

    /// The model to continue from after a failed step, as [`Guard::take_last_accepted`] (the
    /// optimizer in [`OverlappedGuard::guard`] holds its state): the state the decision left,
    /// its running statistics without the update of the forward the caller ran on the proposal
    /// meanwhile; after a probe that failed, panicked or hung, the last accepted state, brought
    /// back from the store.
    pub fn take_last_accepted(&mut self) -> Option<M> {
        self.guard.take_last_accepted()
    }

    /// The wrapped guard (counters, reference, store).
    pub fn guard(&self) -> &Guard<M> {
        &self.guard
    }

    /// Waits for the probe of `in_flight` and decides it. `trained` is the model the caller
    /// computed the next gradient from (θ_prop, its running statistics moved on by that forward).
    fn settle(&mut self, in_flight: InFlight<M>, trained: M) -> Result<GuardedStep<M>, GuardError> {
        let InFlight {
            mut proposed,
            running,
        } = in_flight;
        let step = proposed.step;
        // A probe that fails, panics or hangs leaves the proposal undecided: the guard gives the
        // step up and brings the last accepted state back from the store.
        let y = match self.worker.receive(step, self.probe_timeout) {
            Ok((Ok(y), waited)) => {
                proposed.timings.measure += waited;
                y
            }
            Ok((Err(source), _)) => {
                drop(trained);
                let error = GuardError::Probe { step, source };
                return Err(self.guard.abandon(proposed.model, error));
            }
            Err(error) => {
                drop(trained);
                return Err(self.guard.abandon(proposed.model, error));
            }
        };
        // The next forward's statistics, merged; then the proposal's own, for the decision's save.
        let forwarded = RunningStateSnapshot::capture(&trained);
        drop(trained);
        proposed.model = running
            .restore(proposed.model)
            .map_err(|source| GuardError::Store {
                operation: "restore the proposal's running statistics",
                step,
                source,
            })?;
        let mut settled = self.guard.settle(proposed, Some(y))?;
        if !settled.report.action.discards_proposal() {
            // A failed restore writes nothing, so this clone (sharing the running statistics) is
            // still the decided state then.
            let decided = settled.model.clone();
            settled.model = match forwarded.restore(settled.model) {
                Ok(model) => model,
                Err(source) => {
                    self.guard.hand_back(decided);
                    return Err(GuardError::Store {
                        operation: "restore the next forward's running statistics",
                        step,
                        source,
                    });
                }
            };
        }
        Ok(settled)
    }
}

/// What the probe thread reports for one model.
enum Outcome {
    /// The probe returned.
    Measured(Result<f64, ProbeError>),
    /// The probe panicked; the panic's message.
    Panicked(String),
}

/// The thread that owns the probe and measures the models sent to it, one at a time.
struct ProbeWorker<M: 'static> {
    jobs: Option<Sender<M>>,
    results: Receiver<Outcome>,
    thread: Option<JoinHandle<Box<dyn Measure<M>>>>,
    /// When the model now being measured was sent.
    sent: Option<Instant>,
    /// Why the thread cannot be used any more (a probe panicked or hung).
    broken: Option<String>,
}

impl<M: Module + 'static> ProbeWorker<M> {
    fn spawn(probe: Box<dyn Measure<M>>) -> Result<Self, GuardError> {
        let (jobs, inbox) = channel::<M>();
        let (outbox, results) = channel();
        let thread = std::thread::Builder::new()
            .name("stab-probe".into())
            .spawn(move || {
                for model in inbox {
                    // A panicking probe is reported as such, not as a vanished thread.
                    let outcome = match catch_unwind(AssertUnwindSafe(|| probe.measure(&model))) {
                        Ok(measurement) => Outcome::Measured(measurement),
                        Err(payload) => Outcome::Panicked(panic_message(payload.as_ref())),
                    };
                    drop(model);
                    let panicked = matches!(outcome, Outcome::Panicked(_));
                    if outbox.send(outcome).is_err() || panicked {
                        break;
                    }
                }
                probe
            })
            .map_err(|e| GuardError::ProbeThread {
                message: e.to_string(),
            })?;
        Ok(Self {
            jobs: Some(jobs),
            results,
            thread: Some(thread),
            sent: None,
            broken: None,
        })
    }

    fn unavailable(&self) -> Option<GuardError> {
        self.broken.as_ref().map(|why| GuardError::ProbeThread {
            message: why.clone(),
        })
    }

    fn send(&mut self, model: M) -> Result<(), GuardError> {
        if let Some(error) = self.unavailable() {
            return Err(error);
        }
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(model).ok())
            .ok_or_else(|| GuardError::ProbeThread {
                message: "the probe thread has stopped".into(),
            })?;
        self.sent = Some(Instant::now());
        Ok(())
    }

    /// The measurement of step `step`'s proposal, and how long the caller waited for it. Waits
    /// until `timeout` after the proposal was sent at most.
    fn receive(
        &mut self,
        step: u64,
        timeout: Option<Duration>,
    ) -> Result<(Result<f64, ProbeError>, Duration), GuardError> {
        if let Some(error) = self.unavailable() {
            return Err(error);
        }
        let clock = Instant::now();
        let sent = self.sent.take().unwrap_or(clock);
        let received = match timeout {
            None => self
                .results
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected),
            Some(timeout) => {
                let left = timeout.saturating_sub(sent.elapsed());
                self.results.recv_timeout(left)
            }
        };
        match received {
            Ok(Outcome::Measured(measurement)) => Ok((measurement, clock.elapsed())),
            Ok(Outcome::Panicked(message)) => {
                self.broken = Some(format!("the probe panicked at step {step}"));
                Err(GuardError::ProbePanicked {
                    step,
                    waited: sent.elapsed(),
                    message,
                })
            }
            Err(RecvTimeoutError::Timeout) => {
                self.broken = Some(format!(
                    "the probe of step {step} timed out and may still be running"
                ));
                Err(GuardError::ProbeTimeout {
                    step,
                    timeout: timeout.unwrap_or_default(),
                    waited: sent.elapsed(),
                })
            }
            Err(RecvTimeoutError::Disconnected) => {
                let message = "the probe thread stopped without a measurement".to_owned();
                self.broken = Some(message.clone());
                Err(GuardError::ProbeThread { message })
            }
        }
    }

    /// Closes the job queue and takes the probe back (the thread is idle: every measurement sent
    /// has been received).
    fn stop(&mut self) -> Result<Box<dyn Measure<M>>, GuardError> {
        if let Some(error) = self.unavailable() {
            return Err(error);
        }
        self.jobs = None;
        self.thread
            .take()
            .ok_or_else(|| GuardError::ProbeThread {
                message: "already stopped".into(),
            })?
            .join()
            .map_err(|payload| GuardError::ProbeThread {
                message: format!(
                    "the probe thread panicked: {}",
                    panic_message(payload.as_ref())
                ),
            })
    }
}

impl<M: 'static> Drop for ProbeWorker<M> {
    /// Closes the job queue and lets the thread go without waiting for it: it ends on its own
    /// after the measurement it may be running, and a hung probe cannot block the drop.
    fn drop(&mut self) {
        self.jobs = None;
        drop(self.thread.take());
    }
}

/// The message of a panic's payload (a `&str` or a `String`, as `panic!` makes them).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic payload that is not a string".to_owned())
}
