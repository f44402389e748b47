//! The snapshot ring's bookkeeping: which slot holds which accepted state, and with it the
//! controller's state of that time. The states themselves live in the driver's store.

use crate::config::RingConfig;
use crate::detect::{DriftDetector, ScaleFreeThreshold};
use crate::signal::{InnovationKind, InnovationSignal};
use crate::snapshot::SlotId;

/// The controller's own state at a snapshot: restored together with the model on a rewind.
#[derive(Debug)]
pub(crate) struct ControllerState {
    pub signal: Option<Box<dyn InnovationSignal>>,
    pub drift: Option<DriftDetector>,
    pub acceptance: Option<ScaleFreeThreshold>,
}

impl Clone for ControllerState {
    fn clone(&self) -> Self {
        Self {
            signal: self.signal.as_ref().map(|s| s.clone_box()),
            drift: self.drift.clone(),
            acceptance: self.acceptance.clone(),
        }
    }
}

/// What the protocol knows about one occupied slot.
#[derive(Debug, Clone)]
pub(crate) struct SlotMeta {
    /// Steps completed when this state became current (0: the initial state).
    pub position: u64,
    /// Accepted steps in this state's history (the ring's clock).
    pub depth: u64,
    /// The driver's fingerprint of the state, if it supplies them.
    pub fingerprint: Option<u64>,
    /// The controller's state at that time.
    pub controller: ControllerState,
}

impl SlotMeta {
    /// How good the state looked when it was accepted, lower is better: the reference ŷ saved
    /// with it, for a signal whose innovation is `y − ŷ` (the probe loss's EWMA). `None` for
    /// other signals (a z-score's window mean or an agreement's EWMA is no loss).
    pub fn quality(&self) -> Option<f64> {
        let signal = self.controller.signal.as_ref()?;
        (signal.kind() == InnovationKind::ReferenceDifference).then(|| signal.reference())
    }
}

/// Store operations of a commit: promotions (older ← newer of a level), then retains
/// (newer ← the just-saved current state).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RingUpdate {
    /// `(from, to)` copies, performed after the save.
    pub promote: Vec<(SlotId, SlotId)>,
    /// Slots that receive a copy of the just-saved current state, after the promotions.
    pub retain: Vec<SlotId>,
}

impl RingUpdate {
    /// Every `(from, to)` copy a driver performs after saving the proposal into
    /// [`SlotId::CURRENT`], in the order it must perform them: promotions, then retains.
    pub fn copies(&self) -> impl Iterator<Item = (SlotId, SlotId)> + '_ {
        self.promote
            .iter()
            .copied()
            .chain(self.retain.iter().map(|&slot| (SlotId::CURRENT, slot)))
    }
}

/// Slot 0 is the current state; level `i` (age `a_i`) owns slot `1 + 2i` (older: the multiple
/// of `a_i` before the latest) and `2 + 2i` (newer: the latest multiple of `a_i`).
#[derive(Debug)]
pub(crate) struct Ring {
    ages: Vec<u64>,
    slots: Vec<Option<SlotMeta>>,
}

impl Ring {
    pub fn new(config: &RingConfig) -> Self {
        Self {
            ages: config.ages.clone(),
            slots: vec![None; config.slots()],
        }
    }

    fn older(level: usize) -> usize {
        1 + 2 * level
    }

    fn newer(level: usize) -> usize {
        2 + 2 * level
    }

    fn id(index: usize) -> SlotId {
        // The configuration bounds the ring to 1 + 2 · MAX_RING_LEVELS slots.
        SlotId(u8::try_from(index).unwrap_or(u8::MAX))
    }

    pub fn current(&self) -> Option<&SlotMeta> {
        self.slots[0].as_ref()
    }

    /// Records a new current state (a commit, or the initial save) and returns the store
    /// operations that keep the spaced levels up to date.
    pub fn commit(&mut self, meta: SlotMeta) -> RingUpdate {
        let depth = meta.depth;
        self.slots[0] = Some(meta);
        let mut update = RingUpdate::default();
        for (level, &age) in self.ages.iter().enumerate() {
            if !depth.is_multiple_of(age) {
                continue;
            }
            let (older, newer) = (Self::older(level), Self::newer(level));
            if let Some(previous) = self.slots[newer].take() {
                self.slots[older] = Some(previous);
                update.promote.push((Self::id(newer), Self::id(older)));
            }
            self.slots[newer] = self.slots[0].clone();
            update.retain.push(Self::id(newer));
        }
        update
    }

