//! The checkpoint directory on disk: durable, atomic writes and verified reads.
//!
//! One checkpoint is one directory `step-<step, 12 digits>` (or `step-<step>.<generation>` when
//! a step is written again) holding its files and a `manifest.json` that names every file with
//! its length and CRC-32 and carries the format version. A write builds the directory under a
//! temporary name (`.tmp-…`), fsyncs every file, writes and fsyncs the manifest last, fsyncs the
//! directory, renames it into place under a name no other checkpoint has, and fsyncs the parent:
//! a checkpoint directory exists under its final name only once all of it is durable, a process
//! killed mid-write leaves only a temporary directory (which readers ignore and the next write
//! removes), and a rewrite of a step never moves the older checkpoint of that step out of the way
//! first (a new generation is written beside it). Writing never removes a checkpoint: removal
//! is [`remove`]'s job, which renames the checkpoint to a temporary name first, so that a crash
//! half-way through a removal leaves a temporary directory, not a damaged checkpoint.

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

/// One stage of a checkpoint write or removal, in the order they happen, handed to a
/// [`WriteHook`] before it runs.
///
/// A hook that returns an error stops the write or removal right there, leaving the disk as a
/// crash before that stage would: the tests use this to check that every stage is crash-safe, and
/// a program can use it to report progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStage<'a> {
    /// Create the temporary directory the checkpoint is built in.
    CreateTemporary(&'a Path),
    /// Create and write one file (a state, the protocol state, the layout, the extra value or,
    /// last, the manifest).
    WriteFile(&'a Path),
    /// Fsync that file.
    FsyncFile(&'a Path),
    /// Fsync the temporary directory (all its entries are durable).
    FsyncTemporary(&'a Path),
    /// Rename the temporary directory to the checkpoint's final name.
    Rename {
        /// The temporary directory.
        from: &'a Path,
        /// The final name.
        to: &'a Path,
    },
    /// Fsync the checkpoint directory's parent (the rename, or a removal, is durable).
    FsyncParent(&'a Path),
    /// Rename a checkpoint being removed to a temporary name.
    RenameForRemoval {
        /// The checkpoint.
        from: &'a Path,
        /// The temporary name.
        to: &'a Path,
    },
    /// Delete a directory: a renamed-away checkpoint, or the temporary directory of a write
    /// that never finished.
    Delete(&'a Path),
}

impl WriteStage<'_> {
    /// What the stage does, for error messages.
    pub fn operation(&self) -> &'static str {
        match self {
            Self::CreateTemporary(_) => "create directory",
            Self::WriteFile(_) => "write",
            Self::FsyncFile(_) => "fsync",
            Self::FsyncTemporary(_) | Self::FsyncParent(_) => "fsync directory",
            Self::Rename { .. } | Self::RenameForRemoval { .. } => "rename",
            Self::Delete(_) => "remove",
        }
    }

    /// The file or directory it acts on (the source of a rename).
    pub fn path(&self) -> &Path {
        match self {
            Self::CreateTemporary(p)
            | Self::WriteFile(p)
            | Self::FsyncFile(p)
            | Self::FsyncTemporary(p)
            | Self::FsyncParent(p)
            | Self::Delete(p) => p,
            Self::Rename { from, .. } | Self::RenameForRemoval { from, .. } => from,
        }
    }
}

/// Called before every [`WriteStage`]; an error stops the write there (see [`WriteStage`]).
pub type WriteHook = dyn FnMut(&WriteStage<'_>) -> std::io::Result<()> + Send;

/// Runs `hook` for `stage`, then `action`; either's error becomes a [`CheckpointError::Io`]
/// naming the stage's path and operation.
fn stage<T>(
    hook: &mut WriteHook,
    stage: WriteStage<'_>,
    action: impl FnOnce() -> std::io::Result<T>,
) -> Result<T, CheckpointError> {
    let fail = io(stage.path(), stage.operation());
    hook(&stage).and_then(|()| action()).map_err(fail)
}

fn fsync_dir(path: &Path) -> std::io::Result<()> {
    File::open(path).and_then(|dir| dir.sync_all())
}

fn write_file(hook: &mut WriteHook, path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let file = stage(hook, WriteStage::WriteFile(path), || {
        let mut file = File::create(path)?;
        file.write_all(bytes)?;
        Ok(file)
    })?;
    stage(hook, WriteStage::FsyncFile(path), || file.sync_all())
}

/// Where a checkpoint is: its step and generation (0 for the first write of a step, then 1, 2, …
/// for rewrites of the same step), and its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub step: u64,
    pub generation: u64,
    pub path: PathBuf,
}

/// The directory name of the checkpoint of step `step`, generation `generation`.
pub(crate) fn name(step: u64, generation: u64) -> String {
    if generation == 0 {
        format!("{PREFIX}{step:012}")
    } else {
        format!("{PREFIX}{step:012}.{generation}")
    }
}

/// The step and generation a checkpoint directory name stands for; `None` for any other name.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix(PREFIX)?;
    let (step, generation) = match rest.split_once('.') {
        Some((step, generation)) => (step, generation.parse::<u64>().ok()?),
        None => (rest, 0),
    };
    // Digits only: `parse` would also take a sign.
    if step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((step.parse().ok()?, generation))
}

/// Checkpoint directories under `dir` (final names only), newest first: highest step, then
/// highest generation. A missing `dir` holds none.
pub(crate) fn list(dir: &Path) -> Result<Vec<Entry>, CheckpointError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir, "list")(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(dir, "list"))?;
        let Some((step, generation)) = entry.file_name().to_str().and_then(parse_name) else {
            continue;
        };
        found.push(Entry {
            step,
            generation,
            path: entry.path(),
        });
    }
    found.sort_by_key(|e| std::cmp::Reverse((e.step, e.generation)));
    Ok(found)
}

