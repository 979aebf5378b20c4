//! The `changed_list` target's checks (see `fuzz_targets/changed_list.rs`).

use std::fmt::Write;

use tessera_engine::sources::changed_list::ChangedList;

use crate::checks::assert_ranges;

/// The list in the canonical form: header, size, states, one `extent` line per range.
pub fn render(list: &ChangedList) -> String {
    let mut out = format!(
        "tessera-changed-blocks v1\nsize {}\nbase-state {}\nstate {}\n",
        list.size, list.base_state, list.state
    );
    for (s, e) in &list.extents {
        let _ = writeln!(out, "extent {s} {}", e - s);
    }
    out
}

/// Parses `text`; a list that parses has sorted, disjoint ranges inside its size, two
/// different states, and parses back from its canonical form to the same list.
pub fn check(text: &str) {
    let Ok(list) = ChangedList::parse(text) else {
        return;
    };
    assert_ranges(&list.extents, list.size);
    assert_ne!(list.base_state, list.state);
    let canonical = render(&list);
    assert_eq!(
        ChangedList::parse(&canonical).as_ref(),
        Ok(&list),
        "{canonical}"
    );
}
