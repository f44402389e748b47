//! The one thing every task model offers the training loop: a scalar loss on a batch.

use burn::prelude::*;

/// A model with a mean loss on its own batch type.
///
/// Implemented by [`ResNet18`](crate::ResNet18) (with [`ImageBatch`](crate::ImageBatch)) and
/// [`CharTransformer`](crate::CharTransformer) (with [`TextBatch`](crate::TextBatch)), so a
/// training or probing loop can be written once for both. The loss works on the training module
/// (autodiff device: call `.backward()` on it) and on `model.valid()` (plain device: a probe
/// evaluation that builds no graph and leaves BatchNorm's running statistics untouched).
pub trait LossModel: Module {
    /// The minibatch this model consumes.
    type Batch: Clone;

    /// Mean loss over the batch, a one-element tensor.
    fn loss(&self, batch: &Self::Batch) -> Tensor<1>;
}
