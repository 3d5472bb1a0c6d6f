//! ROC and precision–recall charts as standalone SVG, written by hand.

use std::fmt::Write;

use headclip::eval::curves::{thin, Points};

/// Text made safe for SVG content and attribute values. The charts stay hand-written: they are
/// computed coordinates and paths, which a template would only wrap.
fn xml_escape(text: &str) -> String {
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

/// One curve of a chart.
pub struct Series<'a> {
    /// Legend text.
    pub name: String,
    /// CSS colour.
    pub colour: &'a str,
    /// Points in [0, 1]², drawing order.
    pub points: &'a [(f64, f64)],
}

/// A chart's fixed parts.
pub struct Chart<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// x axis label.
    pub x_label: &'a str,
    /// y axis label.
    pub y_label: &'a str,
    /// A dashed reference line (a random classifier), from one point to the other.
    pub reference: Option<((f64, f64), (f64, f64))>,
    /// Put the legend at the bottom right (ROC) rather than the bottom left (PR).
    pub legend_right: bool,
}

const WIDTH: f64 = 440.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 58.0;
const RIGHT: f64 = 18.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
/// Points closer than this fraction of the plot's side are merged when drawing.
const RESOLUTION: f64 = 1.0 / 800.0;

fn px(x: f64) -> f64 {
    LEFT + x.clamp(0.0, 1.0) * (WIDTH - LEFT - RIGHT)
}

fn py(y: f64) -> f64 {
    TOP + (1.0 - y.clamp(0.0, 1.0)) * (HEIGHT - TOP - BOTTOM)
}

/// The chart as an SVG document. Curves are thinned to what the plot can show; with no series
/// the plot says that the curve is undefined.
pub fn chart(chart: &Chart<'_>, series: &[Series<'_>]) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="14" font-weight="bold">{}</text>
"#,
        WIDTH / 2.0,
        xml_escape(chart.title)
    );
    for i in 0..=5 {
        let v = i as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#ddd"/><line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/>"##,
            py(0.0),
            py(1.0),
            px(0.0),
            px(1.0),
            x = px(v),
            y = py(v)
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{v:.1}</text>"#,
            px(v),
            py(0.0) + 16.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{v:.1}</text>"#,
            px(0.0) - 6.0,
            py(v) + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        px(0.0),
        py(1.0),
        px(1.0) - px(0.0),
        py(0.0) - py(1.0)
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (px(0.0) + px(1.0)) / 2.0,
        HEIGHT - 12.0,
        xml_escape(chart.x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{y}" text-anchor="middle" transform="rotate(-90 16 {y})">{}</text>"#,
        xml_escape(chart.y_label),
        y = (py(0.0) + py(1.0)) / 2.0
    );
    if let Some(((x0, y0), (x1, y1))) = chart.reference {
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#888" stroke-dasharray="5,4"/>"##,
            px(x0),
            py(y0),
            px(x1),
            py(y1)
        );
    }
    if series.is_empty() {
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#666">undefined: one class only</text>"##,
            (px(0.0) + px(1.0)) / 2.0,
            (py(0.0) + py(1.0)) / 2.0
        );
    }
    for serie in series {
        let points: Points = thin(serie.points, RESOLUTION);
        let mut path = String::new();
        for (i, &(x, y)) in points.iter().enumerate() {
            let _ = write!(
                path,
                "{}{:.2},{:.2}",
                if i == 0 { "M" } else { " L" },
                px(x),
                py(y)
            );
        }
        let _ = writeln!(
            s,
            r#"<path d="{path}" fill="none" stroke="{}" stroke-width="2"/>"#,
            xml_escape(serie.colour)
        );
    }
    let legend_x = if chart.legend_right {
        px(1.0) - 190.0
    } else {
        px(0.0) + 10.0
    };
    if !series.is_empty() {
        let height = 18.0 * series.len() as f64 + 8.0;
        let _ = writeln!(
            s,
            r##"<rect x="{}" y="{}" width="184" height="{height}" fill="white" fill-opacity="0.85" stroke="#ccc"/>"##,
            legend_x - 6.0,
            py(0.0) - 4.0 - height
        );
    }
    for (i, serie) in series.iter().enumerate() {
        let y = py(0.0) - 14.0 - 18.0 * (series.len() - 1 - i) as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{legend_x}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            legend_x + 20.0,
            xml_escape(serie.colour),
            legend_x + 26.0,
            y + 4.0,
            xml_escape(&serie.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_is_an_svg_document() {
        let points = [(0.0, 0.0), (0.5, 0.8), (1.0, 1.0)];
        let svg = chart(
            &Chart {
                title: "ROC <bottle>",
                x_label: "FPR",
                y_label: "TPR",
                reference: Some(((0.0, 0.0), (1.0, 1.0))),
                legend_right: true,
            },
            &[Series {
                name: "image (AUROC 80.0)".into(),
                colour: "#1f77b4",
                points: &points,
            }],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("ROC &lt;bottle&gt;"));
        assert_eq!(xml_escape("<a & 'b'>"), "&lt;a &amp; &#39;b&#39;&gt;");
        assert!(svg.contains("<path d=\"M"));
        let empty = chart(
            &Chart {
                title: "PR",
                x_label: "recall",
                y_label: "precision",
                reference: None,
                legend_right: false,
            },
            &[],
        );
        assert!(empty.contains("undefined"));
    }
}
