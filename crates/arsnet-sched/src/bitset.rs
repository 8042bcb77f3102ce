//! A growable bitset of finished segments. It exists so that "lowest segment not done" is a
//! word-at-a-time scan instead of a per-segment walk, and so that memory follows the highest
//! segment actually finished, not the segment count a (possibly hostile) header announces.

/// Bits default to clear; storage grows only when a bit is set.
#[derive(Clone, Debug, Default)]
pub(crate) struct Bitset {
    words: Vec<u64>,
}

impl Bitset {
    /// Whether bit `index` is set.
    pub(crate) fn get(&self, index: u64) -> bool {
        usize::try_from(index / 64)
            .ok()
            .and_then(|word| self.words.get(word))
            .is_some_and(|word| word & (1 << (index % 64)) != 0)
    }

    /// Sets bit `index`; returns whether it was clear before. An index beyond what this
    /// platform can address stays clear (only reachable on 32-bit targets with > 2^37 bits).
    pub(crate) fn set(&mut self, index: u64) -> bool {
        let Ok(word) = usize::try_from(index / 64) else {
            return false;
        };
        if word >= self.words.len() {
            self.words.resize(word.saturating_add(1), 0);
        }
        let Some(slot) = self.words.get_mut(word) else {
            return false;
        };
        let mask = 1 << (index % 64);
        let was_clear = *slot & mask == 0;
        *slot |= mask;
        was_clear
    }

    /// Clears bit `index`; returns whether it was set before.
    pub(crate) fn clear(&mut self, index: u64) -> bool {
        let slot = usize::try_from(index / 64)
            .ok()
            .and_then(|word| self.words.get_mut(word));
        let Some(slot) = slot else {
            return false;
        };
        let mask = 1 << (index % 64);
        let was_set = *slot & mask != 0;
        *slot &= !mask;
        was_set
    }

    /// The first clear bit at or after `from`. Full words are skipped whole, so a scan over a
    /// long run of set bits costs one step per 64 of them.
    pub(crate) fn next_clear(&self, from: u64) -> u64 {
        let Ok(mut word) = usize::try_from(from / 64) else {
            return from;
        };
        let mut mask = u64::MAX << (from % 64);
        loop {
            let base = (word as u64).saturating_mul(64);
            let Some(bits) = self.words.get(word) else {
                return base.max(from);
            };
            let clear = !bits & mask;
            if clear != 0 {
                return base + u64::from(clear.trailing_zeros());
            }
            word += 1;
            mask = u64::MAX;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_and_scan() {
        let mut bits = Bitset::default();
        assert!(!bits.get(5));
        assert_eq!(bits.next_clear(0), 0);
        assert!(bits.set(0));
        assert!(!bits.set(0), "second set reports it was already set");
        for i in 1..200 {
            bits.set(i);
        }
        assert_eq!(bits.next_clear(0), 200);
        assert_eq!(bits.next_clear(63), 200);
        assert_eq!(
            bits.next_clear(500),
            500,
            "beyond storage everything is clear"
        );
        bits.set(201);
        assert_eq!(bits.next_clear(200), 200);
        assert_eq!(bits.next_clear(201), 202);
        assert!(bits.get(201) && !bits.get(202));
    }

    #[test]
    fn huge_indices_do_not_allocate_on_read() {
        let bits = Bitset::default();
        assert!(!bits.get(u64::MAX));
        assert_eq!(bits.next_clear(u64::MAX), u64::MAX);
        assert_eq!(bits.next_clear(u64::MAX - 3), u64::MAX - 3);
    }
}
