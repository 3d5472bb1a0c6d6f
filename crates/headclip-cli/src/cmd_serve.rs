//! `headclip serve`: anomaly detection over HTTP, with a web page.
//!
//! ```sh
//! headclip serve --weights ViT-L-14-336px.pt [--params P.safetensors] [--addr 127.0.0.1:8080] \
//!     [--token T | HEADCLIP_TOKEN=T] [--threshold 0.5] [--max-batch 8] [--batch-wait-ms 5] \
//!     [--queue 64] [--timeout-ms 30000] [--max-body-bytes 32MiB] [--max-pixels N] \
//!     [--cors-origin ORIGIN] [--overlay-ttl-s 300] [--header-timeout-s 5] [--max-connections N] \
//!     [--decode-budget-pixels N]
//! ```
//!
//! It listens on loopback unless `--addr` says otherwise, and prints `listening on http://ADDR`
//! on stdout once the model is loaded (`--addr 127.0.0.1:0` picks a free port). SIGTERM or
//! Ctrl-C stops accepting connections, closes those with no request being handled, gives the
//! requests in flight `--timeout-ms` + 5 s and exits 0; a second signal exits at once.
//! Connections beyond `--max-connections` wait in the accept backlog; a client that does not
//! send a request's head within `--header-timeout-s` is disconnected.
//!
//! # API
//!
//! - `POST /v1/detect`: the image's bytes as the body (`Content-Type` `image/*`,
//!   `application/octet-stream` or none), or `multipart/form-data` with one or more `image`
//!   parts (the answer is then an array, in the parts' order). Parameters in the query string,
//!   or for forms also as text fields before the images: `threshold` (in [0, 1], default
//!   `--threshold`) and `overlay` = `inline` (default) | `url` | `none`. Each result:
//!   `score`, `global_score`, `pixel_score`, `threshold`, `anomalous` (`score >= threshold`),
//!   `width`, `height`, `format`, `map_max`, `map_mean`, `batch_size`, `queue_ms`, `model_ms`,
//!   `elapsed_ms`, `filename` (forms), and `overlay_png_base64` (the heat map over the image at
//!   its size, PNG) or `overlay_url`. The format comes from the bytes, never from a name or a
//!   content type; no request can name a file on the server.
//! - `GET /v1/overlays/{id}.png`: an overlay made with `overlay=url`, kept in memory for
//!   `--overlay-ttl-s` (at most 1024 of them and 256 MiB; the oldest go first).
//! - `GET /healthz`: `{"status": "ok", "model", "image_size", "mode", "device", "threshold",
//!   "max_batch", "queue", "max_body_bytes", "auth_required", "version"}`.
//! - `GET /metrics`: Prometheus text: `headclip_http_requests_total{route,code}`,
//!   `headclip_http_request_duration_seconds` (histogram by route), `headclip_queue_depth`,
//!   `headclip_images_in_flight`, `headclip_images_scored_total`, `headclip_images_per_second`
//!   (last 10 s), `headclip_batches_total`, `headclip_model_seconds_total`,
//!   `headclip_decodes_refused_total{reason}` (`budget`: no room in `--decode-budget-pixels`;
//!   `limits`: over `--max-pixels`; `invalid`: not a supported image) and
//!   `headclip_decodes_cancelled_total` (decodes skipped or stopped because the request had
//!   gone).
//! - `GET /`: the page (drop or pick images, scores, verdicts against a threshold slider,
//!   overlays, the colour scale); `GET /v1/colormap.png`: that scale, 0 → 1 left to right.
//!
//! With a token, `/v1/detect` and `/v1/overlays/…` need `Authorization: Bearer <token>`; the
//! page asks for it. `/`, `/healthz`, `/metrics` and the colour scale stay open.
//!
//! # Errors
//!
//! Always JSON `{"error": "..."}`:
//! 400 empty body, bad parameter, malformed form or no `image` part; 401 missing or wrong token;
//! 408 body not received within `--timeout-ms`; 413 body over `--max-body-bytes`, image over
//! `--max-pixels` (read from its header, before decoding) or more images in one form than
//! `--queue`; 415 another `Content-Type`; 422 bytes that are not a supported image, or corrupt,
//! truncated or an unsupported variant; 503 with `Retry-After` (seconds) when `--queue` images
//! are already being handled, or when the image's pixels do not fit in what is left of
//! `--decode-budget-pixels`; 504 when the image is not scored within `--timeout-ms` of the
//! request's arrival; 500 if the model fails. A form with one bad image fails as a whole, naming
//! the image.
//!
//! # Concurrency
//!
//! One model, on one OS thread that owns it. Handlers decode and pre-process on tokio's blocking
//! pool, then queue the pixels on a bounded channel; the model thread scores them in batches of
//! up to `--max-batch`, waiting at most `--batch-wait-ms` for a batch to fill.
//!
//! # Examples
//!
//! ```sh
//! headclip serve --weights ViT-B-16.pt --params headclip-params.safetensors &
//! curl -s http://127.0.0.1:8080/healthz
//! curl -s -H 'Content-Type: application/octet-stream' --data-binary @bottle.png \
//!     'http://127.0.0.1:8080/v1/detect?overlay=none'
//! curl -s -F image=@a.png -F image=@b.jpg 'http://127.0.0.1:8080/v1/detect?threshold=0.7&overlay=url'
//! curl -s -H 'Authorization: Bearer s3cret' -H 'Content-Type: image/png' --data-binary @a.png \
//!     http://127.0.0.1:8080/v1/detect | jq -r .overlay_png_base64 | base64 -d > a_overlay.png
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use headclip_data::images::DecodeLimits;

