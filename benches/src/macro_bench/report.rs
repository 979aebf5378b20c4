//! Result rows, the printed table and the JSON document.

use serde_json::{json, Value};
use tessera_benches::measure::Measured;

/// One measured operation.
pub struct Row {
    /// Stable key, e.g. `tessera.first_backup`.
    pub id: String,
    /// Group shown in the table (baseline, tessera, restic, borg).
    pub group: String,
    /// Operation shown in the table.
    pub op: String,
    /// The measurement.
    pub m: Measured,
    /// Bytes the MB/s figure is computed from (the image size).
    pub bytes: u64,
    /// Free text for the table.
    pub note: String,
    /// Extra machine-readable facts.
    pub extra: Value,
}

impl Row {
    pub fn new(id: &str, group: &str, op: &str, m: Measured, bytes: u64, note: String) -> Self {
        Self {
            id: id.to_string(),
            group: group.to_string(),
            op: op.to_string(),
            m,
            bytes,
            note,
            extra: Value::Null,
        }
    }

    pub fn mb_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.m.wall_s.max(1e-9)
    }

    fn to_json(&self) -> Value {
        json!({
            "id": self.id, "group": self.group, "op": self.op,
            "seconds": self.m.wall_s, "mb_per_s": self.mb_s(),
            "user_s": self.m.user_s, "sys_s": self.m.sys_s,
            "max_rss_kib": self.m.max_rss_kib,
            "bytes": self.bytes, "note": self.note, "extra": self.extra,
        })
    }
}

/// A ratio between two rows' rates (or sizes).
pub struct Ratio {
    pub label: String,
    pub value: f64,
    pub context: String,
}

/// Everything measured in one run.
#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub ratios: Vec<Ratio>,
}

impl Report {
    pub fn push(&mut self, row: Row) {
        eprintln!(
            "  {:<9} {:<34} {:>8.2} s {:>8.0} MB/s  {}",
            row.group,
            row.op,
            row.m.wall_s,
            row.mb_s(),
            row.note
        );
        self.rows.push(row);
    }

    pub fn get(&self, id: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.id == id)
    }

    /// Adds `a`'s rate over `b`'s rate, when both were measured.
    pub fn rate_ratio(&mut self, label: &str, a: &str, b: &str, context: &str) {
        if let (Some(x), Some(y)) = (self.get(a), self.get(b)) {
            let value = x.mb_s() / y.mb_s().max(1e-9);
            self.ratios.push(Ratio {
                label: label.to_string(),
                value,
                context: context.to_string(),
            });
        }
    }

    pub fn print(&self) {
        println!();
        println!(
            "{:<9} {:<34} {:>9} {:>9} {:>8} {:>6} {:>8}  notes",
            "group", "operation", "seconds", "MB/s", "CPU s", "cores", "RSS MiB"
        );
        println!("{}", "-".repeat(120));
        // Grouped by tool (the rows were measured phase by phase, interleaved).
        let order = ["baseline", "tessera", "restic", "borg"];
        let rank = |g: &str| order.iter().position(|o| *o == g).unwrap_or(order.len());
        let mut rows: Vec<&Row> = self.rows.iter().collect();
        rows.sort_by_key(|r| rank(&r.group));
        let mut last_group = "";
        for r in rows {
            if !last_group.is_empty() && last_group != r.group {
                println!();
            }
            last_group = &r.group;
            println!(
                "{:<9} {:<34} {:>9.2} {:>9.0} {:>8.2} {:>6.2} {:>8.0}  {}",
                r.group,
                r.op,
                r.m.wall_s,
                r.mb_s(),
                r.m.user_s + r.m.sys_s,
                r.m.cpu_util(),
                r.m.max_rss_kib as f64 / 1024.0,
                r.note
            );
        }
        if !self.ratios.is_empty() {
            println!();
            println!("{:<58} {:>8}  context", "ratio", "value");
            println!("{}", "-".repeat(120));
            for q in &self.ratios {
                println!("{:<58} {:>8.2}  {}", q.label, q.value, q.context);
            }
        }
    }

    pub fn to_json(&self, header: &Value) -> Value {
        json!({
            "header": header,
            "rows": self.rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            "ratios": self.ratios.iter().map(|q| json!({
                "label": q.label, "value": q.value, "context": q.context,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Bytes as MiB/GiB text.
pub fn human(n: u64) -> String {
    let v = n as f64;
    if v >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", v / (1024.0 * 1024.0 * 1024.0))
    } else if v >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", v / (1024.0 * 1024.0))
    } else if v >= 1024.0 {
        format!("{:.1} KiB", v / 1024.0)
    } else {
        format!("{n} B")
    }
}