    /// A new current state that is not a commit of the schedule (an optimizer reset).
    pub fn replace_current(&mut self, meta: SlotMeta) {
        self.slots[0] = Some(meta);
    }

    /// The rewind target among the snapshots (other than the current one) strictly older than
    /// `bound`: the one that looked best when accepted (lowest `quality`), ties and signals
    /// without a quality going to the youngest. In healthy training the youngest is also the
    /// best; after damage that crept in under ε, the best is the one from before it.
    pub fn rewind_target(&self, bound: u64) -> Option<(SlotId, &SlotMeta)> {
        let candidates = || {
            self.slots
                .iter()
                .enumerate()
                .skip(1)
                .filter_map(|(i, meta)| meta.as_ref().map(|m| (i, m)))
                .filter(|(_, m)| m.position < bound)
        };
        let youngest = |(i, m): &(usize, &SlotMeta)| (m.position, std::cmp::Reverse(*i));
        let chosen = if candidates().all(|(_, m)| m.quality().is_some_and(f64::is_finite)) {
            candidates().min_by(|a, b| {
                let (qa, qb) = (a.1.quality().unwrap_or(0.0), b.1.quality().unwrap_or(0.0));
                qa.total_cmp(&qb)
                    .then_with(|| youngest(b).cmp(&youngest(a)))
            })
        } else {
            candidates().max_by_key(youngest)
        };
        chosen.map(|(i, m)| (Self::id(i), m))
    }

    /// Makes `slot` current; frees every slot younger than it. Returns the freed slots.
    pub fn rewind(&mut self, slot: SlotId) -> Vec<SlotId> {
        let index = usize::from(slot.0);
        let Some(target) = self.slots.get(index).cloned().flatten() else {
            return Vec::new();
        };
        let mut released = Vec::new();
        for (i, meta) in self.slots.iter_mut().enumerate().skip(1) {
            if meta.as_ref().is_some_and(|m| m.position > target.position) {
                *meta = None;
                released.push(Self::id(i));
            }
        }
        self.slots[0] = Some(target);
        released
    }

    /// Every slot's bookkeeping, slot 0 first (for [`super::ProtocolState`]).
    pub fn slots(&self) -> &[Option<SlotMeta>] {
        &self.slots
    }

    /// A ring holding `slots` (from a saved [`super::ProtocolState`], checked by the caller
    /// against the configuration's slot count).
    pub fn from_slots(config: &RingConfig, slots: Vec<Option<SlotMeta>>) -> Self {
        Self {
            ages: config.ages.clone(),
            slots,
        }
    }

    /// Sets the fingerprint of one slot's state (after a resume rebuilt the states).
    pub fn set_slot_fingerprint(&mut self, slot: SlotId, fingerprint: Option<u64>) {
        if let Some(meta) = self
            .slots
            .get_mut(usize::from(slot.0))
            .and_then(Option::as_mut)
        {
            meta.fingerprint = fingerprint;
        }
    }

    /// Positions held, by slot (for tests and reports).
    pub fn positions(&self) -> Vec<Option<u64>> {
        self.slots
            .iter()
            .map(|m| m.as_ref().map(|m| m.position))
            .collect()
    }

    /// Sets the fingerprint of every slot holding the initial state (position 0).
    pub fn set_initial_fingerprint(&mut self, fingerprint: u64) {
        for meta in self.slots.iter_mut().flatten() {
            if meta.position == 0 {
                meta.fingerprint = Some(fingerprint);
            }
        }
    }

