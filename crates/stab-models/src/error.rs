//! Error types: one enum for data (files, corpora, batches) and one for model configs.
//!
//! Every variant carries the context needed to act on it without a debugger: the file, the byte
//! offset, the value that was expected and the one that was found.

use std::path::PathBuf;

/// Everything that can go wrong while loading, generating or batching data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory could not be opened, read, written or created.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// A CIFAR-10 batch file holds no record at all.
    #[error("{path}: CIFAR-10 batch file is empty")]
    CifarEmpty {
        /// The empty file.
        path: PathBuf,
    },
    /// A CIFAR-10 batch file ends inside a record (truncated or not a CIFAR-10 file).
    #[error(
        "{path}: truncated CIFAR-10 record at byte offset {offset}: the file has {file_len} bytes, \
         which is not a multiple of the {record_len}-byte record"
    )]
    CifarTruncated {
        /// The file.
        path: PathBuf,
        /// Byte offset where the incomplete record starts.
        offset: u64,
        /// Length of the file in bytes.
        file_len: u64,
        /// Length of one record (1 label byte + 3072 pixel bytes).
        record_len: usize,
    },
    /// A record's label byte is not a class index.
    #[error(
        "{path}: label {label} at byte offset {offset} is not a class index below {num_classes}"
    )]
    BadLabel {
        /// The file.
        path: PathBuf,
        /// Byte offset of the label byte.
        offset: u64,
        /// The label found.
        label: u8,
        /// Number of classes of the data set.
        num_classes: usize,
    },
    /// An IDX file starts with the wrong magic number (wrong file, or not IDX at all).
    #[error("{path}: IDX magic number is {actual:#010x}, expected {expected:#010x}")]
    IdxMagic {
        /// The file.
        path: PathBuf,
        /// Magic number the loader expects (type code and rank).
        expected: u32,
        /// Magic number found in the file.
        actual: u32,
    },
    /// An IDX file declares dimensions the loader does not accept.
    #[error("{path}: IDX dimensions are {actual:?}, expected {expected}")]
    IdxDims {
        /// The file.
        path: PathBuf,
        /// What the loader accepts, in words (e.g. `[n, 28, 28]`).
        expected: String,
        /// Dimensions declared in the header.
        actual: Vec<u32>,
    },
    /// An IDX file (after decompression) is shorter or longer than its header says.
    #[error(
        "{path}: IDX payload has {actual} bytes after the header at byte offset {offset}, \
         the header promises {expected}"
    )]
    IdxLength {
        /// The file.
        path: PathBuf,
        /// Byte offset (in the decompressed stream) where the payload starts.
        offset: u64,
        /// Payload length the header promises.
        expected: u64,
        /// Payload length found.
        actual: u64,
    },
    /// An image file and its label file disagree on the number of examples.
    #[error("{images} holds {image_count} images but {labels} holds {label_count} labels")]
    CountMismatch {
        /// The image file.
        images: PathBuf,
        /// Number of images.
        image_count: usize,
        /// The label file.
        labels: PathBuf,
        /// Number of labels.
        label_count: usize,
    },
    /// No supported vision data set was found where the loader looked.
    #[error("no vision data set found; looked for {looked_for}")]
    NoVisionData {
        /// The places searched, in words.
        looked_for: String,
    },
    /// A file's MD5 digest differs from the published one.
    #[error("{path}: MD5 is {actual}, expected {expected}")]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// Published digest (lower-case hex).
        expected: String,
        /// Digest of the file (lower-case hex).
        actual: String,
    },
    /// An archive entry would be written outside the extraction directory.
    #[error("{archive}: entry {entry} escapes the extraction directory")]
    UnsafeArchiveEntry {
        /// The archive.
        archive: PathBuf,
        /// The offending entry path.
        entry: PathBuf,
    },
    /// A download failed (network unreachable, HTTP error, interrupted transfer).
    #[error("download of {url} failed: {message}")]
    Download {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The network could not be reached at all (no route, DNS failure, connection refused).
    #[error("network unreachable while fetching {url}: {message}")]
    NetworkUnreachable {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A text file is not valid UTF-8.
    #[error("{path}: not valid UTF-8 (first invalid byte at offset {offset})")]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// Byte offset of the first invalid byte.
        offset: usize,
    },
    /// A corpus is too short for one training sequence plus the held-out probe slice.
    #[error(
        "corpus {source_name} has {len} characters; {needed} are needed for one training \
         sequence of {seq_len} (+1 target) plus {probe_size} held-out probe sequences"
    )]
    CorpusTooShort {
        /// Name of the corpus.
        source_name: String,
        /// Characters in the corpus.
        len: usize,
        /// Characters needed.
        needed: usize,
        /// Sequence length asked for.
        seq_len: usize,
        /// Number of probe sequences asked for.
        probe_size: usize,
    },
    /// A size parameter that must be positive is zero.
    #[error("{what} must be positive")]
    ZeroSize {
        /// Which parameter.
        what: &'static str,
    },
    /// A batch was asked to be larger than the data it is drawn from.
    #[error("batch size {batch_size} exceeds the {len} examples available")]
    BatchTooLarge {
        /// Requested batch size.
        batch_size: usize,
        /// Examples available.
        len: usize,
    },
    /// An example index is out of range.
    #[error("example index {index} is out of range for {len} examples")]
    IndexOutOfRange {
        /// The index.
        index: usize,
        /// Number of examples.
        len: usize,
    },
    /// Host buffers handed to a batch constructor do not match the declared shape.
    #[error("{what}: expected {expected} values, got {actual}")]
    LengthMismatch {
        /// Which buffer.
        what: &'static str,
        /// Values the shape requires.
        expected: usize,
        /// Values supplied.
        actual: usize,
    },
    /// A token id is outside the vocabulary.
    #[error("token id {token} is outside the vocabulary of {vocab_size}")]
    TokenOutOfRange {
        /// The token id.
        token: u32,
        /// Vocabulary size.
        vocab_size: usize,
    },
}

/// A model configuration that cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelConfigError {
    /// A size that must be positive is zero.
    #[error("{what} must be positive")]
    ZeroSize {
        /// Which field.
        what: &'static str,
    },
    /// The model width is not divisible by the number of attention heads.
    #[error("d_model {d_model} is not divisible by n_heads {n_heads}")]
    HeadsDoNotDivide {
        /// Model width.
        d_model: usize,
        /// Number of heads.
        n_heads: usize,
    },
    /// The dropout probability is outside `[0, 1)`.
    #[error("dropout {dropout} is outside [0, 1)")]
    BadDropout {
        /// The value given.
        dropout: f64,
    },
}

/// Shorthand for results with a [`DataError`].
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Wraps an I/O error with the path it concerns.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DataError {
    let path = path.into();
    move |source| DataError::Io { path, source }
}
