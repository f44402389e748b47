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

    /// FNV-1a 64 by hand: the offset basis, then for each byte xor and multiply by the prime.
    fn fnv1a(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        })
    }

    #[test]
    fn every_value_kind_hashes_all_its_little_endian_bytes() {
        let x = 1.5_f32;
        assert_eq!(
            Fingerprint::new().f32s(&[x]).finish(),
            fnv1a(&x.to_bits().to_le_bytes())
        );
        assert_eq!(
            Fingerprint::new().u64(0x0102_0304_0506_0708).finish(),
            fnv1a(&[8, 7, 6, 5, 4, 3, 2, 1])
        );
        assert_eq!(
            Fingerprint::new().f64s(&[2.0]).finish(),
            fnv1a(&2.0_f64.to_le_bytes())
        );
        assert_eq!(Fingerprint::new().finish(), fnv1a(&[]));
        // A difference in the highest byte only (the sign) changes the fingerprint.
        assert_ne!(
            Fingerprint::new().f32s(&[1.0]).finish(),
            Fingerprint::new().f32s(&[-1.0]).finish()
        );
        assert_ne!(
            Fingerprint::new().u64(1 << 63).finish(),
            Fingerprint::new().u64(0).finish()
        );
    }

    #[test]
    fn every_bit_matters() {
        let a = Fingerprint::new().f64s(&[0.0, 1.0]).finish();
        let b = Fingerprint::new().f64s(&[-0.0, 1.0]).finish();
        let c = Fingerprint::new().f64s(&[0.0, 1.0]).finish();
        assert_ne!(a, b);
        assert_eq!(a, c);
    }
}
