//! CIFAR-10 binary format: round trip, validation errors with file and offset, discovery.

mod common;

use std::fs;

use common::{cpu, shared_data_dir};
use stab_models::DataError;
use stab_models::data::cifar::{
    CIFAR10_DIR_NAME, CIFAR10_MEAN, CIFAR10_RECORD_LEN, CIFAR10_STD, CIFAR10_TEST_FILE,
    is_cifar10_dir, load_cifar10, read_cifar10_batch, write_cifar10_batch,
};
use stab_models::data::{
    ImageShape, Split, VisionDataset, VisionSource, synthetic_cifar10_images,
    write_synthetic_cifar10,
};

#[test]
fn written_batch_file_reads_back_identically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.bin");
    let set = synthetic_cifar10_images(7, 42);
    write_cifar10_batch(&path, &set).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        7 * CIFAR10_RECORD_LEN as u64
    );
    assert_eq!(read_cifar10_batch(&path).unwrap(), set);
}

#[test]
fn generator_is_fixed_by_its_seed() {
    assert_eq!(
        synthetic_cifar10_images(5, 9),
        synthetic_cifar10_images(5, 9)
    );
    assert_ne!(
        synthetic_cifar10_images(5, 9),
        synthetic_cifar10_images(5, 10)
    );
}

#[test]
fn truncated_file_is_reported_with_its_name_and_the_offset_of_the_broken_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data_batch_1.bin");
    write_cifar10_batch(&path, &synthetic_cifar10_images(3, 1)).unwrap();
    let mut bytes = fs::read(&path).unwrap();
    bytes.truncate(2 * CIFAR10_RECORD_LEN + 100);
    fs::write(&path, bytes).unwrap();
    let err = read_cifar10_batch(&path).unwrap_err();
    match &err {
        DataError::CifarTruncated {
            path: p, offset, ..
        } => {
            assert_eq!(p, &path);
            assert_eq!(*offset, 2 * CIFAR10_RECORD_LEN as u64);
        }
        other => panic!("unexpected error {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("data_batch_1.bin") && message.contains("6146"),
        "{message}"
    );
}

#[test]
fn label_above_nine_is_reported_with_its_byte_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test_batch.bin");
    write_cifar10_batch(&path, &synthetic_cifar10_images(3, 1)).unwrap();
    let mut bytes = fs::read(&path).unwrap();
    bytes[CIFAR10_RECORD_LEN] = 10;
    fs::write(&path, bytes).unwrap();
    match read_cifar10_batch(&path).unwrap_err() {
        DataError::BadLabel { offset, label, .. } => {
            assert_eq!((offset, label), (CIFAR10_RECORD_LEN as u64, 10));
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn empty_and_missing_files_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.bin");
    fs::write(&empty, b"").unwrap();
    assert!(matches!(
        read_cifar10_batch(&empty),
        Err(DataError::CifarEmpty { .. })
    ));
    let missing = dir.path().join("missing.bin");
    assert!(matches!(
        read_cifar10_batch(&missing),
        Err(DataError::Io { .. })
    ));
}

#[test]
fn discover_prefers_cifar10_under_the_data_dir() {
    let root = tempfile::tempdir().unwrap();
    let dir = write_synthetic_cifar10(root.path(), 3, 4, 6).unwrap();
    assert!(is_cifar10_dir(&dir));
    let data = VisionDataset::discover(Some(root.path())).unwrap();
    assert_eq!(data.source(), VisionSource::Cifar10);
    assert_eq!((data.train_len(), data.test_len()), (20, 6));
    assert_eq!(data.shape(), ImageShape::CIFAR10);
    assert!(
        data.source_name().starts_with("cifar-10 ("),
        "{}",
        data.source_name()
    );
    assert_eq!(data.resnet_config(8).in_channels, 3);
}

#[test]
fn a_corrupt_file_in_the_data_dir_is_reported_not_skipped() {
    let root = tempfile::tempdir().unwrap();
    let dir = write_synthetic_cifar10(root.path(), 3, 2, 2).unwrap();
    fs::write(dir.join(CIFAR10_TEST_FILE), [0u8; 10]).unwrap();
    let err = VisionDataset::discover(Some(root.path())).unwrap_err();
    assert!(matches!(err, DataError::CifarTruncated { .. }), "{err:?}");
}

#[test]
fn batches_are_normalized_with_the_cifar10_channel_statistics() {
    let root = tempfile::tempdir().unwrap();
    let dir = write_synthetic_cifar10(root.path(), 5, 2, 3).unwrap();
    let data = load_cifar10(&dir).unwrap();
    let batch = data.batch(Split::Test, &[2, 0], &cpu()).unwrap();
    assert_eq!(batch.images.dims(), [2, 3, 32, 32]);
    let values = batch.images.into_data().try_to_vec::<f32>().unwrap();
    let raw = data.split(Split::Test).image(2).unwrap();
    for c in 0..3 {
        let i = c * 1024 + 17;
        let expected = (f32::from(raw[i]) / 255.0 - CIFAR10_MEAN[c]) / CIFAR10_STD[c];
        assert!((values[i] - expected).abs() < 1e-5);
    }
    let targets = batch.targets.into_data().iter::<i64>().collect::<Vec<_>>();
    let labels = data.split(Split::Test).labels();
    assert_eq!(targets, vec![i64::from(labels[2]), i64::from(labels[0])]);
}

#[test]
fn out_of_range_index_and_oversized_probe_are_errors() {
    let root = tempfile::tempdir().unwrap();
    let dir = write_synthetic_cifar10(root.path(), 5, 2, 3).unwrap();
    let data = load_cifar10(&dir).unwrap();
    assert!(matches!(
        data.train_batch(&[10], &cpu()),
        Err(DataError::IndexOutOfRange { index: 10, len: 10 })
    ));
    assert!(matches!(
        data.probe_batch(4, &cpu()),
        Err(DataError::BatchTooLarge { .. })
    ));
    assert_eq!(data.probe_batch(3, &cpu()).unwrap().len(), 3);
}

#[test]
fn real_cifar10_in_shared_data_loads_when_present() {
    let dir = shared_data_dir().join(CIFAR10_DIR_NAME);
    if !is_cifar10_dir(&dir) {
        println!("skipped: no CIFAR-10 at {}", dir.display());
        return;
    }
    let data = load_cifar10(&dir).unwrap();
    assert_eq!((data.train_len(), data.test_len()), (50_000, 10_000));
}
