//! Snapshot stores: keep accepted states in numbered slots, give back exact copies.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A slot of a snapshot store. [`SlotId::CURRENT`] holds the last accepted state; the step
/// protocol keeps older accepted states (its snapshot ring) in the other slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SlotId(pub u8);

impl SlotId {
    /// The slot of the last accepted state.
    pub const CURRENT: SlotId = SlotId(0);
}

impl std::fmt::Display for SlotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "slot {}", self.0)
    }
}

/// Keeps accepted states of a training run so that a rejection can restore one exactly.
///
/// Implementations decide where the copies live (device memory, host memory, disk) and how they
/// are made; they must restore *exactly* what was saved (Proposition 7.4 depends on it):
/// parameters, optimizer state, and any buffer a forward pass mutates. The step protocol tells
/// the driver which of these operations to perform, in which order.
pub trait SnapshotStore<S> {
    /// What can go wrong saving or restoring.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Replaces [`SlotId::CURRENT`] with `state`, the newly accepted state.
    ///
    /// # Errors
    /// Store-specific (out of memory, I/O, a background copy that failed).
    fn save(&mut self, state: &S) -> Result<(), Self::Error>;

    /// Returns an exact copy of the state in [`SlotId::CURRENT`], keeping it for later restores.
    ///
    /// # Errors
    /// Store-specific; an empty slot is an error, never a panic.
    fn restore(&mut self) -> Result<S, Self::Error>;

    /// Makes slot `to` hold what slot `from` holds (a snapshot is immutable once saved, so a
    /// store may share it rather than copy it).
    ///
    /// # Errors
    /// An empty `from` slot, or a store-specific failure.
    fn copy(&mut self, from: SlotId, to: SlotId) -> Result<(), Self::Error>;

    /// Makes [`SlotId::CURRENT`] hold the snapshot of `slot` and returns an exact copy of it: the
    /// state to continue from after a rewind.
    ///
    /// # Errors
    /// An empty slot, or a store-specific failure.
    fn rewind(&mut self, slot: SlotId) -> Result<S, Self::Error>;

    /// Frees a slot (its snapshot is no longer a rewind target).
    ///
    /// # Errors
    /// Store-specific.
    fn release(&mut self, slot: SlotId) -> Result<(), Self::Error>;
}

/// Snapshots by slot: the bookkeeping every store shares (a slot is filled, read, overwritten or
/// released; the table grows to the highest slot used, at most 256 entries).
#[derive(Debug, Clone)]
pub struct SlotTable<T> {
    slots: Vec<Option<T>>,
}

impl<T> Default for SlotTable<T> {
    fn default() -> Self {
        Self { slots: Vec::new() }
    }
}

impl<T> SlotTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// What `slot` holds, if anything.
    pub fn get(&self, slot: SlotId) -> Option<&T> {
        self.slots.get(usize::from(slot.0)).and_then(Option::as_ref)
    }

    /// Makes `slot` hold `value`, replacing what it held.
    pub fn put(&mut self, slot: SlotId, value: T) {
        let index = usize::from(slot.0);
        if self.slots.len() <= index {
            self.slots.resize_with(index + 1, || None);
        }
        self.slots[index] = Some(value);
    }

    /// Empties `slot` (nothing happens if it is empty already).
    pub fn release(&mut self, slot: SlotId) {
        if let Some(entry) = self.slots.get_mut(usize::from(slot.0)) {
            *entry = None;
        }
    }

    /// The values held, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten()
    }

    /// Slots holding a value.
    pub fn occupied(&self) -> usize {
        self.iter().count()
    }
}

/// Errors of [`InMemoryStore`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InMemoryStoreError {
    /// A restore, copy or rewind read a slot that holds no snapshot.
    #[error("{slot} holds no snapshot")]
    Empty {
        /// The slot read.
        slot: SlotId,
    },
}

/// Keeps each snapshot as a `Clone` of the state, in memory. Exact whenever `Clone` is a deep copy
/// (or copy-on-write over immutable data).
#[derive(Debug, Clone)]
pub struct InMemoryStore<S> {
    slots: SlotTable<S>,
}

impl<S> Default for InMemoryStore<S> {
    fn default() -> Self {
        Self {
            slots: SlotTable::new(),
        }
    }
}

impl<S: Clone> InMemoryStore<S> {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last accepted snapshot, if any.
    pub fn get(&self) -> Option<&S> {
        self.slot(SlotId::CURRENT)
    }

    /// The snapshot in `slot`, if any.
    pub fn slot(&self, slot: SlotId) -> Option<&S> {
        self.slots.get(slot)
    }

    /// Slots holding a snapshot.
    pub fn occupied(&self) -> usize {
        self.slots.occupied()
    }

    fn read(&self, slot: SlotId) -> Result<S, InMemoryStoreError> {
        self.slot(slot)
            .cloned()
            .ok_or(InMemoryStoreError::Empty { slot })
    }
}

impl<S: Clone> SnapshotStore<S> for InMemoryStore<S> {
    type Error = InMemoryStoreError;

    fn save(&mut self, state: &S) -> Result<(), Self::Error> {
        self.slots.put(SlotId::CURRENT, state.clone());
        Ok(())
    }

    fn restore(&mut self) -> Result<S, Self::Error> {
        self.read(SlotId::CURRENT)
    }

    fn copy(&mut self, from: SlotId, to: SlotId) -> Result<(), Self::Error> {
        let state = self.read(from)?;
        self.slots.put(to, state);
        Ok(())
    }

    fn rewind(&mut self, slot: SlotId) -> Result<S, Self::Error> {
        let state = self.read(slot)?;
        self.slots.put(SlotId::CURRENT, state.clone());
        Ok(state)
    }

    fn release(&mut self, slot: SlotId) -> Result<(), Self::Error> {
        self.slots.release(slot);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_before_save_is_an_error_not_a_panic() {
        let mut store = InMemoryStore::<Vec<f64>>::new();
        assert_eq!(
            store.restore(),
            Err(InMemoryStoreError::Empty {
                slot: SlotId::CURRENT
            })
        );
        assert!(store.rewind(SlotId(3)).is_err());
        assert!(store.copy(SlotId(2), SlotId(1)).is_err());
    }

    #[test]
    fn restore_returns_the_last_saved_state_repeatedly() {
        let mut store = InMemoryStore::new();
        store.save(&vec![1.0, 2.0]).unwrap();
        store.save(&vec![3.0]).unwrap();
        assert_eq!(store.restore().unwrap(), vec![3.0]);
        assert_eq!(store.restore().unwrap(), vec![3.0]);
    }

    #[test]
    fn slots_copy_rewind_and_release() {
        let mut store = InMemoryStore::new();
        store.save(&1).unwrap();
        store.copy(SlotId::CURRENT, SlotId(2)).unwrap();
        store.save(&5).unwrap();
        assert_eq!(store.occupied(), 2);
        assert_eq!(store.rewind(SlotId(2)).unwrap(), 1);
        assert_eq!(
            store.restore().unwrap(),
            1,
            "the rewound state is the current one"
        );
        store.release(SlotId(2)).unwrap();
        store.release(SlotId(9)).unwrap();
        assert_eq!(store.slot(SlotId(2)), None);
        assert_eq!(store.occupied(), 1);
        assert_eq!(store.get(), Some(&1));
    }

    #[test]
    fn an_empty_slot_names_itself_in_the_error() {
        let err = InMemoryStore::<u8>::new().rewind(SlotId(3)).unwrap_err();
        assert_eq!(err.to_string(), "slot 3 holds no snapshot");
        assert_eq!(InMemoryStore::<u8>::new().get(), None);
    }
}
