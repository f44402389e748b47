//! The checkpoint directory on disk: durable, atomic writes and verified reads.
//!
//! One checkpoint is one directory `step-<step, 12 digits>` holding its files and a
//! `manifest.json` that names every file with its length and CRC-32 and carries the format
//! version. A write builds the directory under a temporary name (`.tmp-…`), fsyncs every file,
//! writes and fsyncs the manifest last, fsyncs the directory, renames it into place and fsyncs the
//! parent: a checkpoint directory exists under its final name only once all of it is durable, and
//! a process killed mid-write leaves only a temporary directory, which readers ignore and the
//! next write removes. Older checkpoints are removed only after the new one is durable.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::CheckpointError;

/// Format version of the checkpoint directory (manifest and files). A checkpoint of another
/// version is refused with [`CheckpointError::Version`].
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;

/// What the manifest says the directory holds.
const FORMAT_NAME: &str = "stab-checkpoint";
const MANIFEST: &str = "manifest.json";
const PREFIX: &str = "step-";
const TEMPORARY: &str = ".tmp-";

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    version: u32,
    step: u64,
    files: Vec<FileEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileEntry {
    name: String,
    bytes: u64,
    crc32: u32,
}

/// The verified contents of one checkpoint directory.
#[derive(Debug)]
pub(crate) struct Contents {
    pub path: PathBuf,
    pub step: u64,
    files: Vec<(String, Vec<u8>)>,
}

impl Contents {
    /// The bytes of file `name`.
    pub fn file(&self, name: &str) -> Result<&[u8], CheckpointError> {
        self.files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, bytes)| bytes.as_slice())
            .ok_or_else(|| CheckpointError::MissingFile {
                path: self.path.join(name),
            })
    }

    /// Total bytes of the files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|(_, b)| b.len() as u64).sum()
    }
}

fn io(path: &Path, operation: &'static str) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let path = path.to_path_buf();
    move |source| CheckpointError::Io {
        path,
        operation,
        source,
    }
}

fn fsync_dir(path: &Path) -> Result<(), CheckpointError> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(io(path, "fsync directory"))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut file = File::create(path).map_err(io(path, "create"))?;
    file.write_all(bytes).map_err(io(path, "write"))?;
    file.sync_all().map_err(io(path, "fsync"))
}

/// The directory name of the checkpoint of step `step`.
pub(crate) fn name(step: u64) -> String {
    format!("{PREFIX}{step:012}")
}

/// Checkpoint directories under `dir` (final names only), newest step first.
pub(crate) fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir, "list")(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(dir, "list"))?;
        let file_name = entry.file_name();
        let Some(step) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((step, entry.path()));
    }
    found.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
    Ok(found)
}

/// Writes one checkpoint of `step` with `files` durably into `dir`, then keeps the newest `keep`
/// checkpoints (the new one included) and removes any checkpoint of a later step (left by a run
/// that was resumed from before it). Returns the checkpoint's directory.
pub(crate) fn write(
    dir: &Path,
    step: u64,
    files: &[(String, Vec<u8>)],
    keep: usize,
) -> Result<PathBuf, CheckpointError> {
    fs::create_dir_all(dir).map_err(io(dir, "create directory"))?;
    remove_temporaries(dir)?;
    let pid = std::process::id();
    let temporary = dir.join(format!("{TEMPORARY}{}-{pid}", name(step)));
    fs::create_dir(&temporary).map_err(io(&temporary, "create directory"))?;
    let mut manifest = Manifest {
        format: FORMAT_NAME.to_owned(),
        version: CHECKPOINT_FORMAT_VERSION,
        step,
        files: Vec::with_capacity(files.len()),
    };
    for (file_name, bytes) in files {
        write_file(&temporary.join(file_name), bytes)?;
        manifest.files.push(FileEntry {
            name: file_name.clone(),
            bytes: bytes.len() as u64,
            crc32: crc32fast::hash(bytes),
        });
    }
    let manifest_bytes =
        serde_json::to_vec_pretty(&manifest).map_err(|e| CheckpointError::Serialize {
            what: "manifest",
            message: e.to_string(),
        })?;
    write_file(&temporary.join(MANIFEST), &manifest_bytes)?;
    fsync_dir(&temporary)?;

    let destination = dir.join(name(step));
    // A checkpoint of the same step already there (a run resumed from before it): move it
    // aside first, so that the rename below lands; it is removed once the new one is durable.
    let replaced = if destination.exists() {
        let aside = dir.join(format!("{TEMPORARY}old-{}-{pid}", name(step)));
        fs::rename(&destination, &aside).map_err(io(&destination, "rename"))?;
        Some(aside)
    } else {
        None
    };
    fs::rename(&temporary, &destination).map_err(io(&temporary, "rename"))?;
    fsync_dir(dir)?;

    // The new checkpoint is durable: now older ones may go.
    if let Some(aside) = replaced {
        fs::remove_dir_all(&aside).map_err(io(&aside, "remove"))?;
    }
    let mut kept = 0usize;
    for (other, path) in list(dir)? {
        let remove = if other > step {
            true
        } else {
            kept += 1;
            kept > keep.max(1)
        };
        if remove {
            fs::remove_dir_all(&path).map_err(io(&path, "remove"))?;
        }
    }
    fsync_dir(dir)?;
    Ok(destination)
}

