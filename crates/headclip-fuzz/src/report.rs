//! The summary of a run, as a table for people and as JSON for scripts and the README.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::run::Summary;

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1 << 20) as f64)
}

/// One line per target with its counts, then its refusals by kind, then the findings.
pub fn table(s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<11} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9} {:>11} {:>11}",
        "target",
        "inputs",
        "accepted",
        "refused",
        "findings",
        "seconds",
        "slowest s",
        "heap MiB",
        "rss+ MiB"
    );
    for t in &s.targets {
        let refused: u64 = t.refused.values().sum();
        let _ = writeln!(
            out,
            "{:<11} {:>8} {:>9} {:>8} {:>8} {:>8.1} {:>9.3} {:>11} {:>11}",
            t.name,
            t.inputs,
            t.accepted,
            refused,
            t.findings,
            t.seconds,
            t.slowest_input_seconds,
            mib(t.peak_input_heap),
            mib(t.peak_input_resident_growth)
        );
    }
    out.push_str("(heap MiB: most heap one input had live; rss+ MiB: most resident growth during one input, libtorch targets)\n");
    for t in &s.targets {
        let mut kinds: Vec<_> = t.refused.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let list: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            out,
            "{} refused: {}",
            t.name,
            if list.is_empty() {
                "none".into()
            } else {
                list.join(", ")
            }
        );
        for note in &t.notes {
            let _ = writeln!(out, "{} {note}", t.name);
        }
    }
    let _ = writeln!(
        out,
        "total: {} inputs in {:.1} s, seed {}, harness resident peak {} MiB, {} findings, {} errors",
        s.inputs(),
        s.seconds,
        s.seed,
        mib(s.peak_resident),
        s.findings.len(),
        s.errors.len()
    );
    for f in &s.findings {
        let known = f
            .known
            .as_ref()
            .map(|n| format!(" [known: {n}]"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "FINDING{known} {} #{} {}: {} ({})",
            f.target,
            f.index,
            f.kind,
            f.detail,
            f.file.display()
        );
    }
    for e in &s.errors {
        let _ = writeln!(out, "ERROR {e}");
    }
    out
}

/// Every count of the run, machine-readable.
pub fn json(s: &Summary, cpu_seconds: (f64, f64)) -> Value {
    json!({
        "seed": s.seed,
        "inputs": s.inputs(),
        "seconds": s.seconds,
        "cpu_seconds": {"harness": cpu_seconds.0, "children": cpu_seconds.1},
        "peak_resident_bytes": s.peak_resident,
        "targets": s.targets.iter().map(|t| json!({
            "name": t.name,
            "inputs": t.inputs,
            "accepted": t.accepted,
            "refused": t.refused,
            "findings": t.findings,
            "seconds": t.seconds,
            "slowest_input_seconds": t.slowest_input_seconds,
            "peak_input_heap_bytes": t.peak_input_heap,
            "peak_input_resident_growth_bytes": t.peak_input_resident_growth,
            "notes": t.notes,
        })).collect::<Vec<_>>(),
        "findings": s.findings.iter().map(|f| json!({
            "target": f.target, "index": f.index, "kind": f.kind, "detail": f.detail,
            "file": f.file.display().to_string(), "known": f.known,
        })).collect::<Vec<_>>(),
        "errors": s.errors,
    })
}
