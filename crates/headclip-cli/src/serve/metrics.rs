//! Counters behind `GET /metrics`, written out in Prometheus' text format (version 0.0.4).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The window over which `headclip_images_per_second` is measured.
const RATE_WINDOW: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Histogram {
    /// Observations per bucket (not cumulative); the last slot is +Inf.
    counts: [u64; BUCKETS.len() + 1],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let slot = BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[slot] += 1;
        self.count += 1;
        self.sum += seconds;
    }
}

#[derive(Default)]
struct Inner {
    /// (route, status code) → requests.
    requests: BTreeMap<(String, u16), u64>,
    /// route → latency.
    latency: BTreeMap<String, Histogram>,
    batches: u64,
    model_seconds: f64,
    /// When batches finished and how many images each scored, within [`RATE_WINDOW`].
    recent: VecDeque<(Instant, u64)>,
    /// Smoothed model time per image, for `Retry-After`.
    seconds_per_image: Option<f64>,
}

/// Everything `/metrics` reports; shared by the handlers and the model thread.
pub struct Metrics {
    started: Instant,
    inner: Mutex<Inner>,
    /// Images handed to the model thread and not yet taken into a batch.
    pub queue_depth: AtomicI64,
    /// Images admitted (decoding, waiting, in the model or being encoded).
    pub in_flight: AtomicI64,
    images_scored: AtomicU64,
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            inner: Mutex::new(Inner::default()),
            queue_depth: AtomicI64::new(0),
            in_flight: AtomicI64::new(0),
            images_scored: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One finished HTTP request.
    pub fn record_request(&self, route: &str, status: u16, elapsed: Duration) {
        let mut inner = self.lock();
        *inner
            .requests
            .entry((route.to_string(), status))
            .or_default() += 1;
        inner
            .latency
            .entry(route.to_string())
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// One batch of `images` scored in `elapsed`.
    pub fn record_batch(&self, images: usize, elapsed: Duration) {
        self.images_scored
            .fetch_add(images as u64, Ordering::Relaxed);
        let now = Instant::now();
        let mut inner = self.lock();
        inner.batches += 1;
        inner.model_seconds += elapsed.as_secs_f64();
        inner.recent.push_back((now, images as u64));
        while inner
            .recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            inner.recent.pop_front();
        }
        let per_image = elapsed.as_secs_f64() / images.max(1) as f64;
        inner.seconds_per_image = Some(match inner.seconds_per_image {
            Some(old) => 0.8 * old + 0.2 * per_image,
            None => per_image,
        });
    }

    /// Seconds a client refused with 503 should wait: the time the model needs for what is
    /// queued now, at least one second.
    pub fn retry_after_s(&self) -> u64 {
        let per_image = self.lock().seconds_per_image.unwrap_or(0.1);
        let waiting = self.in_flight.load(Ordering::Relaxed).max(1) as f64;
        (waiting * per_image).ceil().clamp(1.0, 60.0) as u64
    }

    fn images_per_second(&self, inner: &Inner) -> f64 {
        let now = Instant::now();
        let images: u64 = inner
            .recent
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= RATE_WINDOW)
            .map(|(_, n)| n)
            .sum();
        let window = self
            .started
            .elapsed()
            .min(RATE_WINDOW)
            .as_secs_f64()
            .max(1e-3);
        images as f64 / window
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let inner = self.lock();
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line("# HELP headclip_http_requests_total HTTP requests by route and status code.".into());
        line("# TYPE headclip_http_requests_total counter".into());
        for ((route, code), n) in &inner.requests {
            line(format!(
                "headclip_http_requests_total{{route=\"{route}\",code=\"{code}\"}} {n}"
            ));
        }
        line("# HELP headclip_http_request_duration_seconds Time from request to response, by route.".into());
        line("# TYPE headclip_http_request_duration_seconds histogram".into());
        for (route, h) in &inner.latency {
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += h.counts[i];
                line(format!(
                    "headclip_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
                ));
            }
            cumulative += h.counts[BUCKETS.len()];
            line(format!(
                "headclip_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {cumulative}"
            ));
            line(format!(
                "headclip_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            ));
            line(format!(
                "headclip_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            ));
        }
        line("# HELP headclip_queue_depth Images waiting for the model thread.".into());
        line("# TYPE headclip_queue_depth gauge".into());
        line(format!(
            "headclip_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed).max(0)
        ));
        line("# HELP headclip_images_in_flight Images admitted and not yet answered.".into());
        line("# TYPE headclip_images_in_flight gauge".into());
        line(format!(
            "headclip_images_in_flight {}",
            self.in_flight.load(Ordering::Relaxed).max(0)
        ));
        line("# HELP headclip_images_scored_total Images scored by the model.".into());
        line("# TYPE headclip_images_scored_total counter".into());
        line(format!(
            "headclip_images_scored_total {}",
            self.images_scored.load(Ordering::Relaxed)
        ));
        line(
            "# HELP headclip_images_per_second Images scored per second over the last 10 s.".into(),
        );
        line("# TYPE headclip_images_per_second gauge".into());
        line(format!(
            "headclip_images_per_second {:.3}",
            self.images_per_second(&inner)
        ));
        line("# HELP headclip_batches_total Batches run by the model.".into());
        line("# TYPE headclip_batches_total counter".into());
        line(format!("headclip_batches_total {}", inner.batches));
        line("# HELP headclip_model_seconds_total Time spent in the model.".into());
        line("# TYPE headclip_model_seconds_total counter".into());
        line(format!(
            "headclip_model_seconds_total {:.6}",
            inner.model_seconds
        ));
        line("# HELP headclip_uptime_seconds Seconds since the server started.".into());
        line("# TYPE headclip_uptime_seconds gauge".into());
        line(format!(
            "headclip_uptime_seconds {:.3}",
            self.started.elapsed().as_secs_f64()
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_requests() {
        let m = Metrics::new();
        m.record_request("/v1/detect", 200, Duration::from_millis(3));
        m.record_request("/v1/detect", 200, Duration::from_millis(300));
        m.record_request("/v1/detect", 503, Duration::from_secs(500));
        m.record_batch(4, Duration::from_millis(100));
        let text = m.render();
        assert!(
            text.contains("headclip_http_requests_total{route=\"/v1/detect\",code=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("headclip_http_requests_total{route=\"/v1/detect\",code=\"503\"} 1"));
        assert!(text.contains(
            "headclip_http_request_duration_seconds_bucket{route=\"/v1/detect\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "headclip_http_request_duration_seconds_bucket{route=\"/v1/detect\",le=\"0.5\"} 2"
        ));
        assert!(text.contains(
            "headclip_http_request_duration_seconds_bucket{route=\"/v1/detect\",le=\"+Inf\"} 3"
        ));
        assert!(text.contains("headclip_images_scored_total 4"));
        assert!(m.retry_after_s() >= 1);
    }
}
