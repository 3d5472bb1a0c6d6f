//! `--pictures`: per category ROC / PR charts and a static HTML gallery of its most instructive
//! images (thumbnail, heat-map overlay, mask), and an index page over all categories.
//!
//! Only the chosen images' small maps are kept while scoring (see
//! [`headclip::eval::select`]); the images and masks themselves are decoded again here, at
//! thumbnail size, when their category is done.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result};
use headclip::eval::curves::{image_curves, Curves, PixelHistogram};
use headclip::eval::select::Pick;
use headclip::eval::{
    AuproVariants, CategoryResult, DatasetResult, ImageRecord, Metric, MetricSet, ModelSummary,
};
use headclip::write_atomically;
use headclip_data::datasets::{Category, Sample};
use headclip_data::images::{self, DecodeLimits, RgbImage};
use headclip_data::viz;
use minijinja::value::{Serde, Value};
use minijinja::Environment;
use serde::Serialize;

use super::percent;
use super::svg::{chart, Chart, Series};

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

/// The ROC and PR series of a category's image-level and pixel-level curves, where defined.
fn curve_series<'c>(
    image: Option<&'c Curves>,
    pixel: Option<&'c Curves>,
    metrics: &MetricSet,
) -> (Vec<Series<'c>>, Vec<Series<'c>>) {
    let levels = [
        (
            "image",
            IMAGE_COLOUR,
            image,
            metrics.image_auroc,
            metrics.image_ap,
        ),
        (
            "pixel",
            PIXEL_COLOUR,
            pixel,
            metrics.pixel_auroc,
            metrics.pixel_ap,
        ),
    ];
    let (mut roc, mut pr) = (Vec::new(), Vec::new());
    for (level, colour, curves, auroc, ap) in levels {
        let Some(c) = curves else { continue };
        roc.push(Series {
            name: format!("{level} (AUROC {})", percent(auroc)),
            colour,
            points: &c.roc,
        });
        pr.push(Series {
            name: format!("{level} (AP {})", percent(ap)),
            colour,
            points: &c.pr,
        });
    }
    (roc, pr)
}

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
    let (roc, pr) = curve_series(image.as_ref(), pixel.as_ref(), metrics);
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
    write_page(&dir.join("roc.svg"), &roc_svg)?;
    write_page(&dir.join("pr.svg"), &pr_svg)
}

fn write_page(path: &Path, text: &str) -> Result<()> {
    write_atomically(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// The page templates, compiled in. Those named `.html` escape every value they insert.
fn templates() -> &'static Environment<'static> {
    static TEMPLATES: OnceLock<Environment<'static>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in [
            ("gallery.css", include_str!("../../templates/gallery.css")),
            ("base.html", include_str!("../../templates/base.html")),
            (
                "category.html",
                include_str!("../../templates/category.html"),
            ),
            ("index.html", include_str!("../../templates/index.html")),
        ] {
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("template {name}: {e}"));
        }
        env
    })
}

fn render<T: Serialize>(template: &str, context: &T) -> Result<String> {
    let page = templates()
        .get_template(template)?
        .render(Value::from(Serde(context)))?;
    Ok(page)
}

/// The overlay's colour scale as CSS gradient stops, 0 to 1.
fn colour_scale() -> Vec<String> {
    (0..=10)
        .map(|i| {
            let [r, g, b] = viz::colormap(i as f32 / 10.0);
            format!("rgb({r},{g},{b}) {}%", i * 10)
        })
        .collect()
}

#[derive(Serialize)]
struct MetricCell {
    label: &'static str,
    value: String,
}

