//! IDX files (LeCun's MNIST format), plain or gzip-compressed, and Fashion-MNIST built on them.
//!
//! An IDX file is a big-endian header — magic `0x0000_08NN` (`08` = unsigned bytes, `NN` = rank),
//! then one `u32` per dimension — followed by the values. Fashion-MNIST ships four such files;
//! Debian's `dataset-fashion-mnist` package installs them gzip-compressed under
//! [`DEFAULT_FASHION_MNIST_DIR`].

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::image_set::{ImageSet, ImageShape};
use super::vision::{Normalization, VisionDataset, VisionSource};
use crate::error::{DataError, Result, io_err};

/// Where Debian's `dataset-fashion-mnist` package puts the files.
pub const DEFAULT_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// Training images (60,000 × 28 × 28).
pub const FASHION_MNIST_TRAIN_IMAGES: &str = "train-images-idx3-ubyte.gz";
/// Training labels.
pub const FASHION_MNIST_TRAIN_LABELS: &str = "train-labels-idx1-ubyte.gz";
/// Test images (10,000 × 28 × 28).
pub const FASHION_MNIST_TEST_IMAGES: &str = "t10k-images-idx3-ubyte.gz";
/// Test labels.
pub const FASHION_MNIST_TEST_LABELS: &str = "t10k-labels-idx1-ubyte.gz";
/// Number of classes.
pub const FASHION_MNIST_NUM_CLASSES: usize = 10;
/// Mean pixel of the Fashion-MNIST training set (scaled to `[0, 1]`).
pub const FASHION_MNIST_MEAN: f32 = 0.2860;
/// Standard deviation of the Fashion-MNIST training pixels.
pub const FASHION_MNIST_STD: f32 = 0.3530;

/// Magic number of an unsigned-byte IDX file of rank 3 (images).
pub const IDX_MAGIC_IMAGES: u32 = 0x0000_0803;
/// Magic number of an unsigned-byte IDX file of rank 1 (labels).
pub const IDX_MAGIC_LABELS: u32 = 0x0000_0801;

/// Whether `dir` holds the four Fashion-MNIST files.
pub fn is_fashion_mnist_dir(dir: &Path) -> bool {
    [
        FASHION_MNIST_TRAIN_IMAGES,
        FASHION_MNIST_TRAIN_LABELS,
        FASHION_MNIST_TEST_IMAGES,
        FASHION_MNIST_TEST_LABELS,
    ]
    .iter()
    .all(|f| dir.join(f).is_file())
}

