//! The server behind `headclip serve`: an axum router on a tokio runtime, the model on its own
//! thread (see [`worker`]), and the page's files embedded in the binary.
//!
//! The path of one image: the handler reads the body (at most `--max-body-bytes`), reads the
//! image's header, takes one of the `--queue` admission places and reserves its pixels in
//! `--decode-budget-pixels` (no room: 503 with `Retry-After`), decodes and pre-processes on
//! tokio's blocking pool, hands the pixels to the model thread through a bounded channel, waits
//! for its batch, and draws the overlay on the blocking pool again. The async workers only move
//! bytes. Connections come in through [`listen`]'s accept loop.

mod api;
mod calibrated;
mod decode;
mod error;
mod listen;
mod metrics;
mod store;
mod v2;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, Method};
use axum::routing::{get, post};
use axum::{middleware, Router};
use tokio::sync::Semaphore;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::engine::ModelArgs;
use headclip::detector::ModelInfo;
use headclip_data::images::{DecodeLimits, Preprocessor};
use metrics::Metrics;
use store::OverlayStore;
use worker::{BatchConfig, Submitter};

pub use calibrated::Loaded;
pub use listen::default_max_connections;

/// The server's settings (from `ServeArgs`).
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub token: Option<String>,
    pub threshold: f32,
    pub max_batch: usize,
    pub batch_wait: Duration,
    pub queue: usize,
    pub timeout: Duration,
    pub max_body_bytes: usize,
    pub max_pixels: u64,
    pub cors_origin: Option<String>,
    pub overlay_ttl: Duration,
    /// Time a client has to send a request's head.
    pub header_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Pixels that admitted images may hold at once on their way through the blocking pool.
    pub decode_budget_pixels: u64,
    /// A calibration (`--calibration`): normalised scores, and the page's verdicts.
    pub calibration: Option<calibrated::Loaded>,
}

/// Overlays kept for `overlay=url`: at most this many…
const OVERLAY_MAX_ENTRIES: usize = 1024;
/// …and this many bytes.
const OVERLAY_MAX_BYTES: usize = 256 << 20;

/// What every handler shares.
pub struct App {
    cfg: Config,
    info: ModelInfo,
    /// The model's decode and pre-process stage, run on the blocking pool.
    preprocessor: Preprocessor,
    submit: Submitter,
    /// One permit per image admitted; `--queue` in all.
    admission: Arc<Semaphore>,
    /// `--decode-budget-pixels`, reserved from each image's header.
    decode_budget: Arc<decode::Budget>,
    metrics: Arc<Metrics>,
    overlays: OverlayStore,
    colormap_png: axum::body::Bytes,
}

impl Config {
    fn check(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.threshold) {
            bail!("--threshold must be in [0, 1]");
        }
        if self.max_batch == 0 {
            bail!("--max-batch must be at least 1");
        }
        if self.queue == 0 {
            bail!("--queue must be at least 1");
        }
        if self.timeout.is_zero() {
            bail!("--timeout-ms must be positive");
        }
        if self.max_body_bytes == 0 {
            bail!("--max-body-bytes must be positive");
        }
        if self.max_pixels == 0 {
            bail!("--max-pixels must be positive");
        }
        if self.decode_budget_pixels < self.max_pixels {
            bail!(
                "--decode-budget-pixels ({}) must be at least --max-pixels ({}), or an image \
                 within the pixel limit could never be decoded",
                self.decode_budget_pixels,
                self.max_pixels
            );
        }
        if self.header_timeout.is_zero() {
            bail!("--header-timeout-s must be positive");
        }
        self.check_connections()?;
        if self
            .token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty() || t.trim() != t)
        {
            bail!("the token must be non-empty, without spaces around it");
        }
        Ok(())
    }

    /// A connection limit the file limit can hold, with room for the server's own files.
    fn check_connections(&self) -> Result<()> {
        if self.max_connections == 0 || u32::try_from(self.max_connections).is_err() {
            bail!("--max-connections must be in [1, {}]", u32::MAX);
        }
        if let Some(files) = listen::open_file_limit() {
            let room = files.saturating_sub(listen::RESERVED_FILES);
            if self.max_connections as u64 > room {
                bail!(
                    "--max-connections {} does not fit in this process's file limit of {files} \
                     (ulimit -n) less {} for the server itself: lower it to {room} or raise the limit",
                    self.max_connections,
                    listen::RESERVED_FILES
                );
            }
        }
        Ok(())
    }

    /// Requests still being handled at SIGTERM are answered within `--timeout-ms`; the extra
    /// seconds are for writing the last answers out.
    fn shutdown_grace(&self) -> Duration {
        self.timeout + Duration::from_secs(5)
    }
}

