//! The bytes of a disk an image holds, and how they fall onto the chunk grid.
//!
//! An image stores an [`Extents`] set: the system region outside partitions
//! plus, per partition, the used blocks from its filesystem (or the whole
//! partition where no reader could vouch for a map). Backup reads exactly
//! these bytes; restore writes exactly these bytes. Both walk the disk in
//! fixed-size *cells* of the chunk grid ([`Extents::cells`]): a cell's chunk
//! is its used bytes with everything unused as zeros, so the same disk
//! content always gives the same chunk and a second backup lines up with the
//! first.

use lifeline_disk::Range;

/// Sorted, disjoint, non-adjacent, non-empty byte ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extents {
    ranges: Vec<Range>,
}

impl Extents {
    /// Build from ranges in any order (overlapping and empty ones allowed).
    pub fn from_ranges(mut v: Vec<Range>) -> Self {
        v.retain(|r| !r.is_empty());
        v.sort_unstable();
        let mut out: Vec<Range> = Vec::with_capacity(v.len());
        for r in v {
            match out.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => out.push(r),
            }
        }
        Extents { ranges: out }
    }

    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    /// Total bytes covered.
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.len()).sum()
    }

    /// The last byte covered + 1 (0 when empty).
    pub fn end(&self) -> u64 {
        self.ranges.last().map_or(0, |r| r.end)
    }

    /// Ranges of `[0, size)` *not* covered: what `--rest zero|discard` treats.
    pub fn complement(&self, size: u64) -> Vec<Range> {
        let mut out = Vec::new();
        let mut pos = 0;
        for r in &self.ranges {
            if r.start >= size {
                break;
            }
            if r.start > pos {
                out.push(Range::new(pos, r.start));
            }
            pos = r.end;
        }
        if pos < size {
            out.push(Range::new(pos, size));
        }
        out
    }

    /// The cells of a grid of `cell` bytes that hold at least one covered
    /// byte, in disk order, each with the covered ranges inside it (absolute
    /// disk offsets). Cells past `disk_size` do not exist; the last one may be
    /// short.
    pub fn cells(&self, cell: u64, disk_size: u64) -> Cells<'_> {
        assert!(cell > 0);
        Cells { ranges: &self.ranges, next: 0, pos: 0, cell, disk_size }
    }
}

/// One cell of the chunk grid and what of it is covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    /// Cell number: the cell starts at `index × cell size`.
    pub index: u64,
    /// Where the cell starts on the disk, and its length (the last cell of a
    /// disk may be short).
    pub start: u64,
    pub len: u64,
    /// Covered ranges within the cell, absolute, sorted.
    pub used: Vec<Range>,
}

impl Cell {
    pub fn used_bytes(&self) -> u64 {
        self.used.iter().map(|r| r.len()).sum()
    }
}

/// Iterator of [`Extents::cells`].
pub struct Cells<'a> {
    ranges: &'a [Range],
    /// First range not yet wholly consumed.
    next: usize,
    /// Everything before `pos` has been handed out.
    pos: u64,
    cell: u64,
    disk_size: u64,
}

impl Iterator for Cells<'_> {
    type Item = Cell;

    fn next(&mut self) -> Option<Cell> {
        // Skip ranges (or their parts) already handed out.
        while let Some(r) = self.ranges.get(self.next) {
            if r.end <= self.pos {
                self.next += 1;
            } else {
                break;
            }
        }
        let first = self.ranges.get(self.next)?;
        let from = first.start.max(self.pos);
        if from >= self.disk_size {
            return None;
        }
        let index = from / self.cell;
        let start = index * self.cell;
        let end = (start + self.cell).min(self.disk_size);
        let mut used = Vec::new();
        let mut i = self.next;
        while let Some(r) = self.ranges.get(i) {
            if r.start >= end {
                break;
            }
            let s = r.start.max(start).max(self.pos);
            let e = r.end.min(end);
            if s < e {
                used.push(Range::new(s, e));
            }
            if r.end > end {
                break;
            }
            i += 1;
        }
        self.pos = end;
        Some(Cell { index, start, len: end - start, used })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(a: u64, b: u64) -> Range {
        Range::new(a, b)
    }

    #[test]
    fn merge_and_complement() {
        let e = Extents::from_ranges(vec![r(10, 20), r(0, 5), r(5, 7), r(15, 30), r(40, 40)]);
        assert_eq!(e.ranges(), &[r(0, 7), r(10, 30)]);
        assert_eq!(e.bytes(), 27);
        assert_eq!(e.complement(50), vec![r(7, 10), r(30, 50)]);
        assert_eq!(e.complement(25), vec![r(7, 10)]);
        assert_eq!(Extents::default().complement(3), vec![r(0, 3)]);
    }

    #[test]
    fn cells_split_ranges_on_the_grid() {
        let e = Extents::from_ranges(vec![r(2, 5), r(6, 13), r(30, 31), r(38, 45)]);
        let cells: Vec<Cell> = e.cells(8, 42).collect();
        let got: Vec<(u64, Vec<Range>)> = cells.iter().map(|c| (c.index, c.used.clone())).collect();
        assert_eq!(
            got,
            vec![
                (0, vec![r(2, 5), r(6, 8)]),
                (1, vec![r(8, 13)]),
                (3, vec![r(30, 31)]),
                (4, vec![r(38, 40)]),
                (5, vec![r(40, 42)]), // clipped to the disk, short cell
            ]
        );
        assert_eq!(cells[3].len, 8);
        assert_eq!(cells[4].len, 2);
        // Every covered byte inside the disk appears exactly once.
        let total: u64 = cells.iter().map(|c| c.used_bytes()).sum();
        assert_eq!(total, e.bytes() - 3);
    }
}