/// Reads a file, decompressing it if it starts with the gzip magic bytes.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = fs::read(path).map_err(io_err(path))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(io_err(path))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses the header: checks the magic number and returns the dimensions and the payload.
fn parse_idx<'a>(path: &Path, bytes: &'a [u8], magic: u32) -> Result<(Vec<u32>, &'a [u8])> {
    let word = |i: usize| -> Option<u32> {
        bytes
            .get(4 * i..4 * i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let too_short = |offset: usize| DataError::IdxLength {
        path: path.to_path_buf(),
        offset: offset as u64,
        expected: 4,
        actual: bytes.len().saturating_sub(offset) as u64,
    };
    let actual = word(0).ok_or_else(|| too_short(0))?;
    if actual != magic {
        return Err(DataError::IdxMagic {
            path: path.to_path_buf(),
            expected: magic,
            actual,
        });
    }
    let rank = (magic & 0xff) as usize;
    let dims = (1..=rank)
        .map(|i| word(i).ok_or_else(|| too_short(4 * i)))
        .collect::<Result<Vec<u32>>>()?;
    let offset = 4 * (rank + 1);
    let payload = &bytes[offset..];
    let expected: u64 = dims.iter().map(|&d| u64::from(d)).product();
    if payload.len() as u64 != expected {
        return Err(DataError::IdxLength {
            path: path.to_path_buf(),
            offset: offset as u64,
            expected,
            actual: payload.len() as u64,
        });
    }
    Ok((dims, payload))
}

/// Reads an IDX image file (`[n, rows, cols]`, unsigned bytes), gzip-compressed or not.
/// Returns the image shape (one channel) and the pixels.
///
/// # Errors
/// [`DataError::Io`], [`DataError::IdxMagic`], [`DataError::IdxDims`] for a zero dimension,
/// [`DataError::IdxLength`] when the payload is shorter or longer than the header promises.
pub fn read_idx_images(path: &Path) -> Result<(ImageShape, Vec<u8>)> {
    let bytes = read_maybe_gz(path)?;
    let (dims, payload) = parse_idx(path, &bytes, IDX_MAGIC_IMAGES)?;
    if dims[1] == 0 || dims[2] == 0 {
        return Err(DataError::IdxDims {
            path: path.to_path_buf(),
            expected: "[n, rows > 0, cols > 0]".into(),
            actual: dims,
        });
    }
    let shape = ImageShape {
        channels: 1,
        height: dims[1] as usize,
        width: dims[2] as usize,
    };
    Ok((shape, payload.to_vec()))
}

/// Reads an IDX label file (`[n]`, unsigned bytes), checking every label is below
/// `num_classes`.
///
/// # Errors
/// [`DataError::Io`], [`DataError::IdxMagic`], [`DataError::IdxLength`], and
/// [`DataError::BadLabel`] with the label's byte offset in the decompressed file.
pub fn read_idx_labels(path: &Path, num_classes: usize) -> Result<Vec<u8>> {
    let bytes = read_maybe_gz(path)?;
    let (_, payload) = parse_idx(path, &bytes, IDX_MAGIC_LABELS)?;
    if let Some(i) = payload.iter().position(|&l| usize::from(l) >= num_classes) {
        return Err(DataError::BadLabel {
            path: path.to_path_buf(),
            offset: (8 + i) as u64,
            label: payload[i],
            num_classes,
        });
    }
    Ok(payload.to_vec())
}

/// Reads one split: an image file and its label file, which must agree in count.
///
/// # Errors
/// Those of [`read_idx_images`] and [`read_idx_labels`], and [`DataError::CountMismatch`].
pub fn read_idx_split(images: &Path, labels: &Path, num_classes: usize) -> Result<ImageSet> {
    let (shape, pixels) = read_idx_images(images)?;
    let label_values = read_idx_labels(labels, num_classes)?;
    let image_count = pixels.len() / shape.numel();
    if image_count != label_values.len() {
        return Err(DataError::CountMismatch {
            images: images.to_path_buf(),
            image_count,
            labels: labels.to_path_buf(),
            label_count: label_values.len(),
        });
    }
    ImageSet::new(shape, pixels, label_values)
}

/// Loads Fashion-MNIST from a directory holding its four gzip IDX files (60,000 training and
/// 10,000 test images, 1 × 28 × 28), normalized with [`FASHION_MNIST_MEAN`] /
/// [`FASHION_MNIST_STD`].
///
/// # Errors
/// Those of [`read_idx_split`], plus [`DataError::IdxDims`] if the images are not 28 × 28.
pub fn load_fashion_mnist(dir: &Path) -> Result<VisionDataset> {
    let split = |images: &str, labels: &str| -> Result<ImageSet> {
        let images: PathBuf = dir.join(images);
        let set = read_idx_split(&images, &dir.join(labels), FASHION_MNIST_NUM_CLASSES)?;
        if set.shape() != ImageShape::FASHION_MNIST {
            let s = set.shape();
            return Err(DataError::IdxDims {
                path: images,
                expected: "[n, 28, 28]".into(),
                actual: vec![set.len() as u32, s.height as u32, s.width as u32],
            });
        }
        Ok(set)
    };
    let train = split(FASHION_MNIST_TRAIN_IMAGES, FASHION_MNIST_TRAIN_LABELS)?;
    let test = split(FASHION_MNIST_TEST_IMAGES, FASHION_MNIST_TEST_LABELS)?;
    VisionDataset::new(
        VisionSource::FashionMnist,
        dir.to_path_buf(),
        train,
        test,
        FASHION_MNIST_NUM_CLASSES,
        Normalization::new(vec![FASHION_MNIST_MEAN], vec![FASHION_MNIST_STD]),
    )
}
