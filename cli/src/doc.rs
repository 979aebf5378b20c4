//! The `--json` documents: an engine report serialized with `"ok"` added (and, when the
//! command found problems, `"error"` and `"kind"`), and the document of a failure. Keys come
//! out sorted, as `serde_json` maps keep them.

use serde::Serialize;
use serde_json::{Map, Value};
use tessera_engine::ErrorKind;

use crate::output::print_json;

/// Prints `report` as the document of a successful command.
pub fn print_ok<T: Serialize>(report: &T) {
    print_doc(report, None);
}

/// Prints `report` as the document of a command that ran but found problems: `"ok":
/// false`, `"error"` saying what, `"kind"` (with `None`, a success).
pub fn print_doc<T: Serialize>(report: &T, problems: Option<(ErrorKind, String)>) {
    let mut doc = match serde_json::to_value(report) {
        Ok(Value::Object(map)) => map,
        Ok(other) => {
            let mut map = Map::new();
            map.insert("report".into(), other);
            map
        }
        Err(e) => {
            eprintln!("error: cannot encode output as JSON: {e}");
            return;
        }
    };
    doc.insert("ok".into(), Value::Bool(problems.is_none()));
    if let Some((kind, error)) = problems {
        doc.insert("error".into(), Value::String(error));
        doc.insert("kind".into(), Value::String(kind.as_str().into()));
    }
    print_json(&doc);
}

/// A report nested under `"report"` in its document (`verify`).
#[derive(Serialize)]
pub struct Nested<'a, T> {
    /// The report.
    pub report: &'a T,
}

/// A failed command: `error: MESSAGE` on stderr and, with `json`, `{"ok": false, "error":
/// MESSAGE, "kind": KIND}` on stdout.
pub fn print_failure(err: &anyhow::Error, kind: ErrorKind, json: bool) {
    let message = error_message(err);
    eprintln!("error: {message}");
    if json {
        print_doc(&Map::new(), Some((kind, message)));
    }
}

/// A command line clap refused (rendered as `text`), as a `usage` failure with the usage
/// text.
pub fn print_usage_error(text: &str) {
    let first_paragraph = text.split("\n\n").next().unwrap_or("invalid command line");
    let first = first_paragraph
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let mut doc = Map::new();
    doc.insert("usage".into(), Value::String(text.into()));
    print_doc(
        &doc,
        Some((ErrorKind::Usage, first.trim_start_matches("error: ").into())),
    );
}

/// The error and its causes joined with ": ", leaving out a cause whose text the message
/// already holds (engine errors quote their OS error, which is also their source).
fn error_message(err: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in err.chain().map(ToString::to_string) {
        if message.is_empty() {
            message = cause;
        } else if !message.contains(&cause) {
            message = format!("{message}: {cause}");
        }
    }
    message
}