fn metric_cells(columns: &[Metric], metrics: &MetricSet) -> Vec<MetricCell> {
    columns
        .iter()
        .map(|&m| MetricCell {
            label: m.label(),
            value: percent(metrics.get(m)),
        })
        .collect()
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

/// The template's view of a category page.
#[derive(Serialize)]
struct CategoryView {
    title: String,
    images: usize,
    normal: usize,
    anomalous: usize,
    regions: usize,
    has_masks: bool,
    metrics: Vec<MetricCell>,
    scale: Vec<String>,
    rows: Vec<PickRow>,
}

/// One chosen image's row; its thumbnails are `thumbs/<stem>_{image,overlay,mask}.png`.
#[derive(Serialize)]
struct PickRow {
    rank: usize,
    stem: String,
    label: String,
    image: String,
    score: String,
    global_score: String,
    pixel_score: String,
    ranked_wrong: String,
    bad: bool,
    has_mask: bool,
}

fn sample_label(sample: &Sample) -> String {
    match (&sample.defect, sample.anomalous) {
        (Some(d), _) => format!("anomalous ({d})"),
        (None, true) => "anomalous".into(),
        (None, false) => "normal".into(),
    }
}

/// The row of the `rank`th pick (from 1); `has_mask` says whether its mask thumbnail exists.
fn pick_row(
    page: &CategoryPage<'_>,
    rank: usize,
    pick: &Pick<SmallMap>,
    has_mask: bool,
) -> PickRow {
    let sample = &page.category.samples[pick.index];
    let record = &page.records[pick.index];
    // Ranking against the other class needs both classes.
    let both_classes = page.result.normal > 0 && page.result.anomalous > 0;
    let score = |r: f32| format!("{r:.4}");
    PickRow {
        rank,
        stem: format!("{rank:03}"),
        label: sample_label(sample),
        image: sample.image.display().to_string(),
        score: score(pick.score),
        global_score: score(record.global_score),
        pixel_score: score(record.pixel_score),
        ranked_wrong: if both_classes {
            format!("{:.0}%", pick.badness * 100.0)
        } else {
            super::ABSENT.to_string()
        },
        bad: both_classes && pick.badness >= 0.5,
        has_mask,
    }
}

/// Writes the thumbnails of one chosen image into `thumbs` (image, overlay and, where
/// `with_masks` and the sample has one, its mask), re-decoding the image; says whether a mask
/// thumbnail was written.
fn write_thumbnails(
    thumbs: &Path,
    stem: &str,
    sample: &Sample,
    map: &SmallMap,
    with_masks: bool,
    limits: &DecodeLimits,
) -> Result<bool> {
    let img = images::read_rgb(&sample.image, limits)
        .with_context(|| format!("decoding {} again for the gallery", sample.image.display()))?;
    let thumb = images::resize_bicubic(&img, THUMB);
    drop(img);
    let overlay = viz::overlay(&thumb, &map.0, map.1);
    write_atomically(
        &thumbs.join(format!("{stem}_image.png")),
        &viz::encode_png(&thumb)?,
    )?;
    write_atomically(
        &thumbs.join(format!("{stem}_overlay.png")),
        &viz::encode_png(&overlay)?,
    )?;
    let Some(mask_path) = sample.mask.as_ref().filter(|_| with_masks) else {
        return Ok(false);
    };
    let mask = images::read_mask(mask_path, THUMB, limits)
        .with_context(|| format!("decoding {} for the gallery", mask_path.display()))?;
    write_atomically(
        &thumbs.join(format!("{stem}_mask.png")),
        &grey_png(&mask.values, THUMB)?,
    )?;
    Ok(true)
}

fn category_view(page: &CategoryPage<'_>, rows: Vec<PickRow>) -> CategoryView {
    CategoryView {
        title: format!("{} / {}", page.dataset, page.category.name),
        images: page.result.images,
        normal: page.result.normal,
        anomalous: page.result.anomalous,
        regions: page.result.regions,
        has_masks: page.category.has_masks,
        metrics: metric_cells(&page.aupro.columns(), &page.result.metrics),
        scale: colour_scale(),
        rows,
    }
}

/// Writes the category's gallery into `dir`: `index.html` and `thumbs/*.png` (image, overlay
/// and, where the category has masks, mask of each chosen image), re-decoding just those
/// images. The charts (`roc.svg`, `pr.svg`) are expected next to it ([`write_curves`]).
pub fn write_category(dir: &Path, page: CategoryPage<'_>, limits: &DecodeLimits) -> Result<()> {
    let thumbs = dir.join("thumbs");
    std::fs::create_dir_all(&thumbs).with_context(|| format!("creating {}", thumbs.display()))?;
    let mut rows = Vec::with_capacity(page.picks.len());
    for (i, pick) in page.picks.iter().enumerate() {
        let rank = i + 1;
        let sample = &page.category.samples[pick.index];
        let with_masks = page.category.has_masks;
        let has_mask = write_thumbnails(
            &thumbs,
            &format!("{rank:03}"),
            sample,
            &pick.payload,
            with_masks,
            limits,
        )?;
        rows.push(pick_row(&page, rank, pick, has_mask));
    }
    let html = render("category.html", &category_view(&page, rows))?;
    write_page(&dir.join("index.html"), &html)
}

/// The template's view of the index page.
#[derive(Serialize)]
struct IndexView {
    title: &'static str,
    model: String,
    mode: String,
    image_size: i64,
    weights: String,
    params: String,
    columns: Vec<&'static str>,
    datasets: Vec<DatasetSection>,
}

#[derive(Serialize)]
struct DatasetSection {
    name: String,
    categories: Vec<IndexRow>,
    mean: Vec<String>,
}

#[derive(Serialize)]
struct IndexRow {
    name: String,
    /// The category's folder, relative to the index, one component each.
    folder: Vec<String>,
    normal: usize,
    anomalous: usize,
    values: Vec<String>,
}

fn dataset_section(
    result: &DatasetResult,
    folders: &[PathBuf],
    columns: &[Metric],
) -> DatasetSection {
    let values = |set: &MetricSet| columns.iter().map(|&m| percent(set.get(m))).collect();
    DatasetSection {
        name: result.name.clone(),
        categories: result
            .categories
            .iter()
            .zip(folders)
            .map(|(cat, folder)| IndexRow {
                name: cat.name.clone(),
                folder: folder
                    .components()
                    .map(|p| p.as_os_str().to_string_lossy().into_owned())
                    .collect(),
                normal: cat.normal,
                anomalous: cat.anomalous,
                values: values(&cat.metrics),
            })
            .collect(),
        mean: values(&result.mean),
    }
}

fn index_view(
    results: &[DatasetResult],
    folders: &[Vec<PathBuf>],
    aupro: AuproVariants,
    model: &ModelSummary,
) -> IndexView {
    let columns = aupro.columns();
    let shown = |p: &Option<PathBuf>, otherwise: &str| {
        p.as_ref()
            .map_or_else(|| otherwise.to_string(), |p| p.display().to_string())
    };
    IndexView {
        title: "headclip test",
        model: model.architecture.clone(),
        mode: format!("{:?}", model.mode),
        image_size: model.image_size,
        weights: shown(&model.weights, "default"),
        params: shown(&model.params, "none (training-free)"),
        columns: columns.iter().map(|m| m.label()).collect(),
        datasets: results
            .iter()
            .zip(folders)
            .map(|(result, folders)| dataset_section(result, folders, &columns))
            .collect(),
    }
}

/// Writes `dir/index.html`: the model, and per data set its categories (linked to their pages)
/// and mean, with the table's figures.
pub fn write_index(
    dir: &Path,
    results: &[DatasetResult],
    folders: &[Vec<PathBuf>],
    aupro: AuproVariants,
    model: &ModelSummary,
) -> Result<()> {
    let html = render("index.html", &index_view(results, folders, aupro, model))?;
    write_page(&dir.join("index.html"), &html)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "<script>alert(1)</script> & \"q\" 'a'";
    const ESCAPED: &str =
        "&lt;script&gt;alert(1)&lt;&#x2f;script&gt; &amp; &quot;q&quot; &#x27;a&#x27;";

    fn assert_escaped(html: &str, times: usize) {
        assert!(!html.contains("<script"), "{html}");
        assert_eq!(html.matches(ESCAPED).count(), times, "{html}");
    }

    #[test]
    fn category_page_escapes_names() {
        let row = PickRow {
            rank: 1,
            stem: "001".into(),
            label: format!("anomalous ({HOSTILE})"),
            image: format!("/data/{HOSTILE}.png"),
            score: "0.5000".into(),
            global_score: "0.5000".into(),
            pixel_score: "0.5000".into(),
            ranked_wrong: "50%".into(),
            bad: true,
            has_mask: true,
        };
        let view = CategoryView {
            title: format!("{HOSTILE} / {HOSTILE}"),
            images: 2,
            normal: 1,
            anomalous: 1,
            regions: 1,
            has_masks: true,
            metrics: metric_cells(&AuproVariants::Both.columns(), &MetricSet::default()),
            scale: colour_scale(),
            rows: vec![row],
        };
        let html = render("category.html", &view).unwrap();
        // Title and heading (twice each), the defect label and the file name.
        assert_escaped(&html, 6);
        assert!(html.contains("src=\"thumbs/001_mask.png\""), "{html}");
    }

    #[test]
    fn index_page_escapes_names() {
        let view = IndexView {
            title: "headclip test",
            model: "ViT-B/16".into(),
            mode: "Learned".into(),
            image_size: 96,
            weights: format!("/w/{HOSTILE}.pt"),
            params: "none (training-free)".into(),
            columns: vec!["image AUROC"],
            datasets: vec![DatasetSection {
                name: HOSTILE.into(),
                categories: vec![IndexRow {
                    name: HOSTILE.into(),
                    folder: vec!["_script_".into(), "bottle".into()],
                    normal: 1,
                    anomalous: 1,
                    values: vec!["50.0".into()],
                }],
                mean: vec!["50.0".into()],
            }],
        };
        let html = render("index.html", &view).unwrap();
        assert_escaped(&html, 3);
        assert!(
            html.contains("href=\"_script_/bottle/index.html\""),
            "{html}"
        );
    }

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