    /// Copies the fingerprint of the current state into the slots a commit just retained.
    pub fn set_fingerprint(&mut self, update: &RingUpdate, fingerprint: Option<u64>) {
        if let Some(current) = self.slots[0].as_mut() {
            current.fingerprint = fingerprint;
        }
        for slot in &update.retain {
            if let Some(meta) = self.slots[usize::from(slot.0)].as_mut() {
                meta.fingerprint = fingerprint;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(position: u64, depth: u64) -> SlotMeta {
        SlotMeta {
            position,
            depth,
            fingerprint: None,
            controller: ControllerState {
                signal: None,
                drift: None,
                acceptance: None,
            },
        }
    }

    #[test]
    fn levels_keep_one_snapshot_between_a_and_2a_accepted_steps_old() {
        let mut ring = Ring::new(&RingConfig { ages: vec![4] });
        let first = ring.commit(meta(0, 0));
        assert_eq!(first.retain, vec![SlotId(2)]);
        assert!(first.promote.is_empty());
        for d in 1..=9 {
            ring.commit(meta(d, d));
        }
        // depth 9: newer holds the multiple 8, older the multiple 4.
        assert_eq!(ring.positions(), vec![Some(9), Some(4), Some(8)]);
        let update = ring.commit(meta(10, 10));
        assert!(update.retain.is_empty() && update.promote.is_empty());
        let update = ring.commit(meta(12, 12));
        assert_eq!(update.promote, vec![(SlotId(2), SlotId(1))]);
        assert_eq!(update.retain, vec![SlotId(2)]);
        assert_eq!(ring.positions(), vec![Some(12), Some(8), Some(12)]);
    }

    /// A probe signal whose reference ŷ is `y_hat`.
    fn probe(y_hat: f64) -> Option<Box<dyn InnovationSignal>> {
        Some(Box::new(crate::signal::ProbeSignal::new(y_hat, 0.1)))
    }

    #[test]
    fn rewind_prefers_the_best_looking_snapshot_then_the_youngest() {
        let mut ring = Ring::new(&RingConfig { ages: vec![4, 16] });
        for d in 0..=21 {
            let mut m = meta(d, d);
            // Training improves until depth 16, then damage creeps in.
            m.controller.signal = probe(if d <= 16 { 10.0 - d as f64 * 0.1 } else { 20.0 });
            ring.commit(m);
        }
        // Candidates older than 21: 20 (damaged), 16 (best), 0.
        let (_, m) = ring.rewind_target(21).unwrap();
        assert_eq!(m.position, 16);
        // Equal quality: the youngest wins.
        let mut ring = Ring::new(&RingConfig { ages: vec![4] });
        for d in 0..=9 {
            let mut m = meta(d, d);
            m.controller.signal = probe(1.0);
            ring.commit(m);
        }
        assert_eq!(ring.rewind_target(9).unwrap().1.position, 8);
        // One candidate without a quality: the youngest.
        let mut ring = Ring::new(&RingConfig { ages: vec![4] });
        for d in 0..=9 {
            let mut m = meta(d, d);
            if d != 4 {
                m.controller.signal = probe(100.0 - d as f64);
            }
            ring.commit(m);
        }
        assert_eq!(ring.rewind_target(9).unwrap().1.position, 8);
    }

    #[test]
    fn rewind_targets_the_youngest_snapshot_older_than_the_bound_and_frees_younger_ones() {
        let mut ring = Ring::new(&RingConfig { ages: vec![4, 16] });
        for d in 0..=21 {
            ring.commit(meta(d, d));
        }
        // newer/older: level 4 → 20 / 16, level 16 → 16 / 0.
        assert_eq!(
            ring.positions(),
            vec![Some(21), Some(16), Some(20), Some(0), Some(16)]
        );
        let (slot, m) = ring.rewind_target(21).unwrap();
        assert_eq!((slot, m.position), (SlotId(2), 20));
        let (slot, m) = ring.rewind_target(20).unwrap();
        assert_eq!(m.position, 16);
        assert_eq!(slot, SlotId(1), "ties go to the lowest slot");
        assert!(ring.rewind_target(0).is_none());
        let released = ring.rewind(SlotId(1));
        assert_eq!(released, vec![SlotId(2)]);
        assert_eq!(
            ring.positions(),
            vec![Some(16), Some(16), None, Some(0), Some(16)]
        );
    }
}
