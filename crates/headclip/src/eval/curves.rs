//! ROC and precision–recall curves for plotting.
//!
//! Image-level curves are exact: one point per distinct score. Pixel-level curves come from a
//! [`PixelHistogram`] of the category's map values ([`HISTOGRAM_BINS`] bins over [0, 1], where
//! maps live), so that they cost a fixed amount of memory whatever the number of pixels; the
//! pixel *metrics* never use it (they are exact, from
//! [`PixelAccumulator`](headclip_metrics::PixelAccumulator)). [`thin`] drops points closer than a
//! plotting resolution.

/// Bins of a [`PixelHistogram`] over [0, 1].
pub const HISTOGRAM_BINS: usize = 1 << 16;

/// A curve: `(x, y)` points in drawing order.
pub type Points = Vec<(f64, f64)>;

/// The ROC curve (FPR, TPR) and the precision–recall curve (recall, precision) of one set of
/// scores.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Curves {
    /// From (0, 0) to (1, 1), FPR on x.
    pub roc: Points,
    /// Recall on x, from (0, 1) as scikit-learn's `precision_recall_curve` starts, to recall 1.
    pub pr: Points,
    /// Fraction of positives: the precision of a random guess.
    pub positive_fraction: f64,
}

/// Builds both curves from cumulative `(tp, fp)` counts at the distinct thresholds, highest
/// first. `None` unless both classes are present.
fn from_counts(
    counts: impl Iterator<Item = (u64, u64)>,
    positives: u64,
    negatives: u64,
) -> Option<Curves> {
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut roc = vec![(0.0, 0.0)];
    let mut pr = vec![(0.0, 1.0)];
    for (tp, fp) in counts {
        roc.push((fp as f64 / negatives as f64, tp as f64 / positives as f64));
        if tp + fp > 0 {
            pr.push((tp as f64 / positives as f64, tp as f64 / (tp + fp) as f64));
        }
    }
    Some(Curves {
        roc,
        pr,
        positive_fraction: positives as f64 / (positives + negatives) as f64,
    })
}

/// Exact curves of image scores against labels (`true` = anomalous): a sample is positive at a
/// threshold when its score is `>=` it, tied scores move together. `None` unless both classes
/// are present. Non-finite scores sort as the lowest.
pub fn image_curves(scores: &[f32], labels: &[bool]) -> Option<Curves> {
    let mut pairs: Vec<(f32, bool)> = scores
        .iter()
        .zip(labels)
        .map(|(&s, &l)| (if s.is_finite() { s } else { f32::NEG_INFINITY }, l))
        .collect();
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let positives = pairs.iter().filter(|p| p.1).count() as u64;
    let negatives = pairs.len() as u64 - positives;
    let mut counts = Vec::new();
    let (mut tp, mut fp) = (0u64, 0u64);
    let mut i = 0;
    while i < pairs.len() {
        let value = pairs[i].0;
        while i < pairs.len() && pairs[i].0 == value {
            if pairs[i].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        counts.push((tp, fp));
    }
    from_counts(counts.into_iter(), positives, negatives)
}

/// Counts of map values of normal and of anomalous pixels in [`HISTOGRAM_BINS`] equal bins over
/// [0, 1] (values outside are clamped, NaN counts as 0). 1 MiB whatever the number of pixels.
#[derive(Debug, Clone)]
pub struct PixelHistogram {
    normal: Vec<u64>,
    anomalous: Vec<u64>,
}

impl Default for PixelHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl PixelHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        PixelHistogram {
            normal: vec![0; HISTOGRAM_BINS],
            anomalous: vec![0; HISTOGRAM_BINS],
        }
    }

    fn bin(v: f32) -> usize {
        let x = if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
        ((x as f64 * HISTOGRAM_BINS as f64) as usize).min(HISTOGRAM_BINS - 1)
    }

    /// Adds one image: its map and its mask (nonzero = anomalous), of the same length.
    /// `mask = None` means all pixels are normal.
    pub fn add(&mut self, map: &[f32], mask: Option<&[u8]>) {
        match mask {
            Some(mask) => {
                for (&v, &m) in map.iter().zip(mask) {
                    let b = Self::bin(v);
                    if m != 0 {
                        self.anomalous[b] += 1;
                    } else {
                        self.normal[b] += 1;
                    }
                }
            }
            None => {
                for &v in map {
                    self.normal[Self::bin(v)] += 1;
                }
            }
        }
    }

    /// Pixels counted.
    pub fn pixels(&self) -> u64 {
        self.normal.iter().sum::<u64>() + self.anomalous.iter().sum::<u64>()
    }

    /// ROC and PR curves with one point per non-empty bin (thresholds at the bins' lower edges,
    /// highest first). `None` unless both classes are present.
    pub fn curves(&self) -> Option<Curves> {
        let positives: u64 = self.anomalous.iter().sum();
        let negatives: u64 = self.normal.iter().sum();
        let (mut tp, mut fp) = (0u64, 0u64);
        let counts = (0..HISTOGRAM_BINS).rev().filter_map(|b| {
            if self.normal[b] == 0 && self.anomalous[b] == 0 {
                return None;
            }
            tp += self.anomalous[b];
            fp += self.normal[b];
            Some((tp, fp))
        });
        let counts: Vec<(u64, u64)> = counts.collect();
        from_counts(counts.into_iter(), positives, negatives)
    }
}

