//! What the progress engine computes from: the current values and task updates, the 督办
//! statements, and the centre's outages, as the store hands them over. The store produces these; the engine
//! depends on nothing below it but the plan.

use std::cmp::Ordering;

use std::sync::Arc;

use serde::Serialize;

/// A name many rows and obligations share (a plan's, a unit's, an indicator's, a period's):
/// one allocation per distinct name, not one per row or obligation (a large plan has millions
/// of each; [`Names`] gives equal names one allocation). Reads, compares and serializes as the
/// text itself.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Arc<str>);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Name {
    fn from(text: &str) -> Self {
        Name(Arc::from(text))
    }
}

impl From<String> for Name {
    fn from(text: String) -> Self {
        Name(Arc::from(text))
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Gives equal names one [`Name`] within a read of many rows: a name seen before is looked up,
/// not allocated again. Each distinct name is numbered as it is first seen (0, 1, ...).
#[derive(Default)]
pub struct Names(std::collections::HashMap<Name, u32, foldhash::fast::RandomState>);

impl Names {
    pub fn get(&mut self, text: &str) -> Name {
        self.numbered(text).0
    }

    /// The name and its number.
    pub fn numbered(&mut self, text: &str) -> (Name, u32) {
        if let Some((name, &number)) = self.0.get_key_value(text) {
            return (name.clone(), number);
        }
        let name = Name::from(text);
        let number = u32::try_from(self.0.len()).expect("fewer than 2^32 distinct names");
        self.0.insert(name.clone(), number);
        (name, number)
    }

    /// The names by their numbers: `by_number()[number]`.
    pub fn by_number(&self) -> Vec<Name> {
        let mut names = vec![None; self.0.len()];
        for (name, &number) in &self.0 {
            names[number as usize] = Some(name.clone());
        }
        names.into_iter().flatten().collect()
    }

    /// Each number's rank among the names in byte order: `ranks()[number]`.
    pub fn ranks(&self) -> Vec<u32> {
        let mut names: Vec<(&Name, u32)> = self.0.iter().map(|(n, &i)| (n, i)).collect();
        names.sort_unstable();
        let mut ranks = vec![0; names.len()];
        for (rank, (_, number)) in (0..).zip(names) {
            ranks[number as usize] = rank;
        }
        ranks
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValueRow {
    pub plan_id: Name,
    pub indicator_id: Name,
    pub unit_id: Name,
    pub period: Name,
    pub value: f64,
    pub note: String,
    pub revision: i64,
    pub issued_at_ms: i64,
    pub seq: i64,
    pub report_pk: i64,
    pub updated_at_ms: i64,
    pub first_received_at_ms: i64,
    /// When the report that first delivered this value was signed (its `issued_at_ms`).
    pub first_issued_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRow {
    pub plan_id: String,
    pub task_id: String,
    pub milestone_id: String,
    pub unit_id: String,
    pub period: String,
    pub percent: f64,
    pub status: String,
    pub note: String,
    pub revision: i64,
    pub issued_at_ms: i64,
    pub seq: i64,
    pub report_pk: i64,
    pub updated_at_ms: i64,
    pub first_received_at_ms: i64,
}

/// An interval when the centre was not serving, `[from_ms, to_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Outage {
    pub from_ms: i64,
    pub to_ms: i64,
}

/// A stored statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementRow {
    pub unit_id: String,
    pub seq: i64,
    pub issued_at_ms: i64,
    pub received_at_ms: i64,
    pub case_id: String,
    pub kind: String,
    pub date: String,
    pub note: String,
    pub reference: String,
    pub about_unit: String,
}

/// Sorts `rows` by `cmp` (stable, and only when they are not in order already) and keeps one
/// row per key: of two with one key, the later given.
pub(super) fn in_key_order<T>(rows: &mut Vec<T>, cmp: impl Fn(&T, &T) -> Ordering) {
    if !rows.is_sorted_by(|a, b| cmp(a, b) != Ordering::Greater) {
        rows.sort_by(&cmp);
    }
    rows.dedup_by(|later, kept| {
        let same = cmp(later, kept) == Ordering::Equal;
        if same {
            std::mem::swap(later, kept);
        }
        same
    });
}

/// Puts each of `changed` in place of the row of `rows` with its key (`cmp` equal), or among
/// them in `cmp` order; of two changed rows with one key, the later wins. `rows` ends sorted by
/// `cmp`, one row per key (sorted first if it was not: a database may order text by another
/// collation; of two rows with one key, the later kept), which is only checked when they are
/// not `known_sorted` already.
pub(super) fn upsert_sorted<T>(
    rows: &mut Vec<T>,
    mut changed: Vec<T>,
    known_sorted: bool,
    cmp: impl Fn(&T, &T) -> Ordering,
) {
    if !known_sorted {
        in_key_order(rows, &cmp);
    }
    if changed.is_empty() {
        return;
    }
    // Stable: rows of one key stay in the order given.
    changed.sort_by(&cmp);
    let mut added: Vec<T> = Vec::new();
    for row in changed {
        match rows.binary_search_by(|held| cmp(held, &row)) {
            Ok(at) => rows[at] = row,
            Err(_) => match added.last_mut() {
                Some(last) if cmp(last, &row) == Ordering::Equal => *last = row,
                _ => added.push(row),
            },
        }
    }
    if added.is_empty() {
        return;
    }
    let held = std::mem::take(rows);
    rows.reserve_exact(held.len() + added.len());
    let mut held = held.into_iter().peekable();
    let mut added = added.into_iter().peekable();
    while let (Some(a), Some(b)) = (held.peek(), added.peek()) {
        let next = if cmp(a, b) == Ordering::Less {
            held.next()
        } else {
            added.next()
        };
        rows.extend(next);
    }
    rows.extend(held);
    rows.extend(added);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(rows: &[(u8, &str)], changed: &[(u8, &str)]) -> Vec<(u8, String)> {
        let mut rows: Vec<(u8, String)> = rows.iter().map(|&(k, v)| (k, v.into())).collect();
        let changed = changed.iter().map(|&(k, v)| (k, v.into())).collect();
        upsert_sorted(&mut rows, changed, false, |a, b| a.0.cmp(&b.0));
        rows
    }

    fn owned(rows: &[(u8, &str)]) -> Vec<(u8, String)> {
        rows.iter().map(|&(k, v)| (k, v.into())).collect()
    }

    #[test]
    fn a_changed_row_replaces_the_one_of_its_key_and_a_new_key_joins_in_order() {
        assert_eq!(
            upsert(
                &[(1, "a"), (3, "c"), (5, "e")],
                &[(4, "d"), (3, "C"), (0, "z"), (9, "i")]
            ),
            owned(&[(0, "z"), (1, "a"), (3, "C"), (4, "d"), (5, "e"), (9, "i")])
        );
        assert_eq!(
            upsert(&[], &[(2, "b"), (1, "a")]),
            owned(&[(1, "a"), (2, "b")])
        );
        assert_eq!(upsert(&[(1, "a")], &[]), owned(&[(1, "a")]));
    }

    #[test]
    fn of_two_changed_rows_with_one_key_the_later_wins() {
        assert_eq!(
            upsert(&[(1, "a")], &[(1, "x"), (2, "y"), (1, "X"), (2, "Y")]),
            owned(&[(1, "X"), (2, "Y")])
        );
    }

    #[test]
    fn rows_not_known_sorted_are_sorted_even_when_nothing_changed_and_known_ones_are_not_checked() {
        let mut rows = owned(&[(5, "e"), (1, "a")]);
        upsert_sorted(&mut rows, Vec::new(), false, |a, b| a.0.cmp(&b.0));
        assert_eq!(rows, owned(&[(1, "a"), (5, "e")]));
        // Said to be sorted: taken at its word (the caller vouches for it).
        let mut rows = owned(&[(5, "e"), (1, "a")]);
        upsert_sorted(&mut rows, Vec::new(), true, |a, b| a.0.cmp(&b.0));
        assert_eq!(rows, owned(&[(5, "e"), (1, "a")]));
    }

    #[test]
    fn rows_not_known_sorted_end_with_one_row_per_key_the_later_kept() {
        assert_eq!(
            upsert(&[(3, "c"), (1, "a"), (3, "C"), (1, "A")], &[(2, "b")]),
            owned(&[(1, "A"), (2, "b"), (3, "C")])
        );
    }

    #[test]
    fn rows_in_another_order_are_sorted_before_the_changes_go_in() {
        assert_eq!(
            upsert(&[(5, "e"), (1, "a"), (3, "c")], &[(3, "C"), (2, "b")]),
            owned(&[(1, "a"), (2, "b"), (3, "C"), (5, "e")])
        );
    }

    #[test]
    fn equal_names_share_one_allocation_numbered_as_first_seen_and_ranked_by_their_bytes() {
        let mut names = Names::default();
        let read = ["u2", "u10", "区", "u2", "a", "u10"].map(|text| names.numbered(text));
        let numbers: Vec<u32> = read.iter().map(|(_, number)| *number).collect();
        assert_eq!(numbers, [0, 1, 2, 0, 3, 1]);
        assert_eq!(
            read[0].0.as_ptr(),
            read[3].0.as_ptr(),
            "one allocation for u2"
        );
        assert_eq!(
            read[1].0.as_ptr(),
            read[5].0.as_ptr(),
            "one allocation for u10"
        );
        assert_eq!(read[3].0, "u2");
        // Byte order: "a" < "u10" < "u2" < "区".
        assert_eq!(names.ranks(), [2, 1, 3, 0]);
        assert_eq!(names.get("u10").as_ptr(), read[1].0.as_ptr());
    }
}
