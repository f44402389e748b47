//! # stab-burn
//!
//! The Burn adapter of **stab**: makes a Burn 0.22 training loop self-healing
//! ("Automatic Stability and Recovery for Neural Network Training", 2026). After the optimizer
//! proposes an update, the proposal is measured on a signal the optimizer never trained on (by
//! default the loss on a small held-out probe set); stab-core's controller accepts it iff the
//! innovation ν = y(θ_prop) − ŷ is at most ε, and otherwise the guard restores the last accepted
//! parameters, optimizer state *and* BatchNorm running statistics, bit for bit.
//!
//! ## Adding it to a Burn loop
//!
//! Two lines to build the guard (it takes over the optimizer), one line changed in the loop:
//!
//! ```
//! use burn::module::Module;
//! use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
//! use burn::optim::{AdamWConfig, GradientsParams};
//! use burn::tensor::{Device, Distribution, Tensor};
//! use stab_burn::{Guard, GuardConfig, Probe};
//!
//! #[derive(Module, Debug)]
//! struct Mlp { fc: Linear, bn: BatchNorm }
//! impl Mlp {
//!     fn loss(&self, (x, y): &(Tensor<2>, Tensor<2>)) -> Tensor<1> {
//!         (self.bn.forward(self.fc.forward(x.clone())) - y.clone()).square().mean()
//!     }
//! }
//!
//! # fn main() -> Result<(), stab_burn::GuardError> {
//! let device = Device::default().autodiff();
//! let data = |n| {
//!     let x = Tensor::<2>::random([n, 4], Distribution::Default, &device);
//!     (x.clone(), x.sum_dim(1).repeat_dim(1, 2))
//! };
//! let mut model = Mlp { fc: LinearConfig::new(4, 2).init(&device), bn: BatchNormConfig::new(2).init(&device) };
//! let optim = AdamWConfig::new().init();
//!
//! // + the probe: held-out batches and a loss; + the guard, which now owns the optimizer.
//! let probe = Probe::new(vec![data(16)], |m: &Mlp, b| m.loss(b)).unwrap();
//! let mut guard = Guard::builder(GuardConfig::default()).probe(probe).build(&model, optim)?;
//!
//! for step in 0..10 {
//!     let batch = data(32);
//!     let grads = GradientsParams::from_grads(model.loss(&batch).backward(), &model);
//!     let out = guard.step(1e-2, model, grads)?; // was: model = optim.step(1e-2, model, grads);
//!     model = out.model;
//!     println!("step {step}: {:?} ν = {:?}", out.report.action, out.report.innovation());
//! }
//! assert_eq!(guard.counters().steps, 10);
//! # Ok(()) }
//! ```
//!
//! `examples/guarded_training.rs` runs a Conv2d + BatchNorm + Linear classifier with an injected
//! gradient blow-up, baseline beside guarded, and times both.
//!
//! ## What is in the crate
//!
//! - [`Guard`] (built by [`GuardBuilder`], configured by the serde-friendly [`GuardConfig`]):
//!   one guarded step around burn's `ModuleOptimizer`, returning a [`GuardedStep`] with a
//!   [`StepReport`] (decision, measurement, innovation, reference, counters). stab-core's
//!   safety monitor checks every decision; [`GuardConfig::verify_restores`] adds a bit-exact
//!   fingerprint check of every restore (Proposition 7.4).
//! - [`Probe`] (or any [`Measure`]): fixed held-out batches and a loss, measured on the
//!   validation view of the proposal, every `probe_interval` steps.
//! - Snapshot stores ([`StateStore`]): [`DeviceStore`] (copy-on-write on the device) and
//!   [`HostStore`] (background offload to host memory). Both restore exactly and refuse, with a
//!   typed [`StoreError`], to restore part of a state. [`RunningStateSnapshot`] handles burn's
//!   shared, per-thread-pending running statistics.
//! - Signals: the probe (default), the training-loss spike baseline, gradient-norm spikes and
//!   gradient agreement, selected by stab-core's `SignalKind`; helpers [`gradient_norm`],
//!   [`gradient_cosine`], [`reference_gradients`].
//! - [`FaultSchedule`]: seeded, composable, serde-configurable fault injection (gradient scale,
//!   NaN/∞ gradients, learning-rate spikes, input noise, label flips).
//! - [`training_device`]: the device `BURN_DEVICE` selects, with its name.
//! - [`checkpoint`]: crash-safe checkpoints of a guarded run (model, optimizer, every ring
//!   snapshot, the step protocol's state and the loop's own position) and exact resume
//!   ([`Checkpointer`], [`GuardBuilder::resume`]); `examples/checkpointed_training.rs`.
//!
//! ## Recovery
//!
//! The guard drives stab-core's [`stab_core::StepProtocol`]; the same decisions as the closure
//! `Supervisor`, tested once. Beyond `ν ≤ ε`: the gradient gate (the guard computes the
//! gradient's global norm before each step in enforce mode: one device read), drift detection,
//! a ring of snapshots at spaced ages (`ring.ages`, default 8 and 64 accepted steps: up to five
//! snapshots, see [`StoreMemory::snapshots`]) and the escalation ladder (rewind, rewind further,
//! reset the optimizer's state, rewind; then stop with `StabError::RecoveryExhausted` and
//! [`Guard::take_last_accepted`]). Every action is a [`StepAction`] in the step report and the
//! record.
//!
//! A step that fails (a probe, signal, store or observer error, a safety violation) loses no
//! state the guard holds: [`Guard::take_last_accepted`] hands back the state to continue from,
//! bit for bit and with the optimizer holding its state, and says for each error which state
//! that is and when there is none (a store that cannot bring the last accepted state back).
//!
//! ## Choices and their costs
//!
//! - **Store.** [`StoreKind::Device`] saves in microseconds but, while a step is in flight, the
//!   previous parameters and optimizer state stay alive next to the proposal (up to one extra
//!   copy on the device). [`StoreKind::Host`] copies each accepted state to host memory on a
//!   background thread; the device holds one copy, and a rollback uploads the state again.
//! - **Probe interval k.** k = 1 is the paper. With k > 1 the probe costs k times less, but a
//!   bad update is caught up to k − 1 steps late, a rollback discards the unprobed steps since
//!   the last probed-and-accepted state, and the guarantees hold at probed steps only.
//! - **ε is in the signal's units**: probe-loss units for the probe, a z-score for the spike
//!   signals (try 3–6), a cosine drop for agreement.
//! - **Not rewound by a rejection**: the learning-rate schedule, the data position and random
//!   generators. A rejected batch is skipped, not retried; a rewind skips every batch since the
//!   restored snapshot.
//! - **Ring memory.** Each ring level keeps up to two older states. With the device store they
//!   stay on the device (copy-on-write: a level's snapshot costs a full copy of parameters and
//!   optimizer state once the live state has moved on); with the host store they are host
//!   copies shared by `Arc`. `ring.ages = []` keeps only the last accepted state.
//!
//! ## With burn-train's `Learner`
//!
//! With the cargo feature `train`, `learner::LearnerGuard` protects a burn-train `Learner`
//! run: the model keeps the handle in a `#[module(skip)]` field and overrides
//! `TrainStep::optimize` with one line that hands the step to it; the guard works on the
//! optimizer the `Learner` lends and restores it in place. Its numbers (rollbacks, ν, ŷ, ε,
//! recovery actions) become burn-train metrics, shown by the dashboard. See the `learner` module for the
//! pattern and what a rejection does to the `Learner`'s scheduler, iteration counter, gradient
//! accumulation, data position and checkpoints; `examples/learner_fashion_mnist.rs` trains a
//! CNN on Fashion-MNIST with it. Burn's "optimizer that wraps an optimizer" cannot do this: a
//! per-parameter `Optimizer` never sees the whole module.
//!
//! ## Backends and cargo features
//!
//! The crate is backend-agnostic (burn 0.22 selects the backend at run time). Flex (CPU) is
//! always compiled in and is the default device. Features add backends, chosen with the
//! `BURN_DEVICE` environment variable (see [`training_device`]):
//!
//! | feature | backend | `BURN_DEVICE` |
//! |---|---|---|
//! | *(none)* | Flex, CPU | `flex` (default) |
//! | `wgpu` | wgpu: Vulkan, Metal, DX12, WebGPU; lavapipe in CI | `wgpu` |
//! | `cuda` | CUDA | `cuda` |
//! | `tch` | LibTorch | `tch` |
//!
//! With several backends compiled in and `BURN_DEVICE` unset, burn prefers the accelerator
//! (CUDA, then wgpu, then LibTorch, then Flex). Two backends need more than cargo:
//!
//! - `cuda`: cubecl-cuda 0.11 builds `tracel-llvm-bundler`, whose build script downloads an LLVM
//!   bundle into its cache on the first build; that first build needs network access (later
//!   builds reuse the cache). The CUDA driver and toolkit libraries are loaded at run time.
//! - `tch` links LibTorch 2.9.0 (torch-sys 0.22).
//!   Without help its build script downloads LibTorch, which fails on a machine without network:
//!   point `LIBTORCH` at an unpacked LibTorch 2.9.0 (`LIBTORCH=/opt/libtorch`, and
//!   `LD_LIBRARY_PATH=$LIBTORCH/lib` at run time), or set `LIBTORCH_USE_PYTORCH=1` to use the
//!   LibTorch inside an installed PyTorch 2.9.0 (`pip install torch==2.9.0`). The workspace's
//!   `scripts/libtorch.sh` does the latter in a virtual environment outside the clone and runs a
//!   command with the variables set: `BURN_DEVICE=tch scripts/libtorch.sh run cargo test -p
//!   stab-burn --features tch --tests`.
#![warn(missing_docs)]

