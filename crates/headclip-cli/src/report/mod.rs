//! Rendering `headclip test`'s results: the Markdown table, the CSV report, output names for
//! saved maps, ROC / PR charts as SVG and HTML galleries. Pure formatting, except
//! [`gallery`], which decodes the few images it shows.

pub mod gallery;
pub mod names;
pub mod svg;
pub mod table;

/// A metric as a table shows it: ×100 with one decimal, `—` where absent.
pub fn percent(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{:.1}", v * 100.0),
        _ => ABSENT.to_string(),
    }
}

/// What an absent metric looks like in tables and pages (never 0 or NaN).
pub const ABSENT: &str = "—";

/// One CSV field, quoted (RFC 4180) when it holds a comma, quote, line break or edge spaces.
pub fn csv_field(text: &str) -> String {
    let needs =
        text.contains([',', '"', '\n', '\r']) || text.starts_with(' ') || text.ends_with(' ');
    if needs {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// One CSV line (with its newline) from fields.
pub fn csv_line<S: AsRef<str>>(fields: &[S]) -> String {
    let mut line = fields
        .iter()
        .map(|f| csv_field(f.as_ref()))
        .collect::<Vec<_>>()
        .join(",");
    line.push('\n');
    line
}

/// Text made safe for HTML and SVG content and attribute values.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percents_and_absent_cells() {
        assert_eq!(percent(Some(0.91234)), "91.2");
        assert_eq!(percent(Some(1.0)), "100.0");
        assert_eq!(percent(None), "—");
        assert_eq!(percent(Some(f64::NAN)), "—");
    }

    #[test]
    fn csv_quoting() {
        assert_eq!(
            csv_line(&["a", "b,c", "say \"x\"", ""]),
            "a,\"b,c\",\"say \"\"x\"\"\",\n"
        );
        assert_eq!(html_escape("<a & 'b'>"), "&lt;a &amp; &#39;b&#39;&gt;");
    }
}