use crate::calibration_args::CalibrationArgs;
use crate::engine::{FewShotArgs, ModelArgs};
use headclip::calibration::Calibration;

#[path = "serve/mod.rs"]
mod serve;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub few_shot: FewShotArgs,
    /// Address to listen on (loopback by default; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Require `Authorization: Bearer <TOKEN>` on /v1/detect and /v1/overlays.
    #[arg(long, env = "HEADCLIP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Default decision threshold: an image is anomalous when its score is at least this
    /// (default: the calibration's image threshold, else 0.5).
    #[arg(long)]
    pub threshold: Option<f32>,
    #[command(flatten)]
    pub calibration: CalibrationArgs,
    /// Most images scored together in one batch.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// How long a batch waits to fill after its first image, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub batch_wait_ms: u64,
    /// Most images handled at once (decoding, queued or scored); more get 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Per-request time limit in milliseconds (504 when exceeded).
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// Largest request body (bytes; suffixes K, M, G, KiB, MiB, GiB).
    #[arg(long, default_value = "32MiB", value_parser = parse_size)]
    pub max_body_bytes: u64,
    /// Refuse images with more pixels than this (read from the header, before decoding).
    #[arg(long, default_value_t = DecodeLimits::default().max_pixels)]
    pub max_pixels: u64,
    /// Allow this origin (or `*`) to call the API from a browser (CORS). Off by default.
    #[arg(long)]
    pub cors_origin: Option<String>,
    /// Seconds an overlay made with `overlay=url` stays available.
    #[arg(long, default_value_t = 300)]
    pub overlay_ttl_s: u64,
    /// Seconds a client has to send a request's head (line and headers); slower ones are
    /// disconnected, and so are kept-alive connections idle for this long.
    #[arg(long, default_value_t = 5)]
    pub header_timeout_s: u64,
    /// Most connections open at once; more wait in the accept backlog. Default: the open-file
    /// limit (`ulimit -n`) less 64, at most 4096.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Most pixels that images may hold at once while decoded, pre-processed and drawn on;
    /// an image that does not fit gets 503 with Retry-After at once. Default: --max-pixels
    /// times the decoding threads (the cores, at least 2).
    #[arg(long)]
    pub decode_budget_pixels: Option<u64>,
}

/// `123`, `64K`, `32MiB`, `1.5GB`… in bytes (K/M/G and KB/MB/GB are powers of 1000).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 32MiB"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    let bytes = (number * scale).round();
    if !(1.0..=u64::MAX as f64).contains(&bytes) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as u64)
}

pub fn run(args: ServeArgs) -> Result<i32> {
    let Ok(max_body_bytes) = usize::try_from(args.max_body_bytes) else {
        bail!("--max-body-bytes is too large for this machine");
    };
    let calibration = match &args.calibration.calibration {
        Some(path) => Some(serve::Loaded {
            path: path.clone(),
            calibration: Calibration::load(path)?,
            force: args.calibration.force_calibration,
        }),
        None => None,
    };
    let threshold = match (args.threshold, &calibration) {
        (Some(t), Some(c)) => {
            tracing::warn!(
                "--threshold {t} replaces the calibration's image threshold {} as the default",
                c.calibration.image.threshold
            );
            t
        }
        (Some(t), None) => t,
        (None, Some(c)) => c.calibration.image.threshold.clamp(0.0, 1.0),
        (None, None) => 0.5,
    };
    let config = serve::Config {
        addr: args.addr,
        token: args.token,
        threshold,
        calibration,
        max_batch: args.max_batch,
        batch_wait: Duration::from_millis(args.batch_wait_ms),
        queue: args.queue,
        timeout: Duration::from_millis(args.timeout_ms),
        max_body_bytes,
        max_pixels: args.max_pixels,
        cors_origin: args.cors_origin,
        overlay_ttl: Duration::from_secs(args.overlay_ttl_s),
        header_timeout: Duration::from_secs(args.header_timeout_s),
        max_connections: args
            .max_connections
            .unwrap_or_else(serve::default_max_connections),
        decode_budget_pixels: args
            .decode_budget_pixels
            .unwrap_or_else(|| serve::default_decode_budget(args.max_pixels)),
    };
    let model = ModelArgs {
        few_shot: Some(args.few_shot),
        ..args.model
    };
    serve::run(config, model)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32MiB"), Ok(32 << 20));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("64K"), Ok(64_000));
        assert_eq!(parse_size("1.5 GiB"), Ok(3 << 29));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("0").is_err());
    }
}
