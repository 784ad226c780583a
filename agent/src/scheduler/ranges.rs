//! A set of byte ranges: where a file changed.

/// Sorted, non-overlapping, non-adjacent half-open ranges `[start, end)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    pub fn new() -> RangeSet {
        RangeSet::default()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().copied()
    }

    /// Total bytes covered.
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    /// Adds `[start, start + len)`, merging with overlapping or touching ranges.
    pub fn insert(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let end = start.saturating_add(len);
        // First range that ends at or after `start` (could touch or overlap).
        let i = self.ranges.partition_point(|&(_, e)| e < start);
        let mut j = i;
        let (mut s, mut e) = (start, end);
        while j < self.ranges.len() && self.ranges[j].0 <= end {
            s = s.min(self.ranges[j].0);
            e = e.max(self.ranges[j].1);
            j += 1;
        }
        self.ranges.splice(i..j, [(s, e)]);
    }

    pub fn union(&mut self, other: &RangeSet) {
        for (s, e) in other.iter() {
            self.insert(s, e - s);
        }
    }

    /// The ranges clipped to `[0, len)`.
    pub fn clipped(&self, len: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().filter(move |(s, _)| *s < len).map(move |&(s, e)| (s, e.min(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_overlapping_and_touching() {
        let mut r = RangeSet::new();
        r.insert(10, 5); // 10..15
        r.insert(20, 5); // 20..25
        r.insert(15, 1); // touches 10..15 → 10..16
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(10, 16), (20, 25)]);
        r.insert(12, 10); // 12..22 bridges both
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(10, 25)]);
        r.insert(0, 3);
        r.insert(100, 0);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(0, 3), (10, 25)]);
        assert_eq!(r.bytes(), 18);
    }

    #[test]
    fn clips_to_length() {
        let mut r = RangeSet::new();
        r.insert(0, 10);
        r.insert(20, 10);
        assert_eq!(r.clipped(25).collect::<Vec<_>>(), vec![(0, 10), (20, 25)]);
        assert_eq!(r.clipped(5).collect::<Vec<_>>(), vec![(0, 5)]);
    }

    #[test]
    fn random_inserts_match_a_bitmap() {
        let mut seed = 7u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut r = RangeSet::new();
        let mut bits = vec![false; 512];
        for _ in 0..200 {
            let s = next() % 500;
            let l = next() % 12;
            r.insert(s, l);
            for b in &mut bits[s as usize..(s + l) as usize] {
                *b = true;
            }
        }
        let mut from_ranges = vec![false; 512];
        for (s, e) in r.iter() {
            for b in &mut from_ranges[s as usize..e as usize] {
                *b = true;
            }
        }
        assert_eq!(bits, from_ranges);
        // Canonical: no two ranges touch.
        assert!(r.iter().zip(r.iter().skip(1)).all(|(a, b)| a.1 < b.0));
    }
}
