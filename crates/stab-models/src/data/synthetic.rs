//! Seeded generator of small CIFAR-10-format data sets, for tests and for machines without the
//! real files.
//!
//! Images are class-dependent: each class has a fixed colour per channel, to which uniform noise
//! is added, so a model can learn something from a handful of them.

use std::fs;
use std::path::{Path, PathBuf};

use super::cifar::{
    CIFAR10_DIR_NAME, CIFAR10_NUM_CLASSES, CIFAR10_TEST_FILE, CIFAR10_TRAIN_FILES,
    write_cifar10_batch,
};
use super::image_set::{ImageSet, ImageShape};
use super::rng::{SplitMix64, mix_seed};
use crate::error::{Result, io_err};

/// `count` random CIFAR-shaped images with balanced-random labels, fixed by `seed`.
pub fn synthetic_cifar10_images(count: usize, seed: u64) -> ImageSet {
    let shape = ImageShape::CIFAR10;
    let plane = shape.height * shape.width;
    let mut rng = SplitMix64::new(seed);
    let mut pixels = Vec::with_capacity(count * shape.numel());
    let mut labels = Vec::with_capacity(count);
    for _ in 0..count {
        let label = rng.below(CIFAR10_NUM_CLASSES as u64) as u8;
        labels.push(label);
        for c in 0..shape.channels {
            // A class colour in 40..=215, noise of ±40 around it.
            let base = 40 + (mix_seed(u64::from(label), c as u64) % 176) as i32;
            pixels.extend((0..plane).map(|_| {
                let noise = rng.below(81) as i32 - 40;
                (base + noise).clamp(0, 255) as u8
            }));
        }
    }
    // Both lengths are consistent by construction.
    ImageSet::new(shape, pixels, labels).unwrap_or_else(|_| unreachable!())
}

/// Writes a complete `cifar-10-batches-bin` directory under `root`: five training files of
/// `per_train_file` images each and a test file of `test_len` images, all fixed by `seed`.
/// Returns the path of the `cifar-10-batches-bin` directory.
///
/// # Errors
/// [`DataError::Io`](crate::DataError::Io) if the directory or a file cannot be written.
pub fn write_synthetic_cifar10(
    root: &Path,
    seed: u64,
    per_train_file: usize,
    test_len: usize,
) -> Result<PathBuf> {
    let dir = root.join(CIFAR10_DIR_NAME);
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    for (i, file) in CIFAR10_TRAIN_FILES.iter().enumerate() {
        let set = synthetic_cifar10_images(per_train_file, mix_seed(seed, i as u64));
        write_cifar10_batch(&dir.join(file), &set)?;
    }
    let test = synthetic_cifar10_images(test_len, mix_seed(seed, u64::MAX));
    write_cifar10_batch(&dir.join(CIFAR10_TEST_FILE), &test)?;
    Ok(dir)
}
