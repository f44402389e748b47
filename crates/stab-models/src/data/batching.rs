//! Deterministic minibatch order: the indices of step `t` depend on `(seed, t)` only.
//!
//! The paper's baseline and controlled runs "share identical initialization and mini-batch
//! order". A [`BatchPlan`] makes that hold by construction: it is a pure function of the seed and
//! the step number, holds no cursor, and so cannot drift between arms — not even when the
//! controller rejects a step (a rejection does not rewind the data: step `t + 1` always sees the
//! batch of step `t + 1`).

use super::rng::{mix_seed, permutation};
use crate::error::{DataError, Result};

/// The minibatch schedule of one run: a seeded shuffle of the training set per epoch, cut into
/// consecutive batches.
///
/// The training examples are visited as an endless stream `perm(e=0) ++ perm(e=1) ++ …`, where
/// `perm(e)` is a permutation of `0..len` fixed by `(seed, e)`. Step `t` takes positions
/// `t·B .. (t+1)·B` of that stream, so every batch has exactly `B` indices, each epoch visits
/// every example once, and a batch that straddles two epochs takes the tail of one and the head
/// of the next (the only case where an example can repeat within a batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPlan {
    seed: u64,
    len: usize,
    batch_size: usize,
}

impl BatchPlan {
    /// A plan over `len` training examples in batches of `batch_size`.
    ///
    /// # Errors
    /// [`DataError::ZeroSize`] when `len` or `batch_size` is zero, and
    /// [`DataError::BatchTooLarge`] when `batch_size > len`.
    pub fn new(seed: u64, len: usize, batch_size: usize) -> Result<Self> {
        if len == 0 {
            return Err(DataError::ZeroSize {
                what: "training set size",
            });
        }
        if batch_size == 0 {
            return Err(DataError::ZeroSize { what: "batch size" });
        }
        if batch_size > len {
            return Err(DataError::BatchTooLarge { batch_size, len });
        }
        Ok(Self {
            seed,
            len,
            batch_size,
        })
    }

    /// The seed the plan was made with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Number of training examples the plan draws from.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a plan has at least one example (checked by [`BatchPlan::new`]).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Examples per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The epoch in which step `step`'s batch starts.
    pub fn epoch_of(&self, step: u64) -> u64 {
        (u128::from(step) * self.batch_size as u128 / self.len as u128) as u64
    }

    /// The training-set indices of the batch at `step`: `batch_size` indices in `0..len`.
    pub fn indices(&self, step: u64) -> Vec<usize> {
        let len = self.len as u128;
        let start = u128::from(step) * self.batch_size as u128;
        let mut out = Vec::with_capacity(self.batch_size);
        let mut epoch = (start / len) as u64;
        let mut pos = (start % len) as usize;
        while out.len() < self.batch_size {
            let perm = self.epoch_permutation(epoch);
            let take = (self.batch_size - out.len()).min(self.len - pos);
            out.extend_from_slice(&perm[pos..pos + take]);
            epoch += 1;
            pos = 0;
        }
        out
    }

    /// The order in which epoch `epoch` visits the training set.
    pub fn epoch_permutation(&self, epoch: u64) -> Vec<usize> {
        permutation(self.len, mix_seed(self.seed, epoch))
    }
}
