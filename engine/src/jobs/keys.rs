//! Which key of a TOML document a byte offset falls in, for error messages: `toml` reports
//! where a bad value is (a span) but not, publicly, under which key.

use std::fmt::Write as _;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One step of a key path.
enum Step {
    Key(String),
    /// 1-based position in an array, and whether the item is a table (`[[array]]`).
    Item(usize, bool),
}

/// The key path at `offset` of `text`, rendered as `[table].key`, `[[array]]#2.key` or
/// `key` (top level); `None` when the offset is in no key or value.
pub fn key_at(text: &str, offset: usize) -> Option<String> {
    let doc = DeTable::parse(text).ok()?;
    let mut path = Vec::new();
    walk_table(doc.get_ref(), offset, &mut path);
    (!path.is_empty()).then(|| render(&path))
}

fn contains(span: &std::ops::Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

fn walk_table(table: &DeTable<'_>, offset: usize, path: &mut Vec<Step>) {
    for (key, value) in table {
        if contains(&key.span(), offset) {
            path.push(Step::Key(key.get_ref().to_string()));
            return;
        }
        if contains(&value.span(), offset) || inside(value, offset) {
            path.push(Step::Key(key.get_ref().to_string()));
            walk_value(value, offset, path);
            return;
        }
    }
}

/// Whether `offset` lies within any key or value under `value` (tables made by headers
/// have spans that need not cover their keys).
fn inside(value: &Spanned<DeValue<'_>>, offset: usize) -> bool {
    match value.get_ref() {
        DeValue::Table(t) => t.iter().any(|(k, v)| {
            contains(&k.span(), offset) || contains(&v.span(), offset) || inside(v, offset)
        }),
        DeValue::Array(a) => a
            .iter()
            .any(|v| contains(&v.span(), offset) || inside(v, offset)),
        _ => false,
    }
}

fn walk_value(value: &Spanned<DeValue<'_>>, offset: usize, path: &mut Vec<Step>) {
    match value.get_ref() {
        DeValue::Table(t) => walk_table(t, offset, path),
        DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                if contains(&item.span(), offset) || inside(item, offset) {
                    path.push(Step::Item(i + 1, item.get_ref().is_table()));
                    walk_value(item, offset, path);
                    return;
                }
            }
        }
        _ => {}
    }
}

fn render(path: &[Step]) -> String {
    let mut out = String::new();
    // Keys since the last item of an array of tables.
    let mut names: Vec<String> = Vec::new();
    for step in path {
        match step {
            Step::Key(k) => names.push(k.clone()),
            Step::Item(i, true) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let _ = write!(out, "[[{}]]#{i}", names.join("."));
                names.clear();
            }
            Step::Item(i, false) => {
                if let Some(last) = names.last_mut() {
                    let _ = write!(last, "[{i}]");
                }
            }
        }
    }
    // Of the keys left, the last is the key and the others the tables holding it.
    if let Some((key, tables)) = names.split_last() {
        match (out.is_empty(), tables.is_empty()) {
            (true, true) => out.push_str(key),
            (true, false) => {
                let _ = write!(out, "[{}].{key}", tables.join("."));
            }
            (false, true) => {
                let _ = write!(out, ".{key}");
            }
            (false, false) => {
                let _ = write!(out, ".{}.{key}", tables.join("."));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::key_at;

    #[test]
    fn offsets_map_to_the_keys_an_operator_reads() {
        let text = "stale-after = \"1d\"\n[schedule]\ncron = \"x\"\n[[backup.disk]]\nname = \"a\"\n[[backup.disk]]\nname = \"b\"\n";
        let at = |needle: &str| key_at(text, text.find(needle).unwrap()).unwrap();
        assert_eq!(at("\"1d\""), "stale-after");
        assert_eq!(at("\"x\""), "[schedule].cron");
        assert_eq!(at("\"a\""), "[[backup.disk]]#1.name");
        assert_eq!(at("\"b\""), "[[backup.disk]]#2.name");
        let text = "[[notify]]\non = [\"failure\", \"sometimes\"]\n";
        assert_eq!(
            key_at(text, text.find("\"sometimes\"").unwrap()).unwrap(),
            "[[notify]]#1.on[2]"
        );
    }
}
