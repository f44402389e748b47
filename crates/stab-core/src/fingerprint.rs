//! Bit-exact fingerprints of states, for the restore check of Proposition 7.4.

/// Incremental 64-bit FNV-1a hash over raw bytes: cheap, deterministic across runs and platforms,
/// and sensitive to every bit (so `-0.0` and `0.0`, or two NaN payloads, differ).
#[derive(Debug, Clone, Copy)]
pub struct Fingerprint {
    hash: u64,
}

impl Default for Fingerprint {
    fn default() -> Self {
        Self {
            hash: 0xcbf2_9ce4_8422_2325,
        }
    }
}

impl Fingerprint {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Mixes in raw bytes.
    pub fn bytes(mut self, bytes: &[u8]) -> Self {
        for byte in bytes {
            self.hash ^= u64::from(*byte);
            self.hash = self.hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    /// Mixes in the bit patterns of `f64`s.
    pub fn f64s(self, values: &[f64]) -> Self {
        values
            .iter()
            .fold(self, |fp, v| fp.bytes(&v.to_bits().to_le_bytes()))
    }

    /// Mixes in the bit patterns of `f32`s.
    pub fn f32s(self, values: &[f32]) -> Self {
        values
            .iter()
            .fold(self, |fp, v| fp.bytes(&v.to_bits().to_le_bytes()))
    }

    /// Mixes in one `u64` (a step counter, a length).
    pub fn u64(self, value: u64) -> Self {
        self.bytes(&value.to_le_bytes())
    }

    /// The hash.
    pub fn finish(self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bit_matters() {
        let a = Fingerprint::new().f64s(&[0.0, 1.0]).finish();
        let b = Fingerprint::new().f64s(&[-0.0, 1.0]).finish();
        let c = Fingerprint::new().f64s(&[0.0, 1.0]).finish();
        assert_ne!(a, b);
        assert_eq!(a, c);
    }
}