/// Loads the model, serves until SIGTERM or Ctrl-C, then finishes the requests in flight and
/// returns 0.
pub fn run(cfg: Config, model: ModelArgs) -> Result<i32> {
    cfg.check()?;
    // Bind before loading the model: a busy port fails in a second, not after a long load.
    let listener = std::net::TcpListener::bind(cfg.addr)
        .with_context(|| format!("cannot listen on {}", cfg.addr))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() && cfg.token.is_none() {
        tracing::warn!("listening on {local}, beyond this machine, without a token (--token or HEADCLIP_TOKEN)");
    }

    let metrics = Arc::new(Metrics::new());
    let batch = BatchConfig {
        max_batch: cfg.max_batch,
        batch_wait: cfg.batch_wait,
        capacity: cfg.queue,
    };
    let limits = DecodeLimits {
        max_pixels: cfg.max_pixels,
        ..DecodeLimits::default()
    };
    let (ready, submit, worker) = worker::start(
        model,
        limits,
        batch,
        metrics.clone(),
        cfg.calibration.is_some(),
    )?;
    if let Some(loaded) = &cfg.calibration {
        loaded.check(ready.identity.as_ref())?;
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(cores().clamp(1, 4))
        // Decoding and overlays: bounded, so that many large images cannot exhaust memory.
        .max_blocking_threads(blocking_threads())
        .thread_name("headclip-http")
        .build()?;
    let app = Arc::new(App {
        admission: Arc::new(Semaphore::new(cfg.queue)),
        decode_budget: decode::Budget::new(cfg.decode_budget_pixels),
        overlays: OverlayStore::new(cfg.overlay_ttl, OVERLAY_MAX_ENTRIES, OVERLAY_MAX_BYTES),
        colormap_png: api::colormap_image()?.into(),
        cfg,
        info: ready.info,
        preprocessor: ready.preprocessor,
        submit,
        metrics,
    });
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let router = router(app.clone())?;
        tracing::info!(
            "serving {} (S = {}, {}) on http://{local}/ (max batch {}, queue {})",
            app.info.model,
            app.info.image_size,
            app.info.mode,
            app.cfg.max_batch,
            app.cfg.queue
        );
        // The line tests and scripts wait for; everything else goes to stderr.
        println!("listening on http://{local}");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        let limits = listen::Limits {
            max_connections: app.cfg.max_connections,
            header_timeout: app.cfg.header_timeout,
            shutdown_grace: app.cfg.shutdown_grace(),
        };
        listen::serve(listener, router, limits, shutdown_signal()).await?;
        tracing::info!("all requests answered; stopping");
        anyhow::Ok(())
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    worker.stop();
    result.map(|()| 0)
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// Threads of the blocking pool, where images are decoded and overlays drawn.
fn blocking_threads() -> usize {
    cores().max(2)
}

/// `--decode-budget-pixels` when not given: one image at `--max-pixels` per decoding thread,
/// so that the largest images run side by side instead of queuing behind each other.
pub fn default_decode_budget(max_pixels: u64) -> u64 {
    max_pixels.saturating_mul(blocking_threads() as u64)
}

fn router(app: Arc<App>) -> Result<Router> {
    let protected = Router::new()
        .route("/v1/detect", post(api::detect))
        .route("/v1/overlays/{file}", get(api::overlay_png))
        .merge(v2::protected_routes())
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            api::require_token,
        ));
    let mut router = Router::new()
        .route("/", get(api::index))
        .route("/assets/app.js", get(api::app_js))
        .route("/assets/style.css", get(api::style_css))
        .route("/healthz", get(api::healthz))
        .route("/metrics", get(api::metrics))
        .route("/v1/colormap.png", get(api::colormap_png))
        .merge(v2::open_routes())
        .merge(protected)
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(DefaultBodyLimit::max(app.cfg.max_body_bytes))
        .layer(middleware::from_fn_with_state(app.clone(), api::track));
    if let Some(origin) = &app.cfg.cors_origin {
        let allow = if origin == "*" {
            AllowOrigin::any()
        } else {
            AllowOrigin::exact(
                HeaderValue::from_str(origin)
                    .context("--cors-origin is not a valid header value")?,
            )
        };
        router = router.layer(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
                .expose_headers([header::RETRY_AFTER]),
        );
    }
    Ok(router.with_state(app))
}

/// Resolves on the first SIGTERM or Ctrl-C; a second one ends the process at once.
async fn shutdown_signal() {
    wait_for_signal().await;
    tracing::info!("shutting down: no new connections, finishing the requests in flight");
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second signal: exiting without waiting");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
