//! A fixed-size set of segment indexes (one bit each), sized by a validated manifest: used
//! to deduplicate journal records and to track written and committed segments.

/// A set of segment indexes below a fixed bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentSet {
    words: Vec<u64>,
    bound: u64,
    len: u64,
}

impl SegmentSet {
    /// An empty set for indexes `0..bound`. `bound` must come from a validated layout
    /// (at most `MAX_SEGMENTS`), which keeps the allocation small.
    pub(crate) fn new(bound: u64) -> Self {
        let words = usize::try_from(bound.div_ceil(64)).unwrap_or(0);
        SegmentSet {
            words: vec![0; words],
            bound,
            len: 0,
        }
    }

    /// Adds `index`; returns false when it was already present or out of range.
    pub(crate) fn insert(&mut self, index: u64) -> bool {
        let Some(word) = self.word_mut(index) else {
            return false;
        };
        let mask = 1u64 << (index % 64);
        if *word & mask != 0 {
            return false;
        }
        *word |= mask;
        self.len += 1;
        true
    }

    /// Removes `index`; returns whether it was present.
    pub(crate) fn remove(&mut self, index: u64) -> bool {
        let Some(word) = self.word_mut(index) else {
            return false;
        };
        let mask = 1u64 << (index % 64);
        if *word & mask == 0 {
            return false;
        }
        *word &= !mask;
        self.len -= 1;
        true
    }

    pub(crate) fn contains(&self, index: u64) -> bool {
        if index >= self.bound {
            return false;
        }
        let word = usize::try_from(index / 64)
            .ok()
            .and_then(|w| self.words.get(w));
        word.is_some_and(|w| w & (1u64 << (index % 64)) != 0)
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The smallest index below the bound that is absent.
    pub(crate) fn first_missing(&self) -> Option<u64> {
        (0..self.bound).find(|&i| !self.contains(i))
    }

    /// Members in ascending order.
    pub(crate) fn to_vec(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
        for (w, &word) in self.words.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let bit = u64::from(bits.trailing_zeros());
                out.push(w as u64 * 64 + bit);
                bits &= bits - 1;
            }
        }
        out
    }

    fn word_mut(&mut self, index: u64) -> Option<&mut u64> {
        if index >= self.bound {
            return None;
        }
        usize::try_from(index / 64)
            .ok()
            .and_then(|w| self.words.get_mut(w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations() {
        let mut s = SegmentSet::new(130);
        assert!(s.insert(129));
        assert!(s.insert(0));
        assert!(s.insert(64));
        assert!(!s.insert(64));
        assert!(!s.insert(130));
        assert_eq!(s.to_vec(), vec![0, 64, 129]);
        assert_eq!(s.len(), 3);
        assert_eq!(s.first_missing(), Some(1));
        assert!(s.remove(0));
        assert!(!s.remove(0));
        assert!(!s.contains(0));
        assert!(!s.contains(1000));
        let mut full = SegmentSet::new(3);
        (0..3).for_each(|i| {
            full.insert(i);
        });
        assert_eq!(full.first_missing(), None);
        assert_eq!(SegmentSet::new(0).first_missing(), None);
    }
}