/// Removes the temporary directories of writes that never finished (a killed process).
fn remove_temporaries(dir: &Path) -> Result<(), CheckpointError> {
    for entry in fs::read_dir(dir).map_err(io(dir, "list"))? {
        let entry = entry.map_err(io(dir, "list"))?;
        if entry.file_name().to_string_lossy().starts_with(TEMPORARY) {
            let path = entry.path();
            fs::remove_dir_all(&path).map_err(io(&path, "remove"))?;
        }
    }
    Ok(())
}

/// Reads the checkpoint in `path` and checks it completely: the manifest parses, has this
/// format and version and the step the directory is named after, and every file it lists has
/// its length and CRC-32.
pub(crate) fn read(path: &Path, expected_step: u64) -> Result<Contents, CheckpointError> {
    let manifest_path = path.join(MANIFEST);
    let manifest_bytes = match fs::read(&manifest_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CheckpointError::MissingFile {
                path: manifest_path,
            });
        }
        Err(e) => return Err(io(&manifest_path, "read")(e)),
    };
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| CheckpointError::Corrupt {
            path: manifest_path.clone(),
            reason: format!("the manifest does not parse: {e}"),
        })?;
    if manifest.format != FORMAT_NAME {
        return Err(CheckpointError::Corrupt {
            path: manifest_path,
            reason: format!("format `{}`, expected `{FORMAT_NAME}`", manifest.format),
        });
    }
    if manifest.version != CHECKPOINT_FORMAT_VERSION {
        return Err(CheckpointError::Version {
            path: manifest_path,
            found: manifest.version,
            supported: CHECKPOINT_FORMAT_VERSION,
        });
    }
    if manifest.step != expected_step {
        return Err(CheckpointError::Corrupt {
            path: manifest_path,
            reason: format!(
                "the manifest says step {}, the directory step {expected_step}",
                manifest.step
            ),
        });
    }
    let mut files = Vec::with_capacity(manifest.files.len());
    for entry in manifest.files {
        let file_path = path.join(&entry.name);
        if entry.name.contains(['/', '\\']) || entry.name.starts_with('.') {
            return Err(CheckpointError::Corrupt {
                path: manifest_path,
                reason: format!("file name `{}` outside the checkpoint", entry.name),
            });
        }
        let bytes = match fs::read(&file_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CheckpointError::MissingFile { path: file_path });
            }
            Err(e) => return Err(io(&file_path, "read")(e)),
        };
        if bytes.len() as u64 != entry.bytes {
            return Err(CheckpointError::Truncated {
                path: file_path,
                expected: entry.bytes,
                actual: bytes.len() as u64,
            });
        }
        let crc32 = crc32fast::hash(&bytes);
        if crc32 != entry.crc32 {
            return Err(CheckpointError::Checksum {
                path: file_path,
                expected: entry.crc32,
                actual: crc32,
            });
        }
        files.push((entry.name, bytes));
    }
    Ok(Contents {
        path: path.to_path_buf(),
        step: manifest.step,
        files,
    })
}
