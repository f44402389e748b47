//! Errors raised by stab-burn, one enum per concern, each variant with the context that explains it.

use stab_core::{ObserverError, SafetyViolation, SignalKind, StabError};
use thiserror::Error;

/// A snapshot store could not save or restore a state, or refused to restore part of one.
///
/// Every restore validates the whole target before writing anything: a state that cannot be
/// brought back completely is reported here, never half restored.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    /// `restore` was called before any `save`.
    #[error("the {store} store holds no snapshot yet")]
    Empty {
        /// Which store (`"device"`, `"host"`).
        store: &'static str,
    },
    /// A ring slot the step protocol named holds no snapshot (a driver or store bug).
    #[error("the {store} store holds no snapshot in {slot}")]
    EmptySlot {
        /// Which store.
        store: &'static str,
        /// The slot.
        slot: stab_core::SlotId,
    },
    /// A tensor of the state could not be read back from the device.
    #[error("the {store} store could not read tensor `{path}` ({id}) from the device: {message}")]
    TensorRead {
        /// Which store.
        store: &'static str,
        /// Parameter id of the tensor.
        id: String,
        /// Module path of the tensor.
        path: String,
        /// What the backend reported.
        message: String,
    },
    /// The optimizer state could not be serialized or deserialized.
    #[error("the {store} store could not {operation} the optimizer record: {message}")]
    OptimizerRecord {
        /// Which store.
        store: &'static str,
        /// `"serialize"` or `"deserialize"`.
        operation: &'static str,
        /// What burn reported.
        message: String,
    },
    /// Loading the saved optimizer record brought back fewer states than were saved (burn skips
    /// states it cannot rebuild, e.g. when the optimizer groups changed).
    #[error(
        "the optimizer restored {actual_tensors} state tensors and {actual_scalars} scalars, \
         but {expected_tensors} tensors and {expected_scalars} scalars were saved"
    )]
    OptimizerStateLost {
        /// State tensors in the snapshot.
        expected_tensors: usize,
        /// State tensors after loading.
        actual_tensors: usize,
        /// Scalars (step counts, ranks) in the snapshot.
        expected_scalars: usize,
        /// Scalars after loading.
        actual_scalars: usize,
    },
    /// The module being restored has a tensor the snapshot does not hold.
    #[error("cannot restore `{path}` ({id}): the snapshot holds no value for it")]
    MissingTensor {
        /// Parameter id.
        id: String,
        /// Module path.
        path: String,
    },
    /// The snapshot holds a tensor that the module being restored does not have.
    #[error("the snapshot holds tensor {id} that the module being restored does not have")]
    UnexpectedTensor {
        /// Parameter id.
        id: String,
    },
    /// A saved tensor's shape or kind differs from the module's.
    #[error("cannot restore `{path}` ({id}): saved {expected}, module has {actual}")]
    Mismatch {
        /// Parameter id.
        id: String,
        /// Module path.
        path: String,
        /// Shape and kind in the snapshot.
        expected: String,
        /// Shape and kind in the module.
        actual: String,
    },
    /// The host store's background copy thread is gone (it panicked or could not start).
    #[error("the host store's background copy thread is unavailable: {message}")]
    WorkerUnavailable {
        /// What went wrong.
        message: String,
    },
    /// The background copy of an accepted state failed; the previous snapshot is kept but is no
    /// longer the last accepted state, so the store refuses to restore from it.
    #[error("the background copy of snapshot {generation} failed: {source}")]
    BackgroundCopy {
        /// Which save (1-based) failed.
        generation: u64,
        /// The failure.
        #[source]
        source: Box<StoreError>,
    },
    /// The store cannot hand out host copies of its snapshots, so a checkpoint cannot be written
    /// (a custom store that does not implement `StateStore::export`).
    #[error("the {store} store cannot export its snapshots for a checkpoint")]
    ExportUnsupported {
        /// Which store.
        store: &'static str,
    },
}

/// The probe could not measure a model.
#[derive(Debug, Error)]
pub enum ProbeError {
    /// A probe needs at least one batch.
    #[error("the probe set is empty: give at least one held-out batch")]
    Empty,
    /// The loss of a probe batch had no elements.
    #[error("the probe loss of batch {batch} has no elements")]
    EmptyLoss {
        /// Index of the batch.
        batch: usize,
    },
    /// The probe loss could not be read back from the device.
    #[error("could not read the probe loss from the device: {message}")]
    TensorRead {
        /// What the backend reported.
        message: String,
    },
}