/// Writes one checkpoint of `step` with `files` durably into `dir`, under a name no checkpoint
/// there has (a rewrite of `step` gets the next generation), and returns its directory. Removes
/// the temporary directories of earlier writes that never finished; never removes a checkpoint.
pub(crate) fn write(
    dir: &Path,
    step: u64,
    files: &[(String, Vec<u8>)],
    hook: &mut WriteHook,
) -> Result<PathBuf, CheckpointError> {
    fs::create_dir_all(dir).map_err(io(dir, "create directory"))?;
    remove_temporaries(dir, hook)?;
    let pid = std::process::id();
    let temporary = dir.join(format!("{TEMPORARY}{}-{pid}", name(step, 0)));
    stage(hook, WriteStage::CreateTemporary(&temporary), || {
        fs::create_dir(&temporary)
    })?;
    let mut manifest = Manifest {
        format: FORMAT_NAME.to_owned(),
        version: CHECKPOINT_FORMAT_VERSION,
        step,
        files: Vec::with_capacity(files.len()),
    };
    for (file_name, bytes) in files {
        write_file(hook, &temporary.join(file_name), bytes)?;
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
    write_file(hook, &temporary.join(MANIFEST), &manifest_bytes)?;
    stage(hook, WriteStage::FsyncTemporary(&temporary), || {
        fsync_dir(&temporary)
    })?;

    // A checkpoint of this step may be there already (a run resumed from before it, or a second
    // write between two steps): the new one goes beside it, as the next generation, so that the
    // older one keeps its final name until the new one has its own.
    let generation = list(dir)?
        .iter()
        .filter(|e| e.step == step)
        .map(|e| e.generation + 1)
        .max()
        .unwrap_or(0);
    let destination = dir.join(name(step, generation));
    stage(
        hook,
        WriteStage::Rename {
            from: &temporary,
            to: &destination,
        },
        || fs::rename(&temporary, &destination),
    )?;
    stage(hook, WriteStage::FsyncParent(dir), || fsync_dir(dir))?;
    Ok(destination)
}

/// Removes the checkpoint in `path` (a directory of `dir`): renames it to a temporary name,
/// makes that durable, then deletes it. A crash part-way leaves the checkpoint whole under its
/// name, or a temporary directory; never a half-deleted checkpoint that a reader would have to
/// skip.
pub(crate) fn remove(dir: &Path, path: &Path, hook: &mut WriteHook) -> Result<(), CheckpointError> {
    let leaf = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let aside = dir.join(format!("{TEMPORARY}removed-{leaf}-{}", std::process::id()));
    stage(
        hook,
        WriteStage::RenameForRemoval {
            from: path,
            to: &aside,
        },
        || fs::rename(path, &aside),
    )?;
    stage(hook, WriteStage::FsyncParent(dir), || fsync_dir(dir))?;
    stage(hook, WriteStage::Delete(&aside), || {
        fs::remove_dir_all(&aside)
    })
}

/// Removes the temporary directories of writes and removals that never finished (a killed
/// process). They are never checkpoints: a checkpoint has its final name once it is complete.
fn remove_temporaries(dir: &Path, hook: &mut WriteHook) -> Result<(), CheckpointError> {
    for entry in fs::read_dir(dir).map_err(io(dir, "list"))? {
        let entry = entry.map_err(io(dir, "list"))?;
        if entry.file_name().to_string_lossy().starts_with(TEMPORARY) {
            let path = entry.path();
            stage(hook, WriteStage::Delete(&path), || {
                fs::remove_dir_all(&path)
            })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_round_trip_and_nothing_else_parses() {
        for (step, generation) in [(0, 0), (7, 0), (123_456_789_012, 0), (5, 1), (5, 42)] {
            assert_eq!(
                parse_name(&name(step, generation)),
                Some((step, generation))
            );
        }
        assert_eq!(name(5, 0), "step-000000000005");
        assert_eq!(name(5, 2), "step-000000000005.2");
        for other in [
            "step-",
            "step-.1",
            "step-+00000000005",
            "step--5",
            "step-5.",
            "step-5.x",
            "step-5.-1",
            ".tmp-step-000000000005-1",
            "manifest.json",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
    }
}
