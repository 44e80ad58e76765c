//! A set of slots as a bitmap: 2 KiB for all of them, membership in one load.

use engram_proto::limits::SLOT_COUNT;

const WORDS: usize = SLOT_COUNT as usize / 64;

#[derive(Clone, PartialEq, Eq)]
pub struct SlotSet {
    words: Box<[u64; WORDS]>,
}

impl Default for SlotSet {
    fn default() -> Self {
        SlotSet {
            words: Box::new([0; WORDS]),
        }
    }
}

impl std::fmt::Debug for SlotSet {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_list().entries(self.ranges()).finish()
    }
}

impl SlotSet {
    /// Slots outside `0..SLOT_COUNT` are ignored.
    pub fn insert(&mut self, slot: u32) {
        if slot < SLOT_COUNT {
            self.words[slot as usize / 64] |= 1 << (slot % 64);
        }
    }

    pub fn remove(&mut self, slot: u32) {
        if slot < SLOT_COUNT {
            self.words[slot as usize / 64] &= !(1 << (slot % 64));
        }
    }

    pub fn contains(&self, slot: u32) -> bool {
        slot < SLOT_COUNT && self.words[slot as usize / 64] & (1 << (slot % 64)) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|word| *word == 0)
    }

    /// Whether every slot of `self` is in `other`.
    pub fn is_subset_of(&self, other: &SlotSet) -> bool {
        self.words
            .iter()
            .zip(other.words.iter())
            .all(|(mine, theirs)| mine & !theirs == 0)
    }

    /// The slots of `self` that are not in `other`.
    pub fn difference(&self, other: &SlotSet) -> SlotSet {
        let mut difference = self.clone();
        for (mine, theirs) in difference.words.iter_mut().zip(other.words.iter()) {
            *mine &= !theirs;
        }
        difference
    }

    /// The slots in both.
    pub fn intersection(&self, other: &SlotSet) -> SlotSet {
        let mut both = self.clone();
        for (mine, theirs) in both.words.iter_mut().zip(other.words.iter()) {
            *mine &= theirs;
        }
        both
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..SLOT_COUNT).filter(|slot| self.contains(*slot))
    }

    /// The set as sorted inclusive ranges, as a stream's first batch carries it.
    pub fn ranges(&self) -> Vec<(u32, u32)> {
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        for slot in self.iter() {
            match ranges.last_mut() {
                Some((_, end)) if *end + 1 == slot => *end = slot,
                _ => ranges.push((slot, slot)),
            }
        }
        ranges
    }

    /// The set of inclusive ranges; `None` if one is reversed or outside the slots.
    pub fn from_ranges(ranges: &[(u32, u32)]) -> Option<SlotSet> {
        let mut set = SlotSet::default();
        for &(start, end) in ranges {
            if start > end || end >= SLOT_COUNT {
                return None;
            }
            for slot in start..=end {
                set.insert(slot);
            }
        }
        Some(set)
    }
}

impl FromIterator<u32> for SlotSet {
    fn from_iter<I: IntoIterator<Item = u32>>(slots: I) -> Self {
        let mut set = SlotSet::default();
        for slot in slots {
            set.insert(slot);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_trip_and_bad_ranges_are_refused() {
        let set: SlotSet = [0, 1, 2, 7, 9, 10, SLOT_COUNT - 1].into_iter().collect();
        let ranges = set.ranges();
        assert_eq!(ranges, vec![(0, 2), (7, 7), (9, 10), (SLOT_COUNT - 1, SLOT_COUNT - 1)]);
        assert_eq!(SlotSet::from_ranges(&ranges), Some(set));
        assert_eq!(SlotSet::from_ranges(&[(5, 4)]), None);
        assert_eq!(SlotSet::from_ranges(&[(0, SLOT_COUNT)]), None);
    }

    #[test]
    fn difference_and_intersection_split_a_set() {
        let all: SlotSet = (0..200).collect();
        let some: SlotSet = (60..70).chain(150..300).collect();
        assert_eq!(all.difference(&some), (0..60).chain(70..150).collect());
        assert_eq!(all.intersection(&some), (60..70).chain(150..200).collect());
    }
}
