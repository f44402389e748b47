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

use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use stab_core::SignalKind;

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
pub struct OverlappedGuard<M: Module + 'static> {
    guard: Guard<M>,
    worker: ProbeWorker<M>,
    in_flight: Option<InFlight<M>>,
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
        })
    }

    /// One guarded step. `model` is what the previous call returned (the model the guard was
    /// built from, the first time) and `grads` its gradient on this step's batch. `regrad`
    /// computes this step's gradient again from another state: it is called only when the
    /// previous proposal is rejected, with the state the guard went back to.
    ///
    /// # Errors
    /// As [`Guard::step`]; an error ends the run.
    pub fn step(
        &mut self,
        lr: impl Into<ModuleLearningRate>,
        model: M,
        grads: GradientsParams,
        regrad: impl FnOnce(&M) -> GradientsParams,
    ) -> Result<OverlappedStep<M>, GuardError> {
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
    /// As [`Guard::step`].
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
        let (measurement, waited) = self.worker.receive()?;
        proposed.timings.measure += waited;
        let step = proposed.step;
        let y = measurement.map_err(|source| GuardError::Probe { step, source })?;
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
            settled.model =
                forwarded
                    .restore(settled.model)
                    .map_err(|source| GuardError::Store {
                        operation: "restore the next forward's running statistics",
                        step,
                        source,
                    })?;
        }
        Ok(settled)
    }
}

/// The thread that owns the probe and measures the models sent to it, one at a time.
struct ProbeWorker<M: 'static> {
    jobs: Option<Sender<M>>,
    results: Receiver<Result<f64, ProbeError>>,
    thread: Option<JoinHandle<Box<dyn Measure<M>>>>,
}

impl<M: Module + 'static> ProbeWorker<M> {
    fn spawn(probe: Box<dyn Measure<M>>) -> Result<Self, GuardError> {
        let (jobs, inbox) = channel::<M>();
        let (outbox, results) = channel();
        let thread = std::thread::Builder::new()
            .name("stab-probe".into())
            .spawn(move || {
                for model in inbox {
                    let measurement = probe.measure(&model);
                    drop(model);
                    if outbox.send(measurement).is_err() {
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
        })
    }

    fn send(&self, model: M) -> Result<(), GuardError> {
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(model).ok())
            .ok_or_else(|| GuardError::ProbeThread {
                message: "the probe thread has stopped".into(),
            })
    }

    /// The next measurement, and how long the caller waited for it.
    fn receive(&self) -> Result<(Result<f64, ProbeError>, Duration), GuardError> {
        let clock = Instant::now();
        let measurement = self.results.recv().map_err(|_| GuardError::ProbeThread {
            message: "the probe thread stopped (its probe panicked)".into(),
        })?;
        Ok((measurement, clock.elapsed()))
    }

    /// Closes the job queue and takes the probe back.
    fn stop(&mut self) -> Result<Box<dyn Measure<M>>, GuardError> {
        self.jobs = None;
        self.thread
            .take()
            .ok_or_else(|| GuardError::ProbeThread {
                message: "already stopped".into(),
            })?
            .join()
            .map_err(|_| GuardError::ProbeThread {
                message: "the probe thread panicked".into(),
            })
    }
}

impl<M: 'static> Drop for ProbeWorker<M> {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
