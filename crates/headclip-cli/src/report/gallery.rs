//! `--pictures`: per category ROC / PR charts and a static HTML gallery of its most instructive
//! images (thumbnail, heat-map overlay, mask), and an index page over all categories.
//!
//! Only the chosen images' small maps are kept while scoring (see
//! [`headclip::eval::select`]); the images and masks themselves are decoded again here, at
//! thumbnail size, when their category is done.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use headclip::eval::curves::{image_curves, Curves, PixelHistogram};
use headclip::eval::select::Pick;
use headclip::eval::{
    AuproVariants, CategoryResult, DatasetResult, ImageRecord, MetricSet, ModelSummary,
};
use headclip::write_atomically;
use headclip_data::datasets::{Category, Dataset};
use headclip_data::images::{self, DecodeLimits, RgbImage};
use headclip_data::viz;

use super::svg::{chart, Chart, Series};
use super::{html_escape, percent};

/// Side of the square thumbnails (images are shown as the model sees them: stretched to a
/// square).
pub const THUMB: u32 = 192;

/// A map kept for an overlay: values and side, at most [`THUMB`] on a side.
pub type SmallMap = (Vec<f32>, usize);

/// Box-averages an `side`×`side` map down to at most [`THUMB`]×[`THUMB`] (kept as is when it is
/// smaller), so that a gallery candidate costs little memory.
pub fn small_map(map: &[f32], side: usize) -> SmallMap {
    let to = side.min(THUMB as usize);
    if to == side {
        return (map.to_vec(), side);
    }
    let bounds: Vec<(usize, usize)> = (0..to)
        .map(|o| (o * side / to, ((o + 1) * side / to).max(o * side / to + 1)))
        .collect();
    let mut out = Vec::with_capacity(to * to);
    for &(y0, y1) in &bounds {
        for &(x0, x1) in &bounds {
            let mut sum = 0.0f64;
            for y in y0..y1 {
                sum += map[y * side + x0..y * side + x1]
                    .iter()
                    .map(|&v| f64::from(v))
                    .sum::<f64>();
            }
            out.push((sum / ((y1 - y0) * (x1 - x0)) as f64) as f32);
        }
    }
    (out, to)
}

const IMAGE_COLOUR: &str = "#1f77b4";
const PIXEL_COLOUR: &str = "#d62728";

/// Writes `roc.svg` and `pr.svg` into `dir`: image-level curves (exact) and pixel-level ones
/// (from the histogram) where defined.
pub fn write_curves(
    dir: &Path,
    title: &str,
    records: &[ImageRecord],
    histogram: Option<&PixelHistogram>,
    metrics: &MetricSet,
) -> Result<()> {
    let scores: Vec<f32> = records.iter().map(|r| r.score).collect();
    let labels: Vec<bool> = records.iter().map(|r| r.anomalous).collect();
    let image: Option<Curves> = image_curves(&scores, &labels);
    let pixel: Option<Curves> = histogram.and_then(|h| h.curves());

    let mut roc = Vec::new();
    let mut pr = Vec::new();
    if let Some(c) = &image {
        roc.push(Series {
            name: format!("image (AUROC {})", percent(metrics.image_auroc)),
            colour: IMAGE_COLOUR,
            points: &c.roc,
        });
        pr.push(Series {
            name: format!("image (AP {})", percent(metrics.image_ap)),
            colour: IMAGE_COLOUR,
            points: &c.pr,
        });
    }
    if let Some(c) = &pixel {
        roc.push(Series {
            name: format!("pixel (AUROC {})", percent(metrics.pixel_auroc)),
            colour: PIXEL_COLOUR,
            points: &c.roc,
        });
        pr.push(Series {
            name: format!("pixel (AP {})", percent(metrics.pixel_ap)),
            colour: PIXEL_COLOUR,
            points: &c.pr,
        });
    }
    let roc_svg = chart(
        &Chart {
            title: &format!("ROC — {title}"),
            x_label: "false positive rate",
            y_label: "true positive rate",
            reference: Some(((0.0, 0.0), (1.0, 1.0))),
            legend_right: true,
        },
        &roc,
    );
    // A random classifier's precision is the fraction of positives; image level shown.
    let base = image
        .as_ref()
        .or(pixel.as_ref())
        .map(|c| c.positive_fraction);
    let pr_svg = chart(
        &Chart {
            title: &format!("Precision–recall — {title}"),
            x_label: "recall",
            y_label: "precision",
            reference: base.map(|b| ((0.0, b), (1.0, b))),
            legend_right: false,
        },
        &pr,
    );
    write_atomically(&dir.join("roc.svg"), roc_svg.as_bytes())
        .with_context(|| format!("writing {}", dir.join("roc.svg").display()))?;
    write_atomically(&dir.join("pr.svg"), pr_svg.as_bytes())
        .with_context(|| format!("writing {}", dir.join("pr.svg").display()))?;
    Ok(())
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:0.8em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}\
td.l,th.l{text-align:left}img.t{width:192px;height:192px;image-rendering:auto;display:block}\
td.l small{display:block;max-width:18em;word-break:break-all;color:#555}.bad{color:#b00}.charts img{margin-right:1em}.scale{width:240px;height:12px;display:inline-block;vertical-align:middle}";

fn colour_scale() -> String {
    let stops: Vec<String> = (0..=10)
        .map(|i| {
            let [r, g, b] = viz::colormap(i as f32 / 10.0);
            format!("rgb({r},{g},{b}) {}%", i * 10)
        })
        .collect();
    format!(
        "0 <span class=\"scale\" style=\"background:linear-gradient(to right,{})\"></span> 1",
        stops.join(",")
    )
}

fn metrics_table(columns: &[headclip::eval::Metric], metrics: &MetricSet) -> String {
    let mut s = String::from("<table><tr>");
    for m in columns {
        let _ = write!(s, "<th>{}</th>", html_escape(m.label()));
    }
    s.push_str("</tr><tr>");
    for &m in columns {
        let _ = write!(s, "<td>{}</td>", percent(metrics.get(m)));
    }
    s.push_str("</tr></table>");
    s
}

fn grey_png(values: &[u8], side: u32) -> Result<Vec<u8>> {
    let pixels = values
        .iter()
        .flat_map(|&v| [if v != 0 { 255 } else { 0 }; 3])
        .collect();
    Ok(viz::encode_png(&RgbImage::new(side, side, pixels)?)?)
}

/// What a category page shows.
pub struct CategoryPage<'a> {
    /// The data set's display name.
    pub dataset: &'a str,
    /// The category.
    pub category: &'a Category,
    /// Its figures.
    pub result: &'a CategoryResult,
    /// Every sample's scores, in sample order.
    pub records: &'a [ImageRecord],
    /// The chosen images, worst-ranked first, with their small maps.
    pub picks: Vec<Pick<SmallMap>>,
    /// Which AUPRO(s) to show.
    pub aupro: AuproVariants,
}

