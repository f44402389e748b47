//! Character corpora and the windows cut from them for next-character prediction.
//!
//! The paper's corpus is "constructed by repeating a fixed phrase"; [`CharCorpus::synthetic`]
//! builds it. Any UTF-8 text file can serve as a second corpus ([`CharCorpus::from_file`]).
//! Tokens are characters (Unicode scalar values); the vocabulary is the sorted set of distinct
//! characters, so token ids are stable for a given text.

use std::fs;
use std::path::Path;

use burn::prelude::*;

use crate::batch::TextBatch;
use crate::error::{DataError, Result, io_err};

/// The fixed phrase of the synthetic corpus (the paper does not publish its phrase).
pub const SYNTHETIC_PHRASE: &str = "the quick brown fox jumps over the lazy dog. ";
/// Length in characters of the default synthetic corpus.
pub const SYNTHETIC_LEN: usize = 16_384;

/// A text as a sequence of character token ids, with its vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharCorpus {
    name: String,
    vocab: Vec<char>,
    tokens: Vec<u32>,
}

impl CharCorpus {
    /// Tokenizes `text` by characters; `name` says where it came from.
    pub fn from_text(name: impl Into<String>, text: &str) -> Self {
        let mut vocab: Vec<char> = text.chars().collect();
        vocab.sort_unstable();
        vocab.dedup();
        let tokens = text
            .chars()
            .map(|c| vocab.binary_search(&c).unwrap_or_default() as u32)
            .collect();
        Self {
            name: name.into(),
            vocab,
            tokens,
        }
    }

    /// `phrase` repeated until the corpus holds `len` characters (the last copy cut short).
    pub fn repeated_phrase(phrase: &str, len: usize) -> Self {
        let text: String = phrase.chars().cycle().take(len).collect();
        Self::from_text(
            format!("synthetic ({len} chars of {phrase:?} repeated)"),
            &text,
        )
    }

    /// The paper's synthetic corpus: [`SYNTHETIC_PHRASE`] repeated to [`SYNTHETIC_LEN`]
    /// characters.
    pub fn synthetic() -> Self {
        Self::repeated_phrase(SYNTHETIC_PHRASE, SYNTHETIC_LEN)
    }

    /// Reads a UTF-8 text file.
    ///
    /// # Errors
    /// [`DataError::Io`] if it cannot be read, [`DataError::NotUtf8`] (with the offset of the
    /// first invalid byte) if it is not UTF-8.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = fs::read(path).map_err(io_err(path))?;
        let text = String::from_utf8(bytes).map_err(|e| DataError::NotUtf8 {
            path: path.to_path_buf(),
            offset: e.utf8_error().valid_up_to(),
        })?;
        Ok(Self::from_text(format!("file {}", path.display()), &text))
    }

    /// Where the corpus came from, for result files.
    pub fn source_name(&self) -> &str {
        &self.name
    }

    /// The distinct characters; token id `i` is `vocab()[i]`.
    pub fn vocab(&self) -> &[char] {
        &self.vocab
    }

    /// Number of distinct characters (the model's `vocab_size`).
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The whole text as token ids.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Length in characters.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the corpus is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Turns token ids back into text (ids outside the vocabulary become `'\u{FFFD}'`).
    pub fn decode(&self, tokens: &[u32]) -> String {
        tokens
            .iter()
            .map(|&t| self.vocab.get(t as usize).copied().unwrap_or('\u{FFFD}'))
            .collect()
    }
}

/// A corpus cut into next-character windows: training windows from the head, a fixed probe set
/// from a held-out tail that no training window touches.
///
/// With `S = seq_len` and `P = probe_size`, the last `P·(S+1)` tokens form `P` disjoint probe
/// windows; training window `i` (for `i` in `0..train_len()`) is `tokens[i ..= i+S]` of the
/// remaining head. A window of `S+1` tokens gives inputs `w[..S]` and targets `w[1..]`.
#[derive(Debug, Clone)]
pub struct CharDataset {
    corpus: CharCorpus,
    seq_len: usize,
    probe_size: usize,
    train_tokens: usize,
}

