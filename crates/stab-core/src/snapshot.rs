//! Snapshot stores: keep the last accepted state, give back an exact copy on a rejection.

use thiserror::Error;

/// Keeps the last accepted state of a training run so that a rejection can restore it exactly.
///
/// Implementations decide where the copy lives (device memory, host memory, disk) and how it is
/// made; they must restore *exactly* what was saved (Proposition 7.4 depends on it): parameters,
/// optimizer state, and any buffer a forward pass mutates.
pub trait SnapshotStore<S> {
    /// What can go wrong saving or restoring.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Replaces the stored snapshot with `state`, the newly accepted state.
    ///
    /// # Errors
    /// Store-specific (out of memory, I/O, a background copy that failed).
    fn save(&mut self, state: &S) -> Result<(), Self::Error>;

    /// Returns an exact copy of the last saved state, keeping the snapshot for later restores.
    ///
    /// # Errors
    /// Store-specific; [`InMemoryStoreError::Empty`] for the in-memory store before any save.
    fn restore(&mut self) -> Result<S, Self::Error>;
}

/// Errors of [`InMemoryStore`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InMemoryStoreError {
    /// `restore` was called before any `save`.
    #[error("no snapshot has been saved yet")]
    Empty,
}

/// Keeps the snapshot as a `Clone` of the state, in memory. Exact whenever `Clone` is a deep copy
/// (or copy-on-write over immutable data).
#[derive(Debug, Clone)]
pub struct InMemoryStore<S> {
    snapshot: Option<S>,
}

impl<S> Default for InMemoryStore<S> {
    fn default() -> Self {
        Self { snapshot: None }
    }
}

impl<S: Clone> InMemoryStore<S> {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stored snapshot, if any.
    pub fn get(&self) -> Option<&S> {
        self.snapshot.as_ref()
    }
}

impl<S: Clone> SnapshotStore<S> for InMemoryStore<S> {
    type Error = InMemoryStoreError;

    fn save(&mut self, state: &S) -> Result<(), Self::Error> {
        self.snapshot = Some(state.clone());
        Ok(())
    }

    fn restore(&mut self) -> Result<S, Self::Error> {
        self.snapshot.clone().ok_or(InMemoryStoreError::Empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_before_save_is_an_error_not_a_panic() {
        let mut store = InMemoryStore::<Vec<f64>>::new();
        assert_eq!(store.restore(), Err(InMemoryStoreError::Empty));
    }

    #[test]
    fn restore_returns_the_last_saved_state_repeatedly() {
        let mut store = InMemoryStore::new();
        store.save(&vec![1.0, 2.0]).unwrap();
        store.save(&vec![3.0]).unwrap();
        assert_eq!(store.restore().unwrap(), vec![3.0]);
        assert_eq!(store.restore().unwrap(), vec![3.0]);
    }
}