mod builder;
pub mod checkpoint;
mod config;
pub mod device;
mod error;
pub mod fault;
pub mod fingerprint;
mod guard;
#[cfg(feature = "train")]
pub mod learner;
mod overlap;
mod probe;
mod report;
pub mod running_state;
pub mod signals;
pub mod store;
mod tensors;

pub use builder::GuardBuilder;
pub use checkpoint::{
    Checkpoint, CheckpointError, CheckpointInfo, CheckpointPolicy, Checkpointer, Resumed,
    WriteStage,
};
pub use config::{GuardConfig, GuardMode};
pub use device::{SelectedDevice, device_name, training_device};
pub use error::{DeviceError, FaultError, GuardError, ProbeError, SignalError, StoreError};
pub use fault::{Fault, FaultKind, FaultSchedule};
pub use fingerprint::{module_fingerprint, optimizer_fingerprint, state_fingerprint};
pub use guard::{Guard, StepInputs};
pub use overlap::{DEFAULT_PROBE_TIMEOUT, OverlappedCheckpoint, OverlappedGuard, OverlappedStep};
pub use probe::{Measure, Probe};
pub use report::{GuardedStep, StepAction, StepReport, StepTimings};
pub use running_state::{RunningStateSnapshot, sync_running_states};
pub use signals::{
    gradient_cosine, gradient_norm, reference_gradients, scale_gradients, scale_update, update_norm,
};
pub use store::{DeviceStore, HostStore, SlotExport, StateStore, StoreKind, StoreMemory};
