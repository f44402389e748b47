//! Checksums and archive extraction (offline), and the network path when it is compiled in.

use std::fs;
use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use stab_models::DataError;
use stab_models::data::cifar::{CIFAR10_DIR_NAME, CIFAR10_TEST_FILE, CIFAR10_TRAIN_FILES};
use stab_models::data::download::{extract_tar_gz, install_archive, md5_file, verify_md5};
use stab_models::data::{VisionDataset, VisionSource, write_synthetic_cifar10};

/// Packs `root/cifar-10-batches-bin` into `archive` as the official archive lays it out.
fn pack(root: &Path, archive: &Path) {
    let gz = GzEncoder::new(fs::File::create(archive).unwrap(), Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.append_dir_all(CIFAR10_DIR_NAME, root.join(CIFAR10_DIR_NAME))
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap();
}

#[test]
fn md5_of_a_known_string_matches_rfc_1321() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("abc");
    fs::write(&path, "abc").unwrap();
    assert_eq!(md5_file(&path).unwrap(), "900150983cd24fb0d6963f7d28e17f72");
    assert!(verify_md5(&path, "900150983CD24FB0D6963F7D28E17F72").is_ok());
}

#[test]
fn a_verified_archive_unpacks_to_a_loadable_cifar10_directory() {
    let src = tempfile::tempdir().unwrap();
    write_synthetic_cifar10(src.path(), 1, 2, 3).unwrap();
    let archive = src.path().join("cifar.tar.gz");
    pack(src.path(), &archive);
    let md5 = md5_file(&archive).unwrap();

    let data_dir = tempfile::tempdir().unwrap();
    let dir = install_archive(&archive, &md5, data_dir.path()).unwrap();
    for file in CIFAR10_TRAIN_FILES.iter().chain([&CIFAR10_TEST_FILE]) {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    let data = VisionDataset::discover(Some(data_dir.path())).unwrap();
    assert_eq!(data.source(), VisionSource::Cifar10);
    assert_eq!(data.train_len(), 10);
}

#[test]
fn a_corrupted_archive_fails_the_checksum_before_anything_is_unpacked() {
    let src = tempfile::tempdir().unwrap();
    write_synthetic_cifar10(src.path(), 1, 1, 1).unwrap();
    let archive = src.path().join("cifar.tar.gz");
    pack(src.path(), &archive);
    let md5 = md5_file(&archive).unwrap();
    let mut bytes = fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&archive, bytes).unwrap();

    let data_dir = tempfile::tempdir().unwrap();
    let err = install_archive(&archive, &md5, data_dir.path()).unwrap_err();
    assert!(matches!(err, DataError::ChecksumMismatch { .. }), "{err:?}");
    assert!(!data_dir.path().join(CIFAR10_DIR_NAME).exists());
}

#[test]
fn an_archive_entry_escaping_the_destination_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("evil.tar.gz");
    let gz = GzEncoder::new(fs::File::create(&archive).unwrap(), Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    let name = b"../escaped.txt";
    header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    header.set_size(2);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append(&header, &b"hi"[..]).unwrap();
    tar.into_inner().unwrap().finish().unwrap();

    let dest = dir.path().join("out");
    let err = extract_tar_gz(&archive, &dest).unwrap_err();
    assert!(
        matches!(err, DataError::UnsafeArchiveEntry { .. }),
        "{err:?}"
    );
    assert!(!dir.path().join("escaped.txt").exists());
}

#[test]
fn garbage_is_not_an_archive() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("garbage.tar.gz");
    let mut f = fs::File::create(&archive).unwrap();
    f.write_all(b"definitely not gzip").unwrap();
    assert!(matches!(
        extract_tar_gz(&archive, &dir.path().join("out")),
        Err(DataError::Io { .. })
    ));
}

#[cfg(feature = "download")]
mod network {
    use stab_models::DataError;
    use stab_models::data::download::{CIFAR10_URL, download_cifar10, fetch_prefix};

    #[test]
    fn the_official_archive_url_serves_a_gzip_stream() {
        match fetch_prefix(CIFAR10_URL, 512) {
            Err(DataError::NetworkUnreachable { message, .. }) => {
                println!("skipped: network unreachable ({message})");
            }
            Err(other) => panic!("download failed: {other}"),
            Ok(bytes) => assert!(bytes.starts_with(&[0x1f, 0x8b]), "not gzip"),
        }
    }

    /// Transfers the whole 163 MB archive: run with `--features download -- --ignored`.
    #[test]
    #[ignore = "downloads 163 MB"]
    fn full_download_verifies_and_unpacks() {
        let dir = tempfile::tempdir().unwrap();
        match download_cifar10(dir.path()) {
            Err(DataError::NetworkUnreachable { message, .. }) => {
                println!("skipped: network unreachable ({message})");
            }
            other => {
                let cifar = other.unwrap();
                assert!(stab_models::data::cifar::is_cifar10_dir(&cifar));
            }
        }
    }
}
