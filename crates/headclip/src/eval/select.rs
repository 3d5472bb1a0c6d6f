//! Choosing the most instructive images of a category while its images are being scored, with
//! bounded memory: the lowest-scored anomalous images (the model's misses) and the
//! highest-scored normal images (its false alarms).
//!
//! [`Instructive`] keeps at most `per_class` candidates of each class, each with a payload (a
//! small map for an overlay, say); [`Instructive::finish`] picks the final set, half from each
//! class where it can (filling from the other class where one is short), and orders it by how
//! badly each image is ranked: for an anomalous image the fraction of normal images scoring at
//! least as high, for a normal image the fraction of anomalous images scoring at most as high.

/// One chosen image.
#[derive(Debug, Clone, PartialEq)]
pub struct Pick<T> {
    /// The image's index among the category's samples.
    pub index: usize,
    /// Its joint score.
    pub score: f32,
    /// Whether it is anomalous.
    pub anomalous: bool,
    /// How badly it is ranked, in [0, 1] (see the module documentation); where the other class
    /// is absent, its rank within its own class instead.
    pub badness: f64,
    /// The payload given with it.
    pub payload: T,
}

#[derive(Debug, Clone)]
struct Candidate<T> {
    index: usize,
    score: f32,
    payload: T,
}

/// Candidate images of one category; see the module documentation.
#[derive(Debug, Clone)]
pub struct Instructive<T> {
    per_class: usize,
    /// Lowest scores first.
    anomalous: Vec<Candidate<T>>,
    /// Highest scores first.
    normal: Vec<Candidate<T>>,
}

/// Orders two (score, index) pairs: whether the first is the more instructive.
type Worse = fn((f32, usize), (f32, usize)) -> bool;

/// Whether `a` is a worse miss than `b` for an anomalous image: a lower score, then an earlier
/// index (so that ties resolve the same way every run).
fn worse_anomalous(a: (f32, usize), b: (f32, usize)) -> bool {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).is_lt()
}

/// Whether `a` is a worse false alarm than `b` for a normal image: a higher score, then an
/// earlier index.
fn worse_normal(a: (f32, usize), b: (f32, usize)) -> bool {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).is_lt()
}

impl<T> Instructive<T> {
    /// Keeps up to `per_class` candidates of each class.
    pub fn new(per_class: usize) -> Self {
        Instructive {
            per_class,
            anomalous: Vec::new(),
            normal: Vec::new(),
        }
    }

    /// Whether an image with this score and label would be kept now; lets a caller skip
    /// building a payload that would be thrown away.
    pub fn wants(&self, index: usize, score: f32, anomalous: bool) -> bool {
        let (list, worse) = self.list(anomalous);
        list.len() < self.per_class
            || list
                .last()
                .is_some_and(|last| worse((score, index), (last.score, last.index)))
    }

    fn list(&self, anomalous: bool) -> (&Vec<Candidate<T>>, Worse) {
        if anomalous {
            (&self.anomalous, worse_anomalous)
        } else {
            (&self.normal, worse_normal)
        }
    }

    /// Offers an image; `payload` is called only if the image is kept.
    pub fn offer(
        &mut self,
        index: usize,
        score: f32,
        anomalous: bool,
        payload: impl FnOnce() -> T,
    ) {
        if self.per_class == 0 || !self.wants(index, score, anomalous) {
            return;
        }
        let (list, worse): (&mut Vec<Candidate<T>>, Worse) = if anomalous {
            (&mut self.anomalous, worse_anomalous)
        } else {
            (&mut self.normal, worse_normal)
        };
        let at = list
            .iter()
            .position(|c| worse((score, index), (c.score, c.index)))
            .unwrap_or(list.len());
        list.insert(
            at,
            Candidate {
                index,
                score,
                payload: payload(),
            },
        );
        list.truncate(self.per_class);
    }

