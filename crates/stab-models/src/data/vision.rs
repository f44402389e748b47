//! [`VisionDataset`]: one type for CIFAR-10 and Fashion-MNIST, so experiments name a data
//! directory and get whichever is there, and every result can say which data it came from.

use std::fmt;
use std::path::{Path, PathBuf};

use burn::prelude::*;

use super::cifar::{CIFAR10_DIR_NAME, is_cifar10_dir, load_cifar10};
use super::idx::{DEFAULT_FASHION_MNIST_DIR, is_fashion_mnist_dir, load_fashion_mnist};
use super::image_set::{ImageSet, ImageShape};
use crate::batch::ImageBatch;
use crate::error::{DataError, Result};
use crate::resnet::ResNet18Config;

/// Which data set a [`VisionDataset`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionSource {
    /// CIFAR-10, official binary files — the paper's data.
    Cifar10,
    /// Fashion-MNIST, gzip IDX files — the stand-in on machines without CIFAR-10.
    FashionMnist,
}

impl VisionSource {
    /// Short stable name for result files: `"cifar-10"` or `"fashion-mnist"`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar-10",
            Self::FashionMnist => "fashion-mnist",
        }
    }
}

impl fmt::Display for VisionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The train or the test split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training images (minibatches are drawn from here).
    Train,
    /// Test images (the probe set is drawn from here).
    Test,
}

/// Per-channel normalization `x ↦ (x/255 − mean[c]) / std[c]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Normalization {
    /// Per-channel means and standard deviations (of pixels scaled to `[0, 1]`).
    pub fn new(mean: Vec<f32>, std: Vec<f32>) -> Self {
        Self { mean, std }
    }

    /// The per-channel means.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// The per-channel standard deviations.
    pub fn std(&self) -> &[f32] {
        &self.std
    }
}

/// A labelled image data set in host memory (train and test splits), with its provenance and
/// its normalization.
#[derive(Debug, Clone)]
pub struct VisionDataset {
    source: VisionSource,
    location: PathBuf,
    train: ImageSet,
    test: ImageSet,
    num_classes: usize,
    normalization: Normalization,
}

impl VisionDataset {
    /// Assembles a data set from its two splits.
    ///
    /// # Errors
    /// [`DataError::ZeroSize`] for an empty split or zero classes, [`DataError::LengthMismatch`]
    /// when the splits' image shapes differ or the normalization does not have one value per
    /// channel.
    pub fn new(
        source: VisionSource,
        location: PathBuf,
        train: ImageSet,
        test: ImageSet,
        num_classes: usize,
        normalization: Normalization,
    ) -> Result<Self> {
        if train.is_empty() {
            return Err(DataError::ZeroSize {
                what: "training split",
            });
        }
        if test.is_empty() {
            return Err(DataError::ZeroSize { what: "test split" });
        }
        if num_classes == 0 {
            return Err(DataError::ZeroSize {
                what: "number of classes",
            });
        }
        if train.shape() != test.shape() {
            return Err(DataError::LengthMismatch {
                what: "values per image, test split versus training split",
                expected: train.shape().numel(),
                actual: test.shape().numel(),
            });
        }
        let channels = train.shape().channels;
        for (what, values) in [
            ("normalization means", &normalization.mean),
            ("normalization standard deviations", &normalization.std),
        ] {
            if values.len() != channels {
                return Err(DataError::LengthMismatch {
                    what,
                    expected: channels,
                    actual: values.len(),
                });
            }
        }
        Ok(Self {
            source,
            location,
            train,
            test,
            num_classes,
            normalization,
        })
    }

    /// Applies the `--data-dir` convention and loads what it finds:
    ///
    /// 1. `data_dir/cifar-10-batches-bin/` with all six files → CIFAR-10 from there;
    /// 2. `data_dir` itself being such a directory → CIFAR-10;
    /// 3. `data_dir` holding the four Fashion-MNIST `*.gz` files → Fashion-MNIST from there;
    /// 4. otherwise (or with no `data_dir`) → Fashion-MNIST from
    ///    [`DEFAULT_FASHION_MNIST_DIR`] (Debian's `dataset-fashion-mnist`).
    ///
    /// # Errors
    /// [`DataError::NoVisionData`] when none of these exists, or the loader's error for the data
    /// set found (a corrupt file is reported, never skipped over).
    pub fn discover(data_dir: Option<&Path>) -> Result<Self> {
        if let Some(dir) = data_dir {
            let nested = dir.join(CIFAR10_DIR_NAME);
            if is_cifar10_dir(&nested) {
                return load_cifar10(&nested);
            }
            if is_cifar10_dir(dir) {
                return load_cifar10(dir);
            }
            if is_fashion_mnist_dir(dir) {
                return load_fashion_mnist(dir);
            }
        }
        let fallback = Path::new(DEFAULT_FASHION_MNIST_DIR);
        if is_fashion_mnist_dir(fallback) {
            return load_fashion_mnist(fallback);
        }
        let looked_for = match data_dir {
            Some(dir) => format!(
                "{}/{CIFAR10_DIR_NAME}, CIFAR-10 or Fashion-MNIST files in {}, and Fashion-MNIST \
                 in {DEFAULT_FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)",
                dir.display(),
                dir.display()
            ),
            None => format!(
                "Fashion-MNIST in {DEFAULT_FASHION_MNIST_DIR} (apt-get install \
                 dataset-fashion-mnist); pass a data directory holding {CIFAR10_DIR_NAME} for \
                 CIFAR-10"
            ),
        };
        Err(DataError::NoVisionData { looked_for })
    }

