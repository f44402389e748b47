//! The probe: a fixed set of held-out batches and a loss, measured on the validation view.

use burn::module::Module;
use burn::tensor::Tensor;

use crate::error::ProbeError;

/// Anything that turns a model into one scalar measurement y(θ) for the controller.
///
/// [`Probe`] is the paper's measurement; implement this for another one (an accuracy, a
/// calibration error). Implementations must not change the model's state, and must return a
/// non-finite value (not an error) when the model itself produces one: the controller rejects
/// NaN and ±∞ with their own reason.
pub trait Measure<M>: Send {
    /// Measures `model` (a training-mode module; use `model.valid()` for inference).
    ///
    /// # Errors
    /// A [`ProbeError`] if the measurement cannot be taken at all (e.g. a device read fails).
    fn measure(&self, model: &M) -> Result<f64, ProbeError>;
}

type LossFn<M, B> = Box<dyn Fn(&M, &B) -> Tensor<1> + Send + Sync>;

/// The paper's measurement: the mean loss of a model on a small fixed set of held-out batches
/// (|P| = 16 examples in the paper).
///
/// The batches are kept for the whole run; build them on the training device once (on the plain
/// device, not its `.autodiff()` wrapper: the probe runs on the validation view) so that a
/// measurement moves no data. The loss is any function of the model and a batch that returns a
/// loss tensor (a mean loss of shape `[1]`, or per-example losses); the measurement is the mean,
/// over batches, of each batch's mean.
///
/// The loss is evaluated on `model.valid()`: no autodiff graph, BatchNorm uses its running
/// statistics (after merging every pending update, so the proposal's own update is included)
/// and does not update them, dropout is off. The probe never changes the model (building the
/// validation view merges pending running-statistic updates, which the next forward would do
/// anyway).
pub struct Probe<M, B> {
    batches: Vec<B>,
    loss: LossFn<M, B>,
}

impl<M, B> std::fmt::Debug for Probe<M, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("batches", &self.batches.len())
            .finish_non_exhaustive()
    }
}

impl<M: Module, B: Send + Sync> Probe<M, B> {
    /// A probe over `batches`, measured with `loss(&model.valid(), batch)`.
    ///
    /// # Errors
    /// [`ProbeError::Empty`] if `batches` is empty.
    pub fn new(
        batches: Vec<B>,
        loss: impl Fn(&M, &B) -> Tensor<1> + Send + Sync + 'static,
    ) -> Result<Self, ProbeError> {
        if batches.is_empty() {
            return Err(ProbeError::Empty);
        }
        Ok(Self {
            batches,
            loss: Box::new(loss),
        })
    }

    /// Number of batches in the probe set.
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// Always `false`: a probe has at least one batch.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The held-out batches.
    pub fn batches(&self) -> &[B] {
        &self.batches
    }

    /// Mean probe loss of `model`, read back as one scalar. NaN or ±∞ if the model produces
    /// them (a rejection for the controller, with its own reason), never silently replaced.
    ///
    /// # Errors
    /// [`ProbeError::EmptyLoss`] if a loss has no elements, [`ProbeError::TensorRead`] if the
    /// value cannot be read from the device.
    pub fn measure(&self, model: &M) -> Result<f64, ProbeError> {
        let valid = model.valid();
        let mut means = Vec::with_capacity(self.batches.len());
        for (batch, data) in self.batches.iter().enumerate() {
            let loss = (self.loss)(&valid, data);
            if loss.dims()[0] == 0 {
                return Err(ProbeError::EmptyLoss { batch });
            }
            means.push(loss.mean());
        }
        // One device-to-host read per measurement.
        Tensor::cat(means, 0)
            .mean()
            .try_into_scalar::<f64>()
            .map_err(|e| ProbeError::TensorRead {
                message: e.to_string(),
            })
    }
}

impl<M: Module, B: Send + Sync> Measure<M> for Probe<M, B> {
    fn measure(&self, model: &M) -> Result<f64, ProbeError> {
        Probe::measure(self, model)
    }
}