impl CharDataset {
    /// Default number of probe sequences (|P| = 16 in the paper).
    pub const DEFAULT_PROBE_SIZE: usize = 16;

    /// Cuts `corpus` into windows of `seq_len` with `probe_size` held-out probe windows.
    ///
    /// # Errors
    /// [`DataError::ZeroSize`] for `seq_len == 0` or `probe_size == 0`, and
    /// [`DataError::CorpusTooShort`] when the corpus cannot hold one training window plus the
    /// probe windows.
    pub fn new(corpus: CharCorpus, seq_len: usize, probe_size: usize) -> Result<Self> {
        if seq_len == 0 {
            return Err(DataError::ZeroSize {
                what: "sequence length",
            });
        }
        if probe_size == 0 {
            return Err(DataError::ZeroSize { what: "probe size" });
        }
        let window = seq_len + 1;
        let needed = window * (probe_size + 1);
        if corpus.len() < needed {
            return Err(DataError::CorpusTooShort {
                source_name: corpus.name.clone(),
                len: corpus.len(),
                needed,
                seq_len,
                probe_size,
            });
        }
        let train_tokens = corpus.len() - window * probe_size;
        Ok(Self {
            corpus,
            seq_len,
            probe_size,
            train_tokens,
        })
    }

    /// The underlying corpus.
    pub fn corpus(&self) -> &CharCorpus {
        &self.corpus
    }

    /// Provenance for result files.
    pub fn source_name(&self) -> &str {
        self.corpus.source_name()
    }

    /// Sequence length of every window.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Number of probe windows.
    pub fn probe_size(&self) -> usize {
        self.probe_size
    }

    /// Vocabulary size of the corpus.
    pub fn vocab_size(&self) -> usize {
        self.corpus.vocab_size()
    }

    /// Number of training windows (the `len` for a [`BatchPlan`](super::BatchPlan)).
    pub fn train_len(&self) -> usize {
        self.train_tokens - self.seq_len
    }

    /// Token range `start..end` of the held-out probe tail.
    pub fn probe_range(&self) -> std::ops::Range<usize> {
        self.train_tokens..self.corpus.len()
    }

    fn windows_batch(&self, starts: &[usize], device: &Device) -> Result<TextBatch> {
        let s = self.seq_len;
        let mut inputs = Vec::with_capacity(starts.len() * s);
        let mut targets = Vec::with_capacity(starts.len() * s);
        for &start in starts {
            let w = &self.corpus.tokens[start..start + s + 1];
            inputs.extend_from_slice(&w[..s]);
            targets.extend_from_slice(&w[1..]);
        }
        TextBatch::from_host(
            &inputs,
            &targets,
            [starts.len(), s],
            self.vocab_size(),
            device,
        )
    }

    /// The training windows `indices` as a batch on `device`.
    ///
    /// # Errors
    /// [`DataError::ZeroSize`] for no index, [`DataError::IndexOutOfRange`] for an index
    /// `>= train_len()`.
    pub fn train_batch(&self, indices: &[usize], device: &Device) -> Result<TextBatch> {
        if indices.is_empty() {
            return Err(DataError::ZeroSize { what: "batch size" });
        }
        let len = self.train_len();
        if let Some(&index) = indices.iter().find(|&&i| i >= len) {
            return Err(DataError::IndexOutOfRange { index, len });
        }
        self.windows_batch(indices, device)
    }

    /// The fixed probe set: `probe_size` disjoint windows of the held-out tail.
    ///
    /// # Errors
    /// Only if building tensors fails validation, which cannot happen for a valid dataset.
    pub fn probe_batch(&self, device: &Device) -> Result<TextBatch> {
        let window = self.seq_len + 1;
        let starts: Vec<usize> = (0..self.probe_size)
            .map(|i| self.train_tokens + i * window)
            .collect();
        self.windows_batch(&starts, device)
    }
}
