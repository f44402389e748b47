//! The two minibatch types, built on a chosen device from host data.
//!
//! Build batches on the **plain** device (`device.clone().inner()` or `Device::flex()`): inputs
//! and targets never need gradients, and the same batch then serves both the autodiff training
//! module and the non-autodiff probe module returned by `model.valid()`.

use burn::prelude::*;

use crate::error::{DataError, Result};

/// A minibatch of images with their class labels.
#[derive(Debug, Clone)]
pub struct ImageBatch {
    /// Normalized images, `[batch, channels, height, width]`.
    pub images: Tensor<4>,
    /// Class indices, `[batch]`.
    pub targets: Tensor<1, Int>,
}

impl ImageBatch {
    /// Builds a batch from normalized pixels (row-major `[batch, channels, height, width]`) and
    /// class indices.
    ///
    /// # Errors
    /// [`DataError::ZeroSize`] for an empty shape and [`DataError::LengthMismatch`] when the
    /// buffers do not hold `batch·channels·height·width` pixels and `batch` labels.
    pub fn from_host(
        pixels: Vec<f32>,
        shape: [usize; 4],
        targets: &[u8],
        device: &Device,
    ) -> Result<Self> {
        if shape.contains(&0) {
            return Err(DataError::ZeroSize {
                what: "image batch shape",
            });
        }
        let expected = shape.iter().product::<usize>();
        if pixels.len() != expected {
            return Err(DataError::LengthMismatch {
                what: "image pixels",
                expected,
                actual: pixels.len(),
            });
        }
        if targets.len() != shape[0] {
            return Err(DataError::LengthMismatch {
                what: "image targets",
                expected: shape[0],
                actual: targets.len(),
            });
        }
        let targets: Vec<i64> = targets.iter().map(|&t| i64::from(t)).collect();
        Ok(Self {
            images: Tensor::from_data(TensorData::new(pixels, shape), device),
            targets: Tensor::from_data(TensorData::new(targets, [shape[0]]), device),
        })
    }

    /// Number of examples in the batch.
    pub fn len(&self) -> usize {
        self.targets.dims()[0]
    }

    /// Whether the batch holds no example (never, for batches built by this crate).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same batch on another device.
    pub fn to_device(self, device: &Device) -> Self {
        Self {
            images: self.images.to_device(device),
            targets: self.targets.to_device(device),
        }
    }
}

/// A minibatch of character sequences for next-character prediction.
///
/// `targets[b][i]` is the character that follows `inputs[b][i]` in the corpus.
#[derive(Debug, Clone)]
pub struct TextBatch {
    /// Token ids, `[batch, seq_len]`.
    pub inputs: Tensor<2, Int>,
    /// Next-token ids, `[batch, seq_len]`.
    pub targets: Tensor<2, Int>,
}

impl TextBatch {
    /// Builds a batch from row-major token ids, `batch·seq_len` of each.
    ///
    /// # Errors
    /// [`DataError::ZeroSize`] for an empty shape, [`DataError::LengthMismatch`] when a buffer
    /// does not hold `batch·seq_len` ids, [`DataError::TokenOutOfRange`] for an id
    /// `>= vocab_size`.
    pub fn from_host(
        inputs: &[u32],
        targets: &[u32],
        shape: [usize; 2],
        vocab_size: usize,
        device: &Device,
    ) -> Result<Self> {
        if shape.contains(&0) {
            return Err(DataError::ZeroSize {
                what: "text batch shape",
            });
        }
        let expected = shape[0] * shape[1];
        for (what, ids) in [("text inputs", inputs), ("text targets", targets)] {
            if ids.len() != expected {
                return Err(DataError::LengthMismatch {
                    what,
                    expected,
                    actual: ids.len(),
                });
            }
            if let Some(&token) = ids.iter().find(|&&t| t as usize >= vocab_size) {
                return Err(DataError::TokenOutOfRange { token, vocab_size });
            }
        }
        let to_tensor = |ids: &[u32]| {
            let ids: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
            Tensor::<2, Int>::from_data(TensorData::new(ids, shape), device)
        };
        Ok(Self {
            inputs: to_tensor(inputs),
            targets: to_tensor(targets),
        })
    }

    /// Number of sequences in the batch.
    pub fn len(&self) -> usize {
        self.inputs.dims()[0]
    }

    /// Whether the batch holds no sequence (never, for batches built by this crate).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same batch on another device.
    pub fn to_device(self, device: &Device) -> Self {
        Self {
            inputs: self.inputs.to_device(device),
            targets: self.targets.to_device(device),
        }
    }
}
