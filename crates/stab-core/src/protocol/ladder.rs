//! The escalation ladder: which recovery action fires when rejections keep coming, and how it
//! steps back down.

use crate::config::{LadderConfig, Rung};

/// The ladder's state: the rung reached, the recent decisions since the last rung (`true`: a
/// rejection), accepted steps in a row, and where the last rewind went (a later rewind goes
/// further back until the ladder has cooled down).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Ladder {
    config: LadderConfig,
    /// The rungs this driver can carry out, lowest first (the configuration's, less those
    /// dropped by [`Ladder::keep_rungs`]).
    rungs: Vec<Rung>,
    level: u32,
    recent: std::collections::VecDeque<bool>,
    accepted: u64,
    last_rewind: Option<u64>,
}

impl Ladder {
    pub fn new(config: &LadderConfig) -> Self {
        Self {
            config: config.clone(),
            rungs: config.rungs.clone(),
            level: 0,
            recent: std::collections::VecDeque::new(),
            accepted: 0,
            last_rewind: None,
        }
    }

    /// Keeps the configuration's rungs for which `usable` holds (a driver that cannot reset its
    /// optimizer, a ring with no rewind target): a rung that cannot act is not on the ladder.
    pub fn keep_rungs(&mut self, usable: impl Fn(Rung) -> bool) {
        self.rungs = self
            .config
            .rungs
            .iter()
            .copied()
            .filter(|&r| usable(r))
            .collect();
    }

    /// The rungs on the ladder, lowest first.
    pub fn rungs(&self) -> &[Rung] {
        &self.rungs
    }

    /// Rungs fired and not yet cooled down.
    pub fn level(&self) -> u32 {
        self.level
    }

    /// Where the last rewind went, while the ladder has not cooled down.
    pub fn last_rewind(&self) -> Option<u64> {
        self.last_rewind
    }

    pub fn note_rewind(&mut self, position: u64) {
        self.last_rewind = Some(self.last_rewind.map_or(position, |p| p.min(position)));
    }

    fn remember(&mut self, rejected: bool) {
        let window = usize::try_from(self.config.rejection_window).unwrap_or(usize::MAX);
        if self.recent.len() >= window {
            self.recent.pop_front();
        }
        self.recent.push_back(rejected);
    }

    /// An accepted step: it enters the window of recent decisions; after `cooldown` of them in a
    /// row the ladder steps down one rung.
    pub fn on_accept(&mut self) {
        self.remember(false);
        self.accepted += 1;
        if self.level > 0 && self.accepted >= self.config.cooldown {
            self.level -= 1;
            self.accepted = 0;
            if self.level == 0 {
                self.last_rewind = None;
            }
        }
    }

    /// A rejected step: `true` when the window now holds `rejections_per_rung` rejections and a
    /// rung must fire.
    pub fn on_reject(&mut self) -> bool {
        self.accepted = 0;
        self.remember(true);
        let rejections = self.recent.iter().filter(|&&rejected| rejected).count() as u64;
        if rejections >= self.config.rejections_per_rung {
            self.recent.clear();
            true
        } else {
            false
        }
    }

    /// Climbs one rung: its level (1-based) and kind, or `None` when the ladder is exhausted.
    pub fn climb(&mut self) -> Option<(u32, Rung)> {
        self.accepted = 0;
        self.recent.clear();
        self.level = self.level.saturating_add(1);
        let index = usize::try_from(self.level - 1).ok()?;
        self.rungs.get(index).map(|&rung| (self.level, rung))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder() -> Ladder {
        Ladder::new(&LadderConfig {
            enabled: true,
            rejections_per_rung: 2,
            rejection_window: 3,
            rungs: vec![Rung::Rewind, Rung::ResetOptimizer],
            cooldown: 3,
        })
    }

    #[test]
    fn fires_every_r_rejections_and_runs_out() {
        let mut l = ladder();
        assert!(!l.on_reject());
        assert!(l.on_reject());
        assert_eq!(l.climb(), Some((1, Rung::Rewind)));
        assert!(!l.on_reject());
        assert!(l.on_reject());
        assert_eq!(l.climb(), Some((2, Rung::ResetOptimizer)));
        assert_eq!(l.climb(), None);
    }

    #[test]
    fn dropped_rungs_are_not_climbed() {
        let mut l = ladder();
        l.keep_rungs(|rung| rung != Rung::ResetOptimizer);
        assert_eq!(l.rungs(), &[Rung::Rewind]);
        assert_eq!(l.climb(), Some((1, Rung::Rewind)));
        assert_eq!(l.climb(), None, "the reset rung is gone");
        l.keep_rungs(|_| true);
        assert_eq!(l.rungs(), &[Rung::Rewind, Rung::ResetOptimizer]);
    }

    #[test]
    fn rejections_count_within_the_window_and_cooldown_steps_down() {
        let mut l = ladder();
        l.on_reject();
        l.on_accept();
        assert!(
            l.on_reject(),
            "two rejections among the last three decisions"
        );
        let mut l = ladder();
        l.on_reject();
        l.on_accept();
        l.on_accept();
        assert!(
            !l.on_reject(),
            "the first rejection left the window of three"
        );
        l.climb();
        l.note_rewind(40);
        l.note_rewind(50);
        assert_eq!(l.last_rewind(), Some(40), "rewinds only go further back");
        l.on_accept();
        l.on_accept();
        assert_eq!(l.level(), 1);
        l.on_accept();
        assert_eq!(l.level(), 0);
        assert_eq!(l.last_rewind(), None);
    }
}
