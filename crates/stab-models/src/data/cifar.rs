//! CIFAR-10 in its official binary format (`cifar-10-batches-bin/`).
//!
//! Each file is a sequence of 3073-byte records: one label byte (0–9) followed by the 32×32
//! image as 1024 red, 1024 green and 1024 blue bytes (channel-major, row-major inside a channel).
//! The training split is `data_batch_1.bin` … `data_batch_5.bin` (10,000 records each), the test
//! split `test_batch.bin`.

use std::fs;
use std::path::{Path, PathBuf};

use super::image_set::{ImageSet, ImageShape};
use super::vision::{Normalization, VisionDataset, VisionSource};
use crate::error::{DataError, Result, io_err};

/// Name of the directory the official archive unpacks to.
pub const CIFAR10_DIR_NAME: &str = "cifar-10-batches-bin";
/// The five training files, in order.
pub const CIFAR10_TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test file.
pub const CIFAR10_TEST_FILE: &str = "test_batch.bin";
/// Bytes per record: 1 label + 3 × 32 × 32 pixels.
pub const CIFAR10_RECORD_LEN: usize = 1 + 3 * 32 * 32;
/// Number of classes.
pub const CIFAR10_NUM_CLASSES: usize = 10;
/// Class names, by label.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
/// Standard per-channel mean of the CIFAR-10 training set (pixels scaled to `[0, 1]`).
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// Standard per-channel standard deviation of the CIFAR-10 training set.
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// Whether `dir` looks like an unpacked `cifar-10-batches-bin` (all six files present).
pub fn is_cifar10_dir(dir: &Path) -> bool {
    CIFAR10_TRAIN_FILES
        .iter()
        .chain(std::iter::once(&CIFAR10_TEST_FILE))
        .all(|f| dir.join(f).is_file())
}

/// Reads one CIFAR-10 batch file.
///
/// # Errors
/// [`DataError::Io`] if it cannot be read, [`DataError::CifarEmpty`] for an empty file,
/// [`DataError::CifarTruncated`] (with the offset of the incomplete record) when its length is
/// not a multiple of [`CIFAR10_RECORD_LEN`], [`DataError::BadLabel`] (with the label's offset)
/// for a label ≥ 10.
pub fn read_cifar10_batch(path: &Path) -> Result<ImageSet> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    parse_cifar10_batch(path, &bytes)
}

fn parse_cifar10_batch(path: &Path, bytes: &[u8]) -> Result<ImageSet> {
    if bytes.is_empty() {
        return Err(DataError::CifarEmpty {
            path: path.to_path_buf(),
        });
    }
    let remainder = bytes.len() % CIFAR10_RECORD_LEN;
    if remainder != 0 {
        return Err(DataError::CifarTruncated {
            path: path.to_path_buf(),
            offset: (bytes.len() - remainder) as u64,
            file_len: bytes.len() as u64,
            record_len: CIFAR10_RECORD_LEN,
        });
    }
    let count = bytes.len() / CIFAR10_RECORD_LEN;
    let mut labels = Vec::with_capacity(count);
    let mut pixels = Vec::with_capacity(count * (CIFAR10_RECORD_LEN - 1));
    for (i, record) in bytes.chunks_exact(CIFAR10_RECORD_LEN).enumerate() {
        let label = record[0];
        if usize::from(label) >= CIFAR10_NUM_CLASSES {
            return Err(DataError::BadLabel {
                path: path.to_path_buf(),
                offset: (i * CIFAR10_RECORD_LEN) as u64,
                label,
                num_classes: CIFAR10_NUM_CLASSES,
            });
        }
        labels.push(label);
        pixels.extend_from_slice(&record[1..]);
    }
    ImageSet::new(ImageShape::CIFAR10, pixels, labels)
}

/// Writes images in the CIFAR-10 batch format (the inverse of [`read_cifar10_batch`]).
///
/// # Errors
/// [`DataError::LengthMismatch`] if `set` is not 3 × 32 × 32, [`DataError::BadLabel`] for a
/// label ≥ 10, [`DataError::Io`] if the file cannot be written.
pub fn write_cifar10_batch(path: &Path, set: &ImageSet) -> Result<()> {
    if set.shape() != ImageShape::CIFAR10 {
        return Err(DataError::LengthMismatch {
            what: "values per CIFAR-10 image",
            expected: ImageShape::CIFAR10.numel(),
            actual: set.shape().numel(),
        });
    }
    let mut bytes = Vec::with_capacity(set.len() * CIFAR10_RECORD_LEN);
    for (i, &label) in set.labels().iter().enumerate() {
        if usize::from(label) >= CIFAR10_NUM_CLASSES {
            return Err(DataError::BadLabel {
                path: path.to_path_buf(),
                offset: (i * CIFAR10_RECORD_LEN) as u64,
                label,
                num_classes: CIFAR10_NUM_CLASSES,
            });
        }
        bytes.push(label);
        bytes.extend_from_slice(set.image(i).unwrap_or_default());
    }
    fs::write(path, bytes).map_err(io_err(path))
}

/// Loads CIFAR-10 from an unpacked `cifar-10-batches-bin` directory: 50,000 training and
/// 10,000 test images, normalized with [`CIFAR10_MEAN`] / [`CIFAR10_STD`].
///
/// # Errors
/// Any error of [`read_cifar10_batch`], naming the file at fault.
pub fn load_cifar10(dir: &Path) -> Result<VisionDataset> {
    let mut files = CIFAR10_TRAIN_FILES.iter().map(|f| dir.join(f));
    let first: PathBuf = files.next().unwrap_or_default();
    let mut train = read_cifar10_batch(&first)?;
    for file in files {
        train.extend(read_cifar10_batch(&file)?)?;
    }
    let test = read_cifar10_batch(&dir.join(CIFAR10_TEST_FILE))?;
    VisionDataset::new(
        VisionSource::Cifar10,
        dir.to_path_buf(),
        train,
        test,
        CIFAR10_NUM_CLASSES,
        Normalization::new(CIFAR10_MEAN.to_vec(), CIFAR10_STD.to_vec()),
    )
}
