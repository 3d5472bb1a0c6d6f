//! What `GET /metrics` reports, kept in a `prometheus-client` registry and written out in
//! Prometheus' text format (version 0.0.4).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The window over which `headclip_images_per_second` is measured.
const RATE_WINDOW: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Why an image was refused before it was decoded.
#[derive(Clone, Copy, Debug)]
pub enum Refusal {
    /// `--decode-budget-pixels` was taken by images being handled (503).
    Budget,
    /// Over a decode limit such as `--max-pixels` (413).
    Limits,
    /// The header is not that of a supported image (400, 422).
    Invalid,
}

impl Refusal {
    const ALL: [Refusal; 3] = [Refusal::Budget, Refusal::Limits, Refusal::Invalid];

    fn label(self) -> ReasonLabels {
        let reason = match self {
            Refusal::Budget => "budget",
            Refusal::Limits => "limits",
            Refusal::Invalid => "invalid",
        };
        ReasonLabels { reason }
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Model throughput, for `headclip_images_per_second` and `Retry-After`.
#[derive(Default)]
struct Throughput {
    /// When batches finished and how many images each scored, within [`RATE_WINDOW`].
    recent: VecDeque<(Instant, u64)>,
    /// Smoothed model time per image.
    seconds_per_image: Option<f64>,
}

/// The registered series; the gauges without a setter of their own are refreshed on each scrape.
struct Series {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    queue_depth: Gauge,
    in_flight: Gauge,
    images_scored: Counter,
    images_per_second: Gauge<f64, AtomicU64>,
    batches: Counter,
    model_seconds: Counter<f64, AtomicU64>,
    uptime: Gauge<f64, AtomicU64>,
    decodes_refused: Family<ReasonLabels, Counter>,
    decodes_cancelled: Counter,
}

impl Series {
    fn register(registry: &mut Registry) -> Self {
        let s = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            queue_depth: Gauge::default(),
            in_flight: Gauge::default(),
            images_scored: Counter::default(),
            images_per_second: Gauge::default(),
            batches: Counter::default(),
            model_seconds: Counter::default(),
            uptime: Gauge::default(),
            decodes_refused: Family::default(),
            decodes_cancelled: Counter::default(),
        };
        // Every reason from the start, so that dashboards see zeros rather than nothing.
        for refusal in Refusal::ALL {
            let _ = s.decodes_refused.get_or_create(&refusal.label());
        }
        // Counters are registered without `_total`: the encoder appends it.
        let r = registry;
        r.register(
            "http_requests",
            "HTTP requests by route and status code",
            s.requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "Time from request to response, by route",
            s.latency.clone(),
        );
        r.register(
            "queue_depth",
            "Images waiting for the model thread",
            s.queue_depth.clone(),
        );
        r.register(
            "images_in_flight",
            "Images admitted and not yet answered",
            s.in_flight.clone(),
        );
        r.register(
            "images_scored",
            "Images scored by the model",
            s.images_scored.clone(),
        );
        r.register(
            "images_per_second",
            "Images scored per second over the last 10 s",
            s.images_per_second.clone(),
        );
        r.register("batches", "Batches run by the model", s.batches.clone());
        r.register(
            "model_seconds",
            "Time spent in the model",
            s.model_seconds.clone(),
        );
        r.register(
            "decodes_refused",
            "Images refused before decoding, by reason",
            s.decodes_refused.clone(),
        );
        r.register(
            "decodes_cancelled",
            "Decodes not started or not finished because their request had gone",
            s.decodes_cancelled.clone(),
        );
        r.register(
            "uptime_seconds",
            "Seconds since the server started",
            s.uptime.clone(),
        );
        s
    }
}

/// Everything `/metrics` reports; shared by the handlers and the model thread.
pub struct Metrics {
    started: Instant,
    registry: Registry,
    series: Series,
    throughput: Mutex<Throughput>,
    /// Images handed to the model thread and not yet taken into a batch.
    pub queue_depth: AtomicI64,
    /// Images admitted (decoding, waiting, in the model or being encoded).
    pub in_flight: AtomicI64,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("headclip");
        let series = Series::register(&mut registry);
        Self {
            started: Instant::now(),
            registry,
            series,
            throughput: Mutex::new(Throughput::default()),
            queue_depth: AtomicI64::new(0),
            in_flight: AtomicI64::new(0),
        }
    }

    fn throughput(&self) -> std::sync::MutexGuard<'_, Throughput> {
        self.throughput.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One finished HTTP request.
    pub fn record_request(&self, route: &str, status: u16, elapsed: Duration) {
        let route = route.to_string();
        self.series
            .latency
            .get_or_create(&RouteLabels {
                route: route.clone(),
            })
            .observe(elapsed.as_secs_f64());
        self.series
            .requests
            .get_or_create(&RequestLabels {
                route,
                code: status,
            })
            .inc();
    }