/// A gradient signal could not be computed.
#[derive(Debug, Error)]
pub enum SignalError {
    /// A reduction could not be read back from the device.
    #[error("could not read the {quantity} from the device: {message}")]
    TensorRead {
        /// Which quantity (`"gradient norm"`, `"gradient cosine"`).
        quantity: &'static str,
        /// What the backend reported.
        message: String,
    },
    /// The gradients cover no trainable parameter of the model.
    #[error("the gradients cover none of the model's trainable parameters")]
    NoGradients,
}

/// A fault schedule is malformed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum FaultError {
    /// A scale factor is NaN or infinite (use the explicit NaN/Inf faults instead).
    #[error(
        "fault {index}: factor {value} is not finite (use gradient-nan / gradient-inf for that)"
    )]
    NonFiniteFactor {
        /// Index of the fault in the schedule.
        index: usize,
        /// The factor.
        value: f64,
    },
    /// A noise amplitude is negative or not finite.
    #[error("fault {index}: noise amplitude {value} must be finite and >= 0")]
    BadAmplitude {
        /// Index of the fault in the schedule.
        index: usize,
        /// The amplitude.
        value: f64,
    },
    /// A window of zero steps never fires.
    #[error("fault {index}: the window starting at step {start} has length 0")]
    EmptyWindow {
        /// Index of the fault in the schedule.
        index: usize,
        /// First step of the window.
        start: u64,
    },
    /// Label flipping needs at least two classes.
    #[error("fault {index}: label flipping needs at least 2 classes, got {num_classes}")]
    TooFewClasses {
        /// Index of the fault in the schedule.
        index: usize,
        /// The number of classes given.
        num_classes: u32,
    },
    /// A label fell outside `0..num_classes`.
    #[error("label {label} is outside 0..{num_classes}")]
    LabelOutOfRange {
        /// The label.
        label: i64,
        /// The number of classes.
        num_classes: u32,
    },
    /// The labels could not be read back from the device to check their range.
    #[error("could not read the labels from the device: {message}")]
    TensorRead {
        /// What the backend reported.
        message: String,
    },
}

/// The training device named by `BURN_DEVICE` cannot be used by this build.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DeviceError {
    /// `BURN_DEVICE` names no backend burn knows.
    #[error("BURN_DEVICE={requested} names no known backend (known: {known})")]
    UnknownBackend {
        /// The value of `BURN_DEVICE`.
        requested: String,
        /// The names burn accepts.
        known: String,
    },
    /// The backend exists but was not compiled into this build (enable the cargo feature).
    #[error("BURN_DEVICE={requested} cannot be used: {message}")]
    Unavailable {
        /// The value of `BURN_DEVICE`.
        requested: String,
        /// Why (usually: the cargo feature is not enabled).
        message: String,
    },
}

