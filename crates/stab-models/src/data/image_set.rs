//! Raw labelled images in host memory, as `u8` pixels: a quarter of the memory of `f32`, and
//! exactly what the files hold. Normalization happens when a batch is built.

use crate::error::{DataError, Result};

/// Channels, height and width of every image of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageShape {
    /// Colour channels (3 for CIFAR-10, 1 for Fashion-MNIST).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl ImageShape {
    /// CIFAR-10: 3 × 32 × 32.
    pub const CIFAR10: Self = Self {
        channels: 3,
        height: 32,
        width: 32,
    };
    /// Fashion-MNIST (and MNIST): 1 × 28 × 28.
    pub const FASHION_MNIST: Self = Self {
        channels: 1,
        height: 28,
        width: 28,
    };

    /// Values per image, `channels · height · width`.
    pub fn numel(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// Images (channel-major `[n, c, h, w]`, `u8`) with one class label each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSet {
    shape: ImageShape,
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

impl ImageSet {
    /// Wraps pixels and labels after checking that they agree with `shape`.
    ///
    /// # Errors
    /// [`DataError::ZeroSize`] for an empty shape, [`DataError::LengthMismatch`] when
    /// `pixels.len() != labels.len() · shape.numel()`.
    pub fn new(shape: ImageShape, pixels: Vec<u8>, labels: Vec<u8>) -> Result<Self> {
        if shape.numel() == 0 {
            return Err(DataError::ZeroSize {
                what: "image shape",
            });
        }
        let expected = labels.len() * shape.numel();
        if pixels.len() != expected {
            return Err(DataError::LengthMismatch {
                what: "image set pixels",
                expected,
                actual: pixels.len(),
            });
        }
        Ok(Self {
            shape,
            pixels,
            labels,
        })
    }

    /// The shape of every image.
    pub fn shape(&self) -> ImageShape {
        self.shape
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// All labels, in order.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// All pixels, image after image.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// The pixels of image `index`, or `None` past the end.
    pub fn image(&self, index: usize) -> Option<&[u8]> {
        let n = self.shape.numel();
        self.pixels.get(index * n..(index + 1) * n)
    }

    /// Appends another set of the same shape.
    ///
    /// # Errors
    /// [`DataError::LengthMismatch`] when the shapes differ (reported as values per image).
    pub fn extend(&mut self, other: ImageSet) -> Result<()> {
        if other.shape != self.shape {
            return Err(DataError::LengthMismatch {
                what: "values per image when concatenating image sets",
                expected: self.shape.numel(),
                actual: other.shape.numel(),
            });
        }
        self.pixels.extend_from_slice(&other.pixels);
        self.labels.extend_from_slice(&other.labels);
        Ok(())
    }

    /// Keeps only the first `len` images (no-op when `len >= self.len()`).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.labels.truncate(len);
            self.pixels.truncate(len * self.shape.numel());
        }
    }
}