    /// Which data set this is.
    pub fn source(&self) -> VisionSource {
        self.source
    }

    /// The directory the files were read from.
    pub fn location(&self) -> &Path {
        &self.location
    }

    /// Provenance for result files, e.g. `"fashion-mnist (/usr/share/datasets/fashion-mnist)"`.
    pub fn source_name(&self) -> String {
        format!("{} ({})", self.source.name(), self.location.display())
    }

    /// Shape of every image.
    pub fn shape(&self) -> ImageShape {
        self.train.shape()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The normalization applied when batches are built.
    pub fn normalization(&self) -> &Normalization {
        &self.normalization
    }

    /// The images of one split.
    pub fn split(&self, split: Split) -> &ImageSet {
        match split {
            Split::Train => &self.train,
            Split::Test => &self.test,
        }
    }

    /// Number of training images (the `len` for a [`BatchPlan`](super::BatchPlan)).
    pub fn train_len(&self) -> usize {
        self.train.len()
    }

    /// Number of test images.
    pub fn test_len(&self) -> usize {
        self.test.len()
    }

    /// Keeps only the first `train` training and `test` test images (for quick runs).
    pub fn truncated(mut self, train: usize, test: usize) -> Self {
        self.train.truncate(train.max(1));
        self.test.truncate(test.max(1));
        self
    }

    /// A ResNet-18 config matching this data (input channels, classes) at `base_width`.
    pub fn resnet_config(&self, base_width: usize) -> ResNet18Config {
        ResNet18Config::new(self.num_classes)
            .with_in_channels(self.shape().channels)
            .with_base_width(base_width)
    }

    /// The normalized images `indices` of `split`, as a batch on `device`.
    ///
    /// # Errors
    /// [`DataError::ZeroSize`] for no index, [`DataError::IndexOutOfRange`] for an index past
    /// the split.
    pub fn batch(&self, split: Split, indices: &[usize], device: &Device) -> Result<ImageBatch> {
        if indices.is_empty() {
            return Err(DataError::ZeroSize { what: "batch size" });
        }
        let set = self.split(split);
        let shape = set.shape();
        let plane = shape.height * shape.width;
        let mut pixels = Vec::with_capacity(indices.len() * shape.numel());
        let mut targets = Vec::with_capacity(indices.len());
        for &index in indices {
            let image = set.image(index).ok_or(DataError::IndexOutOfRange {
                index,
                len: set.len(),
            })?;
            for (c, channel) in image.chunks_exact(plane).enumerate() {
                let scale = 1.0 / (255.0 * self.normalization.std[c]);
                let shift = self.normalization.mean[c] / self.normalization.std[c];
                pixels.extend(channel.iter().map(|&p| f32::from(p) * scale - shift));
            }
            targets.push(set.labels()[index]);
        }
        let dims = [indices.len(), shape.channels, shape.height, shape.width];
        ImageBatch::from_host(pixels, dims, &targets, device)
    }

    /// Training batch for `indices` (typically `plan.indices(step)`).
    ///
    /// # Errors
    /// As [`VisionDataset::batch`].
    pub fn train_batch(&self, indices: &[usize], device: &Device) -> Result<ImageBatch> {
        self.batch(Split::Train, indices, device)
    }

    /// The fixed probe set: the first `probe_size` test images (never used for training; the
    /// reference implementation likewise probes with the first test images).
    ///
    /// # Errors
    /// [`DataError::ZeroSize`] for `probe_size == 0`, [`DataError::BatchTooLarge`] when the test
    /// split is smaller than `probe_size`.
    pub fn probe_batch(&self, probe_size: usize, device: &Device) -> Result<ImageBatch> {
        if probe_size > self.test.len() {
            return Err(DataError::BatchTooLarge {
                batch_size: probe_size,
                len: self.test.len(),
            });
        }
        let indices: Vec<usize> = (0..probe_size).collect();
        self.batch(Split::Test, &indices, device)
    }
}