/// Errors of the [`crate::Guard`]. An `Err` from [`crate::Guard::step`] consumes the model passed
/// in; [`crate::Guard::take_last_accepted`] hands back the state to continue from whenever the
/// guard holds one (see there for each variant): the state the step's decision left, or, for an
/// error before the decision, the last accepted state. After [`GuardError::Observer`] and the
/// errors before the decision the guard can go on from that state; the others end the run.
#[derive(Debug, Error)]
pub enum GuardError {
    /// The controller configuration is invalid, or the initial measurement is not finite.
    #[error(transparent)]
    Controller(StabError),
    /// The runtime safety monitor found a broken guarantee. When a restored state's fingerprint
    /// differs from the one taken when it was saved (`InexactRestore`, with
    /// [`crate::GuardConfig::verify_restores`]), no state is handed back: the one the store
    /// produced is not the last accepted state.
    #[error("safety invariant violated: {0}")]
    Safety(#[from] SafetyViolation),
    /// The snapshot store failed. After a failed `save` or `copy` of a commit, the accepted
    /// proposal is handed back by [`crate::Guard::take_last_accepted`] (it is not in the store);
    /// after a failed `restore` or `rewind` nothing is: the store could not bring the last
    /// accepted state back, and the rejected proposal is not a state to continue from.
    #[error("snapshot store failed during {operation} at step {step}: {source}")]
    Store {
        /// What the guard asked of the store: `"save"`, `"copy"`, `"restore"`, `"rewind"`,
        /// `"release"`, or a running-statistics restore of the overlapped guard.
        operation: &'static str,
        /// The guarded step (the initial snapshot is step 0's save).
        step: u64,
        /// What the store reported.
        #[source]
        source: StoreError,
    },
    /// The probe could not measure the proposal. The step is given up (not decided, its index
    /// skipped): [`crate::Guard::take_last_accepted`] hands back the last accepted state from
    /// the store, and the guard can go on from it.
    #[error("probe failed at step {step}: {source}")]
    Probe {
        /// The guarded step (`0` for the initial measurement).
        step: u64,
        /// What the probe reported.
        #[source]
        source: ProbeError,
    },
    /// A gradient signal could not be computed.
    #[error("gradient signal failed at step {step}: {source}")]
    Signal {
        /// The guarded step.
        step: u64,
        /// What went wrong.
        #[source]
        source: SignalError,
    },
    /// The configured signal needs an input this step did not supply.
    #[error("signal {signal:?} needs `{input}` at step {step}; pass it in StepInputs")]
    MissingInput {
        /// The guarded step.
        step: u64,
        /// The configured signal.
        signal: SignalKind,
        /// The missing input.
        input: &'static str,
    },
    /// The probe signal was configured but no probe was given to the builder.
    #[error("the probe signal needs a probe: call GuardBuilder::probe")]
    MissingProbe,
    /// Fingerprinting a state for the restore check failed. The state (restored, rewound or
    /// committed) is handed back unverified by [`crate::Guard::take_last_accepted`].
    #[error("could not fingerprint the state at step {step}: {source}")]
    Fingerprint {
        /// The guarded step.
        step: u64,
        /// What went wrong.
        #[source]
        source: StoreError,
    },
    /// An observer could not record a step. The step itself is complete: its state is handed
    /// back by [`crate::Guard::take_last_accepted`] and the guard can go on from it.
    #[error(transparent)]
    Observer(#[from] ObserverError),
    /// The overlapped guard measures the probe signal only: other signals are measured before
    /// the optimizer step, so there is nothing to overlap.
    #[error("the overlapped probe needs the probe signal, not {signal:?}")]
    OverlapNeedsProbe {
        /// The configured signal.
        signal: SignalKind,
    },
    /// The overlapped guard's probe thread could not start, is gone, or cannot be used any more
    /// (after [`GuardError::ProbePanicked`] or [`GuardError::ProbeTimeout`]).
    #[error("the probe thread is unavailable: {message}")]
    ProbeThread {
        /// What went wrong.
        message: String,
    },
    /// The overlapped guard's probe panicked while measuring a proposal. The proposal is not
    /// decided; the last accepted state is handed back (`OverlappedGuard::take_last_accepted`)
    /// and the overlapped run ends.
    #[error("the probe of step {step} panicked after {waited:?}: {message}")]
    ProbePanicked {
        /// The guarded step whose proposal was being measured.
        step: u64,
        /// Time from handing the proposal to the probe thread until the panic was seen.
        waited: std::time::Duration,
        /// The panic's message.
        message: String,
    },
    /// The overlapped guard's probe did not finish within its bound
    /// (`OverlappedGuard::with_probe_timeout`). The proposal is not decided; the last accepted
    /// state is handed back (`OverlappedGuard::take_last_accepted`) and the overlapped run ends.
    /// The probe thread is left running, detached.
    #[error(
        "the probe of step {step} did not finish within {timeout:?} (waited {waited:?} since the \
         proposal was handed to it); its thread is abandoned"
    )]
    ProbeTimeout {
        /// The guarded step whose proposal was being measured.
        step: u64,
        /// The bound.
        timeout: std::time::Duration,
        /// Time from handing the proposal to the probe thread until the guard gave up.
        waited: std::time::Duration,
    },
    /// A checkpoint of the guard could not be written or resumed from (the `Learner`
    /// integration writes and resumes them inside `TrainStep::optimize`).
    #[error("guard checkpoint: {0}")]
    Checkpoint(Box<crate::checkpoint::CheckpointError>),
}

impl From<StabError> for GuardError {
    /// Safety violations and observer failures keep their own variants, whichever layer found
    /// them; everything else the controller reports is [`GuardError::Controller`].
    fn from(error: StabError) -> Self {
        match error {
            StabError::Safety(violation) => Self::Safety(violation),
            StabError::Observer(observer) => Self::Observer(observer),
            other => Self::Controller(other),
        }
    }
}
