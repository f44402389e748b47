//! IDX (Fashion-MNIST) loader: header checks, gzip, count agreement, and the real files.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use stab_models::DataError;
use stab_models::data::idx::{
    DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_TEST_IMAGES, FASHION_MNIST_TEST_LABELS,
    FASHION_MNIST_TRAIN_IMAGES, FASHION_MNIST_TRAIN_LABELS, is_fashion_mnist_dir,
    load_fashion_mnist, read_idx_images, read_idx_labels, read_idx_split,
};
use stab_models::data::{ImageShape, Split, VisionDataset, VisionSource};

fn idx_bytes(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

fn write_gz(path: &Path, bytes: &[u8]) {
    let mut enc = GzEncoder::new(fs::File::create(path).unwrap(), Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap();
}

/// A miniature Fashion-MNIST: `n` train and `n` test images of 28 × 28.
fn write_fake_fashion(dir: &Path, n: u32) {
    let pixels: Vec<u8> = (0..n * 784).map(|i| (i % 251) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    for (img, lab) in [
        (FASHION_MNIST_TRAIN_IMAGES, FASHION_MNIST_TRAIN_LABELS),
        (FASHION_MNIST_TEST_IMAGES, FASHION_MNIST_TEST_LABELS),
    ] {
        write_gz(&dir.join(img), &idx_bytes(0x803, &[n, 28, 28], &pixels));
        write_gz(&dir.join(lab), &idx_bytes(0x801, &[n], &labels));
    }
}

#[test]
fn gzip_and_plain_idx_files_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = idx_bytes(0x803, &[2, 3, 4], &(0..24).collect::<Vec<u8>>());
    fs::write(dir.path().join("plain"), &bytes).unwrap();
    write_gz(&dir.path().join("packed.gz"), &bytes);
    let plain = read_idx_images(&dir.path().join("plain")).unwrap();
    let packed = read_idx_images(&dir.path().join("packed.gz")).unwrap();
    assert_eq!(plain, packed);
    assert_eq!(
        plain.0,
        ImageShape {
            channels: 1,
            height: 3,
            width: 4
        }
    );
}

#[test]
fn wrong_magic_number_is_reported_with_both_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labels-as-images");
    fs::write(&path, idx_bytes(0x801, &[2], &[1, 2])).unwrap();
    match read_idx_images(&path).unwrap_err() {
        DataError::IdxMagic {
            expected, actual, ..
        } => assert_eq!((expected, actual), (0x803, 0x801)),
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn short_payload_is_reported_with_expected_and_actual_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.gz");
    write_gz(&path, &idx_bytes(0x803, &[2, 28, 28], &[0; 1000]));
    match read_idx_images(&path).unwrap_err() {
        DataError::IdxLength {
            offset,
            expected,
            actual,
            ..
        } => {
            assert_eq!((offset, expected, actual), (16, 1568, 1000));
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn header_cut_short_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stub");
    fs::write(&path, [0, 0, 8, 3, 0, 0]).unwrap();
    assert!(matches!(
        read_idx_images(&path),
        Err(DataError::IdxLength { .. })
    ));
}

#[test]
fn label_out_of_range_is_reported_with_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labels");
    fs::write(&path, idx_bytes(0x801, &[3], &[1, 12, 3])).unwrap();
    match read_idx_labels(&path, 10).unwrap_err() {
        DataError::BadLabel { offset, label, .. } => assert_eq!((offset, label), (9, 12)),
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn image_and_label_counts_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (images, labels) = (dir.path().join("i"), dir.path().join("l"));
    fs::write(&images, idx_bytes(0x803, &[2, 2, 2], &[0; 8])).unwrap();
    fs::write(&labels, idx_bytes(0x801, &[3], &[0; 3])).unwrap();
    assert!(matches!(
        read_idx_split(&images, &labels, 10),
        Err(DataError::CountMismatch {
            image_count: 2,
            label_count: 3,
            ..
        })
    ));
}

#[test]
fn fashion_mnist_directory_loads_as_one_channel_28_by_28() {
    let dir = tempfile::tempdir().unwrap();
    write_fake_fashion(dir.path(), 5);
    assert!(is_fashion_mnist_dir(dir.path()));
    let data = VisionDataset::discover(Some(dir.path())).unwrap();
    assert_eq!(data.source(), VisionSource::FashionMnist);
    assert_eq!(data.shape(), ImageShape::FASHION_MNIST);
    assert_eq!(data.resnet_config(8).in_channels, 1);
    let batch = data.batch(Split::Train, &[0, 4], &common::cpu()).unwrap();
    assert_eq!(batch.images.dims(), [2, 1, 28, 28]);
    let first = batch.images.into_data().try_to_vec::<f32>().unwrap()[1];
    assert!((first - (1.0 / 255.0 - 0.2860) / 0.3530).abs() < 1e-5);
}

#[test]
fn real_fashion_mnist_from_the_debian_package_loads_when_installed() {
    let dir = Path::new(DEFAULT_FASHION_MNIST_DIR);
    if !is_fashion_mnist_dir(dir) {
        // CI installs the data and sets STAB_REQUIRE_DATA: there, a missing dataset is a failure,
        // never a silent pass.
        assert!(
            std::env::var_os("STAB_REQUIRE_DATA").is_none(),
            "Fashion-MNIST is not installed at {DEFAULT_FASHION_MNIST_DIR} but STAB_REQUIRE_DATA is set"
        );
        println!(
            "skipped: Fashion-MNIST not installed at {DEFAULT_FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)"
        );
        return;
    }
    let data = load_fashion_mnist(dir).unwrap();
    assert_eq!((data.train_len(), data.test_len()), (60_000, 10_000));
    let pixels = data.split(Split::Train).pixels();
    let mean = pixels.iter().map(|&p| f64::from(p)).sum::<f64>() / pixels.len() as f64 / 255.0;
    assert!((mean - 0.2860).abs() < 1e-3, "training mean {mean}");
    assert!(data.source_name().starts_with("fashion-mnist ("));
}

#[test]
fn a_data_dir_without_data_falls_back_to_the_debian_fashion_mnist() {
    let empty = tempfile::tempdir().unwrap();
    match VisionDataset::discover(Some(empty.path())) {
        Ok(data) => {
            assert_eq!(data.source(), VisionSource::FashionMnist);
            assert_eq!(data.location(), Path::new(DEFAULT_FASHION_MNIST_DIR));
        }
        Err(DataError::NoVisionData { looked_for }) => {
            assert!(!is_fashion_mnist_dir(Path::new(DEFAULT_FASHION_MNIST_DIR)));
            assert!(looked_for.contains("dataset-fashion-mnist"), "{looked_for}");
        }
        Err(other) => panic!("unexpected error {other:?}"),
    }
}