/// Writes the category's gallery into `dir`: `index.html` and `thumbs/*.png` (image, overlay
/// and, where the category has masks, mask of each chosen image), re-decoding just those
/// images. The charts (`roc.svg`, `pr.svg`) are expected next to it ([`write_curves`]).
pub fn write_category(dir: &Path, page: CategoryPage<'_>, limits: &DecodeLimits) -> Result<()> {
    let thumbs = dir.join("thumbs");
    std::fs::create_dir_all(&thumbs).with_context(|| format!("creating {}", thumbs.display()))?;
    let with_masks = page.category.has_masks;
    // Ranking against the other class needs both classes.
    let both_classes = page.result.normal > 0 && page.result.anomalous > 0;
    let title = format!("{} / {}", page.dataset, page.category.name);
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body>\n\
         <p><a href=\"../../index.html\">all categories</a></p>\n<h1>{t}</h1>\n<p>{} images: {} normal, {} anomalous{}.</p>\n{}\n\
         <div class=\"charts\"><img src=\"roc.svg\" alt=\"ROC curves\"><img src=\"pr.svg\" alt=\"precision-recall curves\"></div>\n",
        page.result.images,
        page.result.normal,
        page.result.anomalous,
        if with_masks { format!(", {} anomalous regions", page.result.regions) } else { ", no masks (image level only)".into() },
        metrics_table(&page.aupro.columns(), &page.result.metrics),
        t = html_escape(&title),
    );
    let _ = write!(
        html,
        "<h2>Most instructive images</h2>\n<p>The lowest-scored anomalous images and the highest-scored normal images, \
         worst-ranked first: <i>ranked wrong</i> is the fraction of images of the other class that score at least as high \
         (for an anomalous image) or at most as high (for a normal one). Overlay colours: anomaly map on a fixed scale, {}.</p>\n\
         <table><tr><th>#</th><th class=\"l\">label</th><th>score</th><th>global</th><th>pixel</th><th>ranked wrong</th>\
         <th class=\"l\">image</th><th class=\"l\">anomaly map</th>{}</tr>\n",
        colour_scale(),
        if with_masks { "<th class=\"l\">mask</th>" } else { "" }
    );
    for (rank, pick) in page.picks.iter().enumerate() {
        let sample = &page.category.samples[pick.index];
        let record_label = match (&sample.defect, sample.anomalous) {
            (Some(d), _) => format!("anomalous ({d})"),
            (None, true) => "anomalous".into(),
            (None, false) => "normal".into(),
        };
        let img = images::read_rgb(&sample.image, limits).with_context(|| {
            format!("decoding {} again for the gallery", sample.image.display())
        })?;
        let thumb = images::resize_bicubic(&img, THUMB);
        drop(img);
        let (map, side) = &pick.payload;
        let overlay = viz::overlay(&thumb, map, *side);
        let stem = format!("{:03}", rank + 1);
        let image_name = format!("{stem}_image.png");
        let overlay_name = format!("{stem}_overlay.png");
        write_atomically(&thumbs.join(&image_name), &viz::encode_png(&thumb)?)?;
        write_atomically(&thumbs.join(&overlay_name), &viz::encode_png(&overlay)?)?;
        let mask_cell = if !with_masks {
            String::new()
        } else if let Some(mask_path) = &sample.mask {
            let mask = images::read_mask(mask_path, THUMB, limits)
                .with_context(|| format!("decoding {} for the gallery", mask_path.display()))?;
            let mask_name = format!("{stem}_mask.png");
            write_atomically(&thumbs.join(&mask_name), &grey_png(&mask.values, THUMB)?)?;
            format!(
                "<td class=\"l\"><img class=\"t\" src=\"thumbs/{mask_name}\" alt=\"mask\"></td>"
            )
        } else {
            "<td class=\"l\">no defect</td>".into()
        };
        let score = |r: f32| format!("{r:.4}");
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td class=\"l\">{}<br><small>{}</small></td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td>\
             <td class=\"l\"><img class=\"t\" src=\"thumbs/{image_name}\" alt=\"image\"></td>\
             <td class=\"l\"><img class=\"t\" src=\"thumbs/{overlay_name}\" alt=\"anomaly map\"></td>{mask_cell}</tr>",
            rank + 1,
            html_escape(&record_label),
            html_escape(&sample.image.display().to_string()),
            score(pick.score),
            score(page.records[pick.index].global_score),
            score(page.records[pick.index].pixel_score),
            if both_classes && pick.badness >= 0.5 { "bad" } else { "" },
            if both_classes { format!("{:.0}%", pick.badness * 100.0) } else { super::ABSENT.to_string() },
        );
    }
    html.push_str("</table>\n</body></html>\n");
    write_atomically(&dir.join("index.html"), html.as_bytes())
        .with_context(|| format!("writing {}", dir.join("index.html").display()))?;
    Ok(())
}

