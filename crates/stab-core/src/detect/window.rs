/// A bounded window of the most recent accepted values, with the robust and classical summaries
/// the detectors need.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Window {
    values: std::collections::VecDeque<f64>,
    capacity: usize,
}

/// 1 / Φ⁻¹(3/4): scales a median absolute deviation to the standard deviation of a normal law.
const MAD_TO_SIGMA: f64 = 1.482_602_218_505_602;

impl Window {
    /// An empty window keeping at most `capacity` values (validated by the configuration; a
    /// capacity of 0 acts as 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            values: std::collections::VecDeque::with_capacity(capacity.min(1024)),
            capacity,
        }
    }

    /// Adds a value, dropping the oldest when full.
    pub fn push(&mut self, value: f64) {
        if self.values.len() == self.capacity {
            self.values.pop_front();
        }
        self.values.push_back(value);
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// `true` when no value is held.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Median and the normal-consistent median absolute deviation (`1.4826 · MAD`), or `None`
    /// when empty.
    pub fn median_and_spread(&self) -> Option<(f64, f64)> {
        let mut sorted: Vec<f64> = self.values.iter().copied().collect();
        let median = median_of(&mut sorted)?;
        let mut deviations: Vec<f64> = sorted.iter().map(|v| (v - median).abs()).collect();
        let mad = median_of(&mut deviations)?;
        Some((median, MAD_TO_SIGMA * mad))
    }
}

fn median_of(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if !values.len().is_multiple_of(2) {
        values[mid]
    } else {
        values[mid - 1] / 2.0 + values[mid] / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_most_recent_values() {
        let mut w = Window::new(3);
        assert!(w.is_empty());
        w.push(0.0);
        assert!(!w.is_empty());
        for v in [1.0, 2.0, 3.0, 4.0] {
            w.push(v);
        }
        assert_eq!(w.len(), 3);
        assert_eq!(
            w.median_and_spread().unwrap().0,
            3.0,
            "the oldest value was dropped"
        );
    }

    #[test]
    fn median_and_spread_of_odd_and_even_windows() {
        let mut w = Window::new(8);
        for v in [5.0, 1.0, 3.0] {
            w.push(v);
        }
        let (median, spread) = w.median_and_spread().unwrap();
        assert_eq!(median, 3.0);
        assert_eq!(spread, MAD_TO_SIGMA * 2.0);
        w.push(100.0);
        let (median, spread) = w.median_and_spread().unwrap();
        assert_eq!(median, 4.0);
        // deviations 1, 3, 1, 96 → MAD = 2.
        assert_eq!(spread, MAD_TO_SIGMA * 2.0);
        assert!(Window::new(4).median_and_spread().is_none());
    }
}