    /// Picks up to `total` images, half from each class where possible, worst-ranked first.
    /// `all` holds the (score, anomalous) pair of every image of the category, to rank against.
    pub fn finish(self, total: usize, all: &[(f32, bool)]) -> Vec<Pick<T>> {
        let n_anom = self.anomalous.len();
        let n_norm = self.normal.len();
        let mut take_anom = n_anom.min(total / 2 + total % 2);
        let take_norm = n_norm.min(total - take_anom);
        take_anom = n_anom.min(total - take_norm);

        let normal_scores: Vec<f32> = all.iter().filter(|p| !p.1).map(|p| p.0).collect();
        let anomalous_scores: Vec<f32> = all.iter().filter(|p| p.1).map(|p| p.0).collect();
        let fraction = |count: usize, of: usize| {
            if of == 0 {
                0.0
            } else {
                count as f64 / of as f64
            }
        };

        let mut picks = Vec::with_capacity(take_anom + take_norm);
        for (rank, c) in self.anomalous.into_iter().take(take_anom).enumerate() {
            let badness = if normal_scores.is_empty() {
                1.0 - fraction(rank, anomalous_scores.len())
            } else {
                fraction(
                    normal_scores.iter().filter(|&&s| s >= c.score).count(),
                    normal_scores.len(),
                )
            };
            picks.push(Pick {
                index: c.index,
                score: c.score,
                anomalous: true,
                badness,
                payload: c.payload,
            });
        }
        for (rank, c) in self.normal.into_iter().take(take_norm).enumerate() {
            let badness = if anomalous_scores.is_empty() {
                1.0 - fraction(rank, normal_scores.len())
            } else {
                fraction(
                    anomalous_scores.iter().filter(|&&s| s <= c.score).count(),
                    anomalous_scores.len(),
                )
            };
            picks.push(Pick {
                index: c.index,
                score: c.score,
                anomalous: false,
                badness,
                payload: c.payload,
            });
        }
        // Stable: within equal badness, anomalous first, each class in its own order.
        picks.sort_by(|a, b| b.badness.total_cmp(&a.badness));
        picks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(scores: &[(f32, bool)], per_class: usize, total: usize) -> Vec<Pick<usize>> {
        let mut sel = Instructive::new(per_class);
        for (i, &(s, a)) in scores.iter().enumerate() {
            sel.offer(i, s, a, || i);
        }
        sel.finish(total, scores)
    }

    #[test]
    fn keeps_misses_and_false_alarms() {
        let scores = [
            (0.9, true),
            (0.2, true),
            (0.5, true),
            (0.1, false),
            (0.6, false),
            (0.3, false),
        ];
        let picks = run(&scores, 1, 2);
        let idx: Vec<usize> = picks.iter().map(|p| p.index).collect();
        // Anomalous 1 (0.2) is below all but one normal: badness 2/3; normal 4 (0.6) is above
        // two of three anomalies: badness 2/3. Both kept.
        assert_eq!(idx.len(), 2);
        assert!(idx.contains(&1) && idx.contains(&4), "{idx:?}");
        assert!(picks.iter().all(|p| p.payload == p.index));
    }

    #[test]
    fn fills_from_the_other_class() {
        let scores = [(0.9, true), (0.2, true), (0.5, true), (0.1, false)];
        let picks = run(&scores, 4, 4);
        assert_eq!(picks.len(), 4);
        assert_eq!(picks.iter().filter(|p| p.anomalous).count(), 3);
        // Only anomalous images: ordered by score, lowest first.
        let only = run(&[(0.9, true), (0.2, true), (0.5, true)], 2, 2);
        let idx: Vec<usize> = only.iter().map(|p| p.index).collect();
        assert_eq!(idx, [1, 2]);
    }

    #[test]
    fn wants_reflects_the_bound() {
        let mut sel: Instructive<()> = Instructive::new(1);
        assert!(sel.wants(0, 0.5, true));
        sel.offer(0, 0.5, true, || ());
        assert!(!sel.wants(1, 0.6, true));
        assert!(sel.wants(1, 0.4, true));
        assert!(sel.wants(1, 0.4, false));
    }
}
