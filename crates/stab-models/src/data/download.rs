//! Fetching and unpacking the official CIFAR-10 archive, with checksum verification.
//!
//! Verification and extraction are plain functions, always compiled and tested offline on small
//! archives; only the HTTP transfer needs the `download` feature (and a network).

use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use md5::{Digest, Md5};

use super::cifar::{CIFAR10_DIR_NAME, is_cifar10_dir};
use crate::error::{DataError, Result, io_err};

/// The official CIFAR-10 binary archive.
pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// Its published MD5 digest.
pub const CIFAR10_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// File name of the archive.
pub const CIFAR10_ARCHIVE_NAME: &str = "cifar-10-binary.tar.gz";

/// Lower-case hex MD5 digest of a file, read in 64 KiB chunks.
///
/// # Errors
/// [`DataError::Io`] if the file cannot be read.
pub fn md5_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// Checks a file against a published MD5 digest (hex, any case).
///
/// # Errors
/// [`DataError::ChecksumMismatch`] when the digests differ, [`DataError::Io`] if unreadable.
pub fn verify_md5(path: &Path, expected: &str) -> Result<()> {
    let actual = md5_file(path)?;
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(DataError::ChecksumMismatch {
            path: path.to_path_buf(),
            expected: expected.to_ascii_lowercase(),
            actual,
        })
    }
}

/// Unpacks a `.tar.gz` archive into `dest` (created if missing).
///
/// # Errors
/// [`DataError::UnsafeArchiveEntry`] for an entry with an absolute path or a `..` component
/// (nothing outside `dest` is ever written), [`DataError::Io`] for a corrupt archive or a write
/// failure.
pub fn extract_tar_gz(archive: &Path, dest: &Path) -> Result<()> {
    fs::create_dir_all(dest).map_err(io_err(dest))?;
    let file = File::open(archive).map_err(io_err(archive))?;
    let mut tar = tar::Archive::new(GzDecoder::new(BufReader::new(file)));
    for entry in tar.entries().map_err(io_err(archive))? {
        let mut entry = entry.map_err(io_err(archive))?;
        let path: PathBuf = entry.path().map_err(io_err(archive))?.into_owned();
        let safe = path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !safe {
            return Err(DataError::UnsafeArchiveEntry {
                archive: archive.to_path_buf(),
                entry: path,
            });
        }
        entry.unpack_in(dest).map_err(io_err(dest.join(&path)))?;
    }
    Ok(())
}

/// Verifies an already downloaded CIFAR-10 archive against [`CIFAR10_MD5`] and unpacks it into
/// `data_dir`. Returns the `cifar-10-batches-bin` directory.
///
/// # Errors
/// Those of [`verify_md5`] and [`extract_tar_gz`], and [`DataError::NoVisionData`] if the
/// archive did not contain the six CIFAR-10 files.
pub fn install_cifar10_archive(archive: &Path, data_dir: &Path) -> Result<PathBuf> {
    install_archive(archive, CIFAR10_MD5, data_dir)
}

/// [`install_cifar10_archive`] with the expected digest as a parameter (used by tests).
///
/// # Errors
/// As [`install_cifar10_archive`].
pub fn install_archive(archive: &Path, md5: &str, data_dir: &Path) -> Result<PathBuf> {
    verify_md5(archive, md5)?;
    extract_tar_gz(archive, data_dir)?;
    let dir = data_dir.join(CIFAR10_DIR_NAME);
    if !is_cifar10_dir(&dir) {
        return Err(DataError::NoVisionData {
            looked_for: format!(
                "the six CIFAR-10 files in {} after unpacking {}",
                dir.display(),
                archive.display()
            ),
        });
    }
    Ok(dir)
}

/// Downloads `url` to `dest`, writing to `dest.part` first and renaming when complete, so an
/// interrupted transfer never leaves a file that looks finished.
///
/// # Errors
/// [`DataError::NetworkUnreachable`] when no connection can be made (DNS, refused, no route),
/// [`DataError::Download`] for an HTTP error status or a broken transfer, [`DataError::Io`] for
/// local write failures.
#[cfg(feature = "download")]
pub fn download_file(url: &str, dest: &Path) -> Result<()> {
    use std::io::Write;
    let response = http_get(url, None)?;
    let mut part = dest.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let mut out = File::create(&part).map_err(io_err(&part))?;
    std::io::copy(&mut response.into_reader(), &mut out).map_err(|e| DataError::Download {
        url: url.to_string(),
        message: e.to_string(),
    })?;
    out.flush().map_err(io_err(&part))?;
    fs::rename(&part, dest).map_err(io_err(dest))
}

/// Fetches the first `len` bytes of `url` (an HTTP range request), to check that the server is
/// there and serves what is expected without transferring the whole file.
///
/// # Errors
/// As [`download_file`].
#[cfg(feature = "download")]
pub fn fetch_prefix(url: &str, len: usize) -> Result<Vec<u8>> {
    let response = http_get(url, Some(len))?;
    let mut buf = Vec::with_capacity(len);
    response
        .into_reader()
        .take(len as u64)
        .read_to_end(&mut buf)
        .map_err(|e| DataError::Download {
            url: url.to_string(),
            message: e.to_string(),
        })?;
    Ok(buf)
}

#[cfg(feature = "download")]
fn http_get(url: &str, prefix: Option<usize>) -> Result<ureq::Response> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(15))
        .timeout_read(std::time::Duration::from_secs(60))
        .build();
    let mut request = agent.get(url);
    if let Some(len) = prefix {
        request = request.set("Range", &format!("bytes=0-{}", len.saturating_sub(1)));
    }
    request.call().map_err(|e| match e {
        ureq::Error::Status(code, _) => DataError::Download {
            url: url.to_string(),
            message: format!("HTTP status {code}"),
        },
        ureq::Error::Transport(t) => {
            let unreachable = matches!(
                t.kind(),
                ureq::ErrorKind::Dns | ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Io
            );
            let message = t.to_string();
            if unreachable {
                DataError::NetworkUnreachable {
                    url: url.to_string(),
                    message,
                }
            } else {
                DataError::Download {
                    url: url.to_string(),
                    message,
                }
            }
        }
    })
}

/// Makes sure CIFAR-10 is unpacked under `data_dir` (the `--data-dir` convention): returns
/// `data_dir/cifar-10-batches-bin` at once if it is complete, otherwise downloads
/// [`CIFAR10_URL`] to `data_dir/cifar-10-binary.tar.gz` (unless a verified copy is already
/// there), checks [`CIFAR10_MD5`] and unpacks it.
///
/// # Errors
/// Those of [`download_file`] and [`install_cifar10_archive`].
#[cfg(feature = "download")]
pub fn download_cifar10(data_dir: &Path) -> Result<PathBuf> {
    let dir = data_dir.join(CIFAR10_DIR_NAME);
    if is_cifar10_dir(&dir) {
        return Ok(dir);
    }
    fs::create_dir_all(data_dir).map_err(io_err(data_dir))?;
    let archive = data_dir.join(CIFAR10_ARCHIVE_NAME);
    if verify_md5(&archive, CIFAR10_MD5).is_err() {
        download_file(CIFAR10_URL, &archive)?;
    }
    install_cifar10_archive(&archive, data_dir)
}