    /// An image refused before decoding.
    pub fn record_refused(&self, refusal: Refusal) {
        self.series
            .decodes_refused
            .get_or_create(&refusal.label())
            .inc();
    }

    /// A decode skipped or stopped because its request had gone.
    pub fn record_cancelled(&self) {
        self.series.decodes_cancelled.inc();
    }

    /// One batch of `images` scored in `elapsed`.
    pub fn record_batch(&self, images: usize, elapsed: Duration) {
        self.series.images_scored.inc_by(images as u64);
        self.series.batches.inc();
        self.series.model_seconds.inc_by(elapsed.as_secs_f64());
        let now = Instant::now();
        let mut t = self.throughput();
        t.recent.push_back((now, images as u64));
        while t
            .recent
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW)
        {
            t.recent.pop_front();
        }
        let per_image = elapsed.as_secs_f64() / images.max(1) as f64;
        t.seconds_per_image = Some(match t.seconds_per_image {
            Some(old) => 0.8 * old + 0.2 * per_image,
            None => per_image,
        });
    }

    /// Seconds a client refused with 503 should wait: the time the model needs for what is
    /// queued now, at least one second.
    pub fn retry_after_s(&self) -> u64 {
        let per_image = self.throughput().seconds_per_image.unwrap_or(0.1);
        let waiting = self.in_flight.load(Ordering::Relaxed).max(1) as f64;
        (waiting * per_image).ceil().clamp(1.0, 60.0) as u64
    }

    fn images_per_second(&self) -> f64 {
        let now = Instant::now();
        let images: u64 = self
            .throughput()
            .recent
            .iter()
            .filter(|(at, _)| now.duration_since(*at) <= RATE_WINDOW)
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
        // The queue and in-flight counts are atomics the handlers and the model thread update
        // (kept so that their call sites stay plain atomics); the rate depends on the time of
        // the scrape. All are copied into their gauges here.
        let s = &self.series;
        s.queue_depth
            .set(self.queue_depth.load(Ordering::Relaxed).max(0));
        s.in_flight
            .set(self.in_flight.load(Ordering::Relaxed).max(0));
        s.images_per_second.set(self.images_per_second());
        s.uptime.set(self.started.elapsed().as_secs_f64());
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `series` (name and labels as exposed) in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.trim().parse().expect("a number"))
    }

    #[test]
    fn requests_batches_and_queue_arrive_in_the_exposition() {
        let m = Metrics::new();
        m.record_request("/v1/detect", 200, Duration::from_millis(3));
        m.record_request("/v1/detect", 200, Duration::from_millis(300));
        m.record_request("/v1/detect", 503, Duration::from_secs(500));
        m.record_request("/healthz", 200, Duration::from_millis(1));
        m.record_batch(4, Duration::from_millis(100));
        m.record_batch(2, Duration::from_millis(50));
        m.queue_depth.fetch_add(3, Ordering::Relaxed);
        m.in_flight.fetch_add(5, Ordering::Relaxed);
        let text = m.render();
        let at =
            |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}:\n{text}"));
        let detect = "route=\"/v1/detect\"";
        assert_eq!(
            at(&format!(
                "headclip_http_requests_total{{{detect},code=\"200\"}}"
            )),
            2.0
        );
        assert_eq!(
            at(&format!(
                "headclip_http_requests_total{{{detect},code=\"503\"}}"
            )),
            1.0
        );
        assert_eq!(
            at("headclip_http_requests_total{route=\"/healthz\",code=\"200\"}"),
            1.0
        );
        assert_eq!(
            at(&format!(
                "headclip_http_request_duration_seconds_count{{{detect}}}"
            )),
            3.0
        );
        let sum = at(&format!(
            "headclip_http_request_duration_seconds_sum{{{detect}}}"
        ));
        assert!((sum - 500.303).abs() < 1e-9, "{sum}");
        assert_eq!(at("headclip_images_scored_total"), 6.0);
        assert_eq!(at("headclip_batches_total"), 2.0);
        assert!((at("headclip_model_seconds_total") - 0.15).abs() < 1e-9);
        assert_eq!(at("headclip_queue_depth"), 3.0);
        assert_eq!(at("headclip_images_in_flight"), 5.0);
        assert!(at("headclip_images_per_second") > 0.0);
    }

    #[test]
    fn retry_after_follows_the_queue_and_the_model_speed() {
        let m = Metrics::new();
        assert_eq!(m.retry_after_s(), 1, "nothing measured, nothing waiting");
        m.record_batch(1, Duration::from_secs(2));
        m.in_flight.fetch_add(10, Ordering::Relaxed);
        assert_eq!(m.retry_after_s(), 20);
        m.in_flight.fetch_add(1000, Ordering::Relaxed);
        assert_eq!(m.retry_after_s(), 60, "at most a minute");
    }
}