/// Keeps the first and last point and every point at least `resolution` away (max-norm) from
/// the previous kept one: what a plot `1 / resolution` units wide can show.
pub fn thin(points: &[(f64, f64)], resolution: f64) -> Points {
    let mut out: Points = Vec::new();
    for (i, &p) in points.iter().enumerate() {
        let keep = match out.last() {
            None => true,
            Some(&(x, y)) => {
                i + 1 == points.len() || (p.0 - x).abs().max((p.1 - y).abs()) >= resolution
            }
        };
        if keep {
            out.push(p);
        }
    }
    out
}

/// Trapezoidal area under `points` (x non-decreasing): a check on a curve, not a metric.
pub fn area(points: &[(f64, f64)]) -> f64 {
    points
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use headclip_metrics::image_metrics;

    #[test]
    fn image_roc_area_is_the_auroc() {
        let scores = [0.1, 0.4, 0.35, 0.8, 0.35, 0.9, 0.2];
        let labels = [false, false, true, true, false, true, true];
        let curves = image_curves(&scores, &labels).unwrap();
        let auroc = image_metrics(&scores, &labels).unwrap().auroc.unwrap();
        assert!((area(&curves.roc) - auroc).abs() < 1e-12);
        assert_eq!(curves.roc.first(), Some(&(0.0, 0.0)));
        assert_eq!(curves.roc.last(), Some(&(1.0, 1.0)));
        assert_eq!(curves.pr.last().unwrap().0, 1.0);
        assert!((curves.positive_fraction - 4.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn one_class_has_no_curves() {
        assert!(image_curves(&[0.1, 0.2], &[true, true]).is_none());
        assert!(PixelHistogram::new().curves().is_none());
    }

    #[test]
    fn histogram_curves_match_exact_ones_on_coarse_values() {
        // Values on bin edges: the histogram loses nothing.
        let map = [0.0, 0.25, 0.5, 0.75, 1.0, 0.5];
        let mask = [0u8, 0, 1, 1, 1, 0];
        let mut h = PixelHistogram::new();
        h.add(&map, Some(&mask));
        h.add(&[0.0; 6], None);
        assert_eq!(h.pixels(), 12);
        let mut scores = map.to_vec();
        scores.extend([0.0f32; 6]);
        let mut labels: Vec<bool> = mask.iter().map(|&m| m != 0).collect();
        labels.extend([false; 6]);
        let exact = image_curves(&scores, &labels).unwrap();
        assert_eq!(h.curves().unwrap(), exact);
    }

    #[test]
    fn thinning_keeps_the_ends() {
        let points: Points = (0..=1000)
            .map(|i| (i as f64 / 1000.0, i as f64 / 1000.0))
            .collect();
        let thinned = thin(&points, 0.01);
        assert!(thinned.len() <= 102, "{}", thinned.len());
        assert_eq!(thinned.first(), points.first());
        assert_eq!(thinned.last(), points.last());
    }
}
