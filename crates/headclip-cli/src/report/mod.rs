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
}
