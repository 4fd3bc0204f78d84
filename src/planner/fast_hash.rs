//! A fast hasher for the planner's sets and maps of image names, record keys and app ids. Their keys come from
//! the device's own target and engine, so std's SipHash (which resists keys chosen to
//! collide) buys nothing here, and it was a fifth of planning time. The mixing step is the
//! one rustc's `FxHasher` uses: a rotate, an xor and a multiply per eight bytes.

use std::hash::{BuildHasherDefault, Hasher};

#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(c);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_i64(&mut self, n: i64) {
        self.add(n as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` with [`FxHasher`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// A `HashSet` with [`FxHasher`].
pub type FastSet<T> = std::collections::HashSet<T, BuildHasherDefault<FxHasher>>;

/// A set of `items` made with room for `at_most` of them, so that one built from a flattened
/// or filtered iterator (whose size is not known ahead) does not rehash on the way.
pub fn set_of<T: std::hash::Hash + Eq>(
    at_most: usize,
    items: impl IntoIterator<Item = T>,
) -> FastSet<T> {
    let mut set = FastSet::with_capacity_and_hasher(at_most, BuildHasherDefault::default());
    set.extend(items);
    set
}

#[cfg(test)]
mod tests {
    use super::FastSet;

    #[test]
    fn sets_of_strings_and_tuples_find_what_they_hold() {
        let names: FastSet<&str> = ["a", "registry/app/svc:1", "", "12345678x"]
            .into_iter()
            .collect();
        assert!(names.contains("registry/app/svc:1") && names.contains(""));
        assert!(!names.contains("registry/app/svc:2") && !names.contains("12345678"));
        let keys: FastSet<(i64, &str)> = (0..1000).map(|i| (i, "svc")).collect();
        assert_eq!(keys.len(), 1000);
        assert!(keys.contains(&(999, "svc")) && !keys.contains(&(1000, "svc")));
    }
}