/// Writes `dir/index.html`: the model, and per data set its categories (linked to their pages)
/// and mean, with the table's figures.
pub fn write_index(
    dir: &Path,
    datasets: &[Dataset],
    results: &[DatasetResult],
    folders: &[Vec<PathBuf>],
    aupro: AuproVariants,
    model: &ModelSummary,
) -> Result<()> {
    let columns = aupro.columns();
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>headclip test</title><style>{STYLE}</style></head><body>\n\
         <h1>headclip test</h1>\n<p>{} ({:?} prompts) at S = {}, weights {}, parameters {}. Figures ×100; — where undefined.</p>\n",
        html_escape(&model.architecture),
        model.mode,
        model.image_size,
        html_escape(&model.weights.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "default".into())),
        html_escape(&model.params.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "none (training-free)".into())),
    );
    for (d, (ds, res)) in datasets.iter().zip(results).enumerate() {
        let _ = write!(html, "<h2>{}</h2>\n<table><tr><th class=\"l\">category</th><th>normal</th><th>anomalous</th>", html_escape(&ds.name));
        for m in &columns {
            let _ = write!(html, "<th>{}</th>", html_escape(m.label()));
        }
        html.push_str("</tr>\n");
        for (c, cat) in res.categories.iter().enumerate() {
            let link = folders[d][c].join("index.html");
            let href: Vec<String> = link
                .components()
                .map(|p| p.as_os_str().to_string_lossy().into_owned())
                .collect();
            let _ = write!(
                html,
                "<tr><td class=\"l\"><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td>",
                html_escape(&href.join("/")),
                html_escape(&cat.name),
                cat.normal,
                cat.anomalous
            );
            for &m in &columns {
                let _ = write!(html, "<td>{}</td>", percent(cat.metrics.get(m)));
            }
            html.push_str("</tr>\n");
        }
        let _ = write!(html, "<tr><th class=\"l\">mean</th><th></th><th></th>");
        for &m in &columns {
            let _ = write!(html, "<th>{}</th>", percent(res.mean.get(m)));
        }
        html.push_str("</tr>\n</table>\n");
    }
    html.push_str("</body></html>\n");
    write_atomically(&dir.join("index.html"), html.as_bytes())
        .with_context(|| format!("writing {}", dir.join("index.html").display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_maps_average_boxes() {
        let side = 400;
        let map: Vec<f32> = (0..side * side)
            .map(|i| if (i / side) < side / 2 { 1.0 } else { 0.0 })
            .collect();
        let (small, to) = small_map(&map, side);
        assert_eq!(to, THUMB as usize);
        assert_eq!(small.len(), to * to);
        assert_eq!(small[0], 1.0);
        assert_eq!(small[to * to - 1], 0.0);
        let (same, s) = small_map(&[0.5; 16], 4);
        assert_eq!((same.len(), s), (16, 4));
    }
}
