//! Slot lists on the command line (`0-5460,9000`), as `engram cluster reclaim` takes them
//! and `engram cluster status` prints them.

use engram_proto::format_slot_ranges;
use engram_proto::limits::SLOT_COUNT;

/// Slots named on the command line: sorted, without repeats, each below `SLOT_COUNT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotList(pub Vec<u32>);

/// Parses comma-separated slots and inclusive ranges of slots (`0-5460,9000`). Refuses
/// empty items, reversed ranges and slots past the last one, naming the culprit, so a
/// typo cannot reclaim slots nobody meant.
pub fn parse_slots(text: &str) -> Result<SlotList, String> {
    let mut slots = Vec::new();
    for item in text.split(',') {
        let (start, end) = parse_item(item.trim())?;
        slots.extend(start..=end);
    }
    slots.sort_unstable();
    slots.dedup();
    Ok(SlotList(slots))
}

/// One item of a slot list: `N` or `A-B`, as an inclusive range.
fn parse_item(item: &str) -> Result<(u32, u32), String> {
    let (start, end) = match item.split_once('-') {
        Some((start, end)) => (parse_slot(start.trim(), item)?, parse_slot(end.trim(), item)?),
        None => {
            let slot = parse_slot(item, item)?;
            (slot, slot)
        }
    };
    if start > end {
        return Err(format!("slot range {item:?} ends before it starts"));
    }
    Ok((start, end))
}

fn parse_slot(text: &str, item: &str) -> Result<u32, String> {
    let slot: u32 = text
        .parse()
        .map_err(|_| format!("{item:?} is not a slot or a range of slots like 0-5460"))?;
    if slot >= SLOT_COUNT {
        return Err(format!("slot {slot} is out of range: slots are 0-{}", SLOT_COUNT - 1));
    }
    Ok(slot)
}

/// Sorted inclusive ranges with the adjacent ones joined.
pub fn merge_ranges(ranges: impl IntoIterator<Item = (u32, u32)>) -> Vec<(u32, u32)> {
    let mut merged: Vec<(u32, u32)> = Vec::new();
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if last.1.checked_add(1) == Some(start) => last.1 = end,
            _ => merged.push((start, end)),
        }
    }
    merged
}

/// Sorted inclusive ranges as the shortest list, in the syntax [`parse_slots`] reads
/// (the protocol crate's [`format_slot_ranges`], which the control plane logs with).
pub fn format_slots(ranges: impl IntoIterator<Item = (u32, u32)>) -> String {
    let slots: Vec<u32> = ranges.into_iter().flat_map(|(start, end)| start..=end).collect();
    format_slot_ranges(&slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_ranges_parse_sorted_without_repeats() {
        assert_eq!(parse_slots("0-3,9000").unwrap(), SlotList(vec![0, 1, 2, 3, 9000]));
        assert_eq!(parse_slots(" 7 , 5-6,6").unwrap(), SlotList(vec![5, 6, 7]));
        assert_eq!(parse_slots("16383").unwrap(), SlotList(vec![16383]));
        assert_eq!(parse_slots("0-16383").unwrap().0.len(), SLOT_COUNT as usize);
    }

    #[test]
    fn bad_slot_lists_are_refused_with_the_reason() {
        for (text, reason) in [
            ("16384", "out of range"),
            ("0-16384", "out of range"),
            ("5-3", "ends before it starts"),
            ("", "not a slot"),
            ("1,,2", "not a slot"),
            ("a-b", "not a slot"),
            ("-1", "not a slot"),
            ("1-2-3", "not a slot"),
        ] {
            let error = parse_slots(text).unwrap_err();
            assert!(error.contains(reason), "{text:?}: {error}");
        }
    }

    #[test]
    fn ranges_print_merged_in_the_syntax_they_parse_from() {
        assert_eq!(format_slots([(0, 5460), (5461, 5461), (9000, 9000)]), "0-5461,9000");
        assert_eq!(format_slots([]), "");
        let printed = format_slots([(0, 3), (10, 12)]);
        assert_eq!(parse_slots(&printed).unwrap().0, vec![0, 1, 2, 3, 10, 11, 12]);
    }
}
