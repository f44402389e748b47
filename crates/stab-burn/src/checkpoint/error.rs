//! What can go wrong with a checkpoint, file by file.

use std::path::PathBuf;

use stab_core::ProtocolStateError;
use thiserror::Error;

use crate::error::{GuardError, StoreError};

/// A checkpoint could not be written, verified or resumed. Each variant names the file and says
/// what is wrong with it.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// A file-system operation failed.
    #[error("could not {operation} `{path}`: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done (`"write"`, `"fsync"`, `"rename"`, …).
        operation: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file the checkpoint needs is not there.
    #[error("checkpoint file `{path}` is missing")]
    MissingFile {
        /// The file.
        path: PathBuf,
    },
    /// A file is shorter or longer than its manifest says (a write cut short).
    #[error("checkpoint file `{path}` is truncated: {actual} bytes, the manifest says {expected}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the manifest lists.
        expected: u64,
        /// Bytes found.
        actual: u64,
    },
    /// A file's CRC-32 differs from its manifest's: its contents changed after the write.
    #[error(
        "checkpoint file `{path}` is corrupt: CRC-32 {actual:#010x}, the manifest says {expected:#010x}"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// CRC-32 the manifest lists.
        expected: u32,
        /// CRC-32 of the bytes found.
        actual: u32,
    },
    /// The checkpoint was written in another format version.
    #[error("checkpoint `{path}` has format version {found}; this build reads version {supported}")]
    Version {
        /// The manifest.
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// A file verifies but its contents do not make sense (or the manifest does not parse).
    #[error("checkpoint file `{path}` is unusable: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The saved protocol state is refused (another version, configuration or mode).
    #[error("checkpoint file `{path}`: {source}")]
    Protocol {
        /// The protocol state's file.
        path: PathBuf,
        /// Why it is refused.
        #[source]
        source: ProtocolStateError,
    },
    /// A saved model or optimizer state does not fit the module or optimizer given to resume.
    #[error("checkpoint file `{path}` does not fit the module or optimizer: {message}")]
    Record {
        /// The file.
        path: PathBuf,
        /// What burn reported.
        message: String,
    },
    /// The store could not hand out or take back a snapshot.
    #[error("the snapshot store failed while {operation}: {source}")]
    Store {
        /// What was being done.
        operation: &'static str,
        /// What the store reported.
        #[source]
        source: StoreError,
    },
    /// Part of the state could not be serialized (the manifest, the protocol state, the extra
    /// value, a record).
    #[error("could not serialize the {what}: {message}")]
    Serialize {
        /// What.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// The guard could not be rebuilt.
    #[error("could not rebuild the guard: {0}")]
    Guard(#[from] GuardError),
    /// A [`super::CheckpointPolicy`] value is out of bounds.
    #[error("invalid checkpoint policy: {0}")]
    Policy(String),
    /// A new run was pointed at a directory that holds checkpoints of an earlier run. They are
    /// the user's data: resume from them ([`super::latest`], [`super::Checkpointer::resuming`]),
    /// point the run elsewhere, or discard them explicitly
    /// ([`super::Checkpointer::discarding_existing`]).
    #[error(
        "`{dir}` holds {} checkpoint(s) of an earlier run ({}): resume from them, choose \
         another directory, or discard them explicitly",
        found.len(),
        found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    Occupied {
        /// The directory.
        dir: PathBuf,
        /// The checkpoints in it, newest first.
        found: Vec<PathBuf>,
    },
    /// The directory holds checkpoints but none of them verifies: each one's reason is listed.
    /// Nothing is resumed, and a new run does not take the directory over silently.
    #[error(
        "none of the {} checkpoint(s) in `{dir}` verifies: {}",
        skipped.len(),
        skipped.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    NothingVerifies {
        /// The directory.
        dir: PathBuf,
        /// Why each checkpoint was refused, newest first.
        skipped: Vec<CheckpointError>,
    },
}

impl CheckpointError {
    /// Whether the error says the checkpoint itself is damaged or unreadable by this build (a
    /// file missing, truncated or corrupt, another format version): such a checkpoint is skipped
    /// by [`super::latest`]. A failing read ([`CheckpointError::Io`]) is not damage: it may be
    /// transient, and skipping would resume from an older state than the run has.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            Self::MissingFile { .. }
                | Self::Truncated { .. }
                | Self::Checksum { .. }
                | Self::Version { .. }
                | Self::Corrupt { .. }
                | Self::Protocol { .. }
        )
    }
}
