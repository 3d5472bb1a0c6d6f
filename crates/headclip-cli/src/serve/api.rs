//! The HTTP handlers: detection, overlays, health, metrics and the page.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{FromRequest, MatchedPath, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use headclip_data::images::{DataError, ImageFormat, PreparedImage, RgbImage};
use headclip_data::viz;
use serde_json::{json, Value};
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tokio::time::{timeout_at, Instant as Deadline};

use super::decode::{self, Cancel, NotPrepared, Reservation};
use super::error::ApiError;
use super::metrics::Refusal;
use super::worker::{Job, Scored, SubmitError};
use super::App;

/// What to return of the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayMode {
    /// `overlay_png_base64` in the JSON.
    Inline,
    /// `overlay_url`, served from memory for `--overlay-ttl-s`.
    Url,
    /// No overlay (faster).
    None,
}

impl OverlayMode {
    fn parse(s: &str) -> Result<Self, ApiError> {
        match s {
            "inline" => Ok(Self::Inline),
            "url" => Ok(Self::Url),
            "none" => Ok(Self::None),
            other => Err(ApiError::bad_request(format!(
                "overlay must be inline, url or none, not {other:?}"
            ))),
        }
    }
}

fn parse_threshold(s: &str) -> Result<f32, ApiError> {
    match s.trim().parse::<f32>() {
        Ok(t) if (0.0..=1.0).contains(&t) => Ok(t),
        _ => Err(ApiError::bad_request(format!(
            "threshold must be a number in [0, 1], not {s:?}"
        ))),
    }
}

/// Checks `Authorization: Bearer <token>` when the server has a token.
pub async fn require_token(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if let Some(token) = &app.cfg.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()));
        if !ok {
            let message = if given.is_some() {
                "wrong token"
            } else {
                "missing token: send Authorization: Bearer <token>"
            };
            drain(
                req,
                app.cfg.max_body_bytes,
                Deadline::now() + app.cfg.timeout,
            )
            .await;
            return ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts every request by route and status, and times it.
pub async fn track(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let response = next.run(req).await;
    let route = route.as_deref().unwrap_or("unmatched");
    app.metrics
        .record_request(route, response.status().as_u16(), started.elapsed());
    response
}

/// `POST /v1/detect`.
pub async fn detect(State(app): State<Arc<App>>, req: Request) -> Response {
    let started = Instant::now();
    let deadline = Deadline::now() + app.cfg.timeout;
    match detect_inner(&app, req, started, deadline).await {
        Ok(value) => Json(value).into_response(),
        Err(e) => e.into_response(),
    }
}

enum BodyKind {
    Raw,
    Multipart,
}

fn body_kind(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(BodyKind::Raw);
    };
    let value = value.to_str().unwrap_or("");
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/octet-stream" => Ok(BodyKind::Raw),
        "multipart/form-data" if value.to_ascii_lowercase().contains("boundary=") => {
            Ok(BodyKind::Multipart)
        }
        "multipart/form-data" => Err(ApiError::bad_request(
            "multipart/form-data without a boundary",
        )),
        t if t.starts_with("image/") => Ok(BodyKind::Raw),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type {value:?} is not accepted: send the image's bytes as image/* or \
                 application/octet-stream, or a multipart/form-data form with `image` parts"
            ),
        )),
    }
}

/// Request parameters: from the query, and for forms also from text parts.
#[derive(Debug, Clone, Copy)]
struct Params {
    threshold: f32,
    overlay: OverlayMode,
}

fn query_params(app: &App, req: &Request) -> Result<Params, ApiError> {
    let mut params = Params {
        threshold: app.cfg.threshold,
        overlay: OverlayMode::Inline,
    };
    let Query(query) = Query::<HashMap<String, String>>::try_from_uri(req.uri())
        .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
    for (key, value) in &query {
        match key.as_str() {
            "threshold" => params.threshold = parse_threshold(value)?,
            "overlay" => params.overlay = OverlayMode::parse(value)?,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?} (known: threshold, overlay)"
                )))
            }
        }
    }
    Ok(params)
}

async fn detect_inner(
    app: &Arc<App>,
    req: Request,
    started: Instant,
    deadline: Deadline,
) -> Result<Value, ApiError> {
    let limit = app.cfg.max_body_bytes;
    let (params, kind) = match check_request(app, &req) {
        Ok(checked) => checked,
        Err(e) => {
            // Read (and drop) what the client is sending, so that it sees the answer instead of a
            // connection reset; not when the body is over the limit anyway.
            if e.status != StatusCode::PAYLOAD_TOO_LARGE {
                drain(req, limit, deadline).await;
            }
            return Err(e);
        }
    };
    match kind {
        BodyKind::Raw => {
            let bytes = timeout_at(deadline, read_body(req.into_body(), limit))
                .await
                .map_err(|_| body_timeout())??;
            if bytes.is_empty() {
                return Err(ApiError::bad_request("empty body: send the image's bytes"));
            }
            let bytes = Bytes::from(bytes);
            let admitted = admit(app, &bytes)?;
            let result = timeout_at(
                deadline,
                score_image(
                    app.clone(),
                    Payload::Encoded(bytes),
                    params.overlay,
                    admitted,
                ),
            )
            .await
            .map_err(|_| ApiError::timeout(app.cfg.timeout.as_millis()))??;
            Ok(result.to_json(
                params.threshold,
                app.cfg.calibration.as_ref(),
                started,
                None,
            ))
        }
        BodyKind::Multipart => {
            let mut form = Multipart::from_request(req, &())
                .await
                .map_err(|r| ApiError::new(r.status(), r.body_text()))?;
            let result = detect_form(app, &mut form, params, started, deadline).await;
            // A refused form is read to its end (the body limit still bounds it), so that a
            // client still sending sees the answer instead of a broken pipe: refusing a third
            // image under `--queue 2` must not cut off the upload of that image.
            if let Err(e) = &result {
                if e.status != StatusCode::REQUEST_TIMEOUT {
                    drain_form(&mut form, deadline).await;
                }
            }
            result
        }
    }
}

/// Reads and drops the body of a request being refused, so that a client still sending sees
/// the answer instead of a reset connection. Not when the client waits for `100 Continue`: it
/// will not send the body at all.
pub(super) async fn drain(req: Request, limit: usize, deadline: Deadline) {
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if !expects_continue {
        let _ = timeout_at(deadline, read_body(req.into_body(), limit)).await;
    }
}

pub(super) fn body_timeout() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "the request body did not arrive within the timeout",
    )
}

/// Parameters and body kind, from the head of the request.
fn check_request(app: &App, req: &Request) -> Result<(Params, BodyKind), ApiError> {
    let params = query_params(app, req)?;
    let kind = body_kind(req.headers())?;
    let limit = app.cfg.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    Ok((params, kind))
}

/// Reads the rest of a form that is being refused.
async fn drain_form(form: &mut Multipart, deadline: Deadline) {
    let _ = timeout_at(deadline, async {
        while let Ok(Some(mut field)) = form.next_field().await {
            while let Ok(Some(_)) = field.chunk().await {}
        }
    })
    .await;
}

async fn detect_form(
    app: &Arc<App>,
    form: &mut Multipart,
    mut params: Params,
    started: Instant,
    deadline: Deadline,
) -> Result<Value, ApiError> {
    let mut tasks = JoinSet::new();
    let mut names: Vec<Option<String>> = Vec::new();
    let mut parts = 0usize;
    let max_images = app.cfg.queue;
    loop {
        let field = timeout_at(deadline, form.next_field())
            .await
            .map_err(|_| body_timeout())?
            .map_err(ApiError::from_form)?;
        let Some(field) = field else { break };
        parts += 1;
        if parts > max_images + 16 {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too many parts in the form",
            ));
        }
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "image" | "images" => {
                let index = names.len();
                if index >= max_images {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("at most {max_images} images per request (--queue)"),
                    ));
                }
                let file_name = field.file_name().map(bounded_file_name);
                let bytes = timeout_at(deadline, field.bytes())
                    .await
                    .map_err(|_| body_timeout())?
                    .map_err(ApiError::from_form)?;
                let what = describe(index, file_name.as_deref());
                if bytes.is_empty() {
                    return Err(ApiError::bad_request("empty image part").context(&what));
                }
                let admitted = admit(app, &bytes).map_err(|e| e.context(&what))?;
                names.push(file_name);
                let app = app.clone();
                let overlay = params.overlay;
                tasks.spawn(async move {
                    (
                        index,
                        score_image(app, Payload::Encoded(bytes), overlay, admitted)
                            .await
                            .map_err(|e| e.context(&what)),
                    )
                });
            }
            "threshold" | "overlay" => {
                let text = timeout_at(deadline, field.text())
                    .await
                    .map_err(|_| body_timeout())?
                    .map_err(ApiError::from_form)?;
                if name == "threshold" {
                    params.threshold = parse_threshold(&text)?;
                } else if !names.is_empty() {
                    return Err(ApiError::bad_request(
                        "put the overlay field before the image parts",
                    ));
                } else {
                    params.overlay = OverlayMode::parse(text.trim())?;
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unexpected form field {other:?} (known: image, threshold, overlay)"
                )))
            }
        }
    }
    if names.is_empty() {
        return Err(ApiError::bad_request("the form has no `image` part"));
    }
    let mut results: Vec<Option<ImageResult>> = (0..names.len()).map(|_| None).collect();
    let timeout_ms = app.cfg.timeout.as_millis();
    while let Some(joined) = timeout_at(deadline, tasks.join_next())
        .await
        .map_err(|_| ApiError::timeout(timeout_ms))?
    {
        let (index, result) =
            joined.map_err(|e| ApiError::internal(format!("a scoring task failed: {e}")))?;
        results[index] = Some(result?);
    }
    let out = results
        .into_iter()
        .zip(names)
        .map(|(r, name)| {
            r.expect("every task answered").to_json(
                params.threshold,
                app.cfg.calibration.as_ref(),
                started,
                name,
            )
        })
        .collect();
    Ok(Value::Array(out))
}

/// Longest file name echoed back, in bytes (a file system's limit); a client's name can be as
/// long as the body allows, and answers and logs must not grow with it.
const MAX_ECHOED_NAME: usize = 255;

/// The part's file name as answers and errors show it: cut to [`MAX_ECHOED_NAME`] bytes at a
/// character boundary, with "…" where it was cut.
fn bounded_file_name(name: &str) -> String {
    if name.len() <= MAX_ECHOED_NAME {
        return name.to_string();
    }
    let mut end = MAX_ECHOED_NAME;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}

fn describe(index: usize, file_name: Option<&str>) -> String {
    match file_name {
        Some(name) if !name.is_empty() => format!("image {} ({name:?})", index + 1),
        _ => format!("image {}", index + 1),
    }
}

/// Reads the whole body, refusing it as soon as it passes `limit` bytes.
pub(super) async fn read_body(mut body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(ApiError::too_large(limit));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// A place in the admission queue, held until the image's answer is ready.
struct QueuePlace {
    _permit: OwnedSemaphorePermit,
    app: Arc<App>,
}

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.app.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An image let in: a queue place, and the pixels reserved for decoding it.
pub(super) struct Admitted {
    place: QueuePlace,
    pixels: Reservation,
    /// The encoded format; `None` for decoded pixels.
    format: Option<ImageFormat>,
}

/// An image as a request carries it.
pub(super) enum Payload {
    /// Encoded bytes, in a format the decoder sniffs.
    Encoded(Bytes),
    /// Pixels already decoded (the v2 protocol's UINT8 tensors), made into RGB on the blocking
    /// pool by this function.
    Pixels(Box<dyn FnOnce() -> RgbImage + Send>),
}

/// Admits an image from its header, before any decoding: refuses it (413, 422) over the decode
/// limits or when it is not an image, and with 503 and `Retry-After` when the `--queue` places
/// or the `--decode-budget-pixels` are taken.
pub(super) fn admit(app: &Arc<App>, bytes: &[u8]) -> Result<Admitted, ApiError> {
    let estimate = decode::estimate(bytes, &app.preprocessor.limits).map_err(|e| {
        let refused = ApiError::from_data(&e);
        app.metrics.record_refused(header_refusal(refused.status));
        refused
    })?;
    reserve(app, estimate.cost, Some(estimate.format))
}

/// [`admit`] for decoded pixels: refused (413) over `--max-pixels`, then as an encoded image.
pub(super) fn admit_pixels(app: &Arc<App>, width: u32, height: u32) -> Result<Admitted, ApiError> {
    let cost = u64::from(width) * u64::from(height);
    let max_pixels = app.preprocessor.limits.max_pixels;
    if cost > max_pixels {
        app.metrics.record_refused(Refusal::Limits);
        return Err(ApiError::from_data(&DataError::TooLarge {
            width,
            height,
            max_pixels,
        }));
    }
    reserve(app, cost, None)
}

/// A queue place and `cost` pixels of the decode budget, or 503 with `Retry-After`.
fn reserve(app: &Arc<App>, cost: u64, format: Option<ImageFormat>) -> Result<Admitted, ApiError> {
    let place = take_queue_place(app)?;
    let Some(pixels) = app.decode_budget.try_reserve(cost) else {
        app.metrics.record_refused(Refusal::Budget);
        return Err(ApiError::busy_decoding(app.metrics.retry_after_s()));
    };
    Ok(Admitted {
        place,
        pixels,
        format,
    })
}

/// The `/metrics` reason for an image refused from its header with `status`.
fn header_refusal(status: StatusCode) -> Refusal {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        Refusal::Limits
    } else {
        Refusal::Invalid
    }
}

/// Takes one of the `--queue` places, or refuses with 503 and `Retry-After`.
fn take_queue_place(app: &Arc<App>) -> Result<QueuePlace, ApiError> {
    match app.admission.clone().try_acquire_owned() {
        Ok(permit) => {
            app.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
            Ok(QueuePlace {
                _permit: permit,
                app: app.clone(),
            })
        }
        Err(_) => Err(ApiError::busy(app.metrics.retry_after_s())),
    }
}

enum OverlayOut {
    None,
    Inline(String),
    Url(String),
}

pub(super) struct ImageResult {
    pub(super) scored: Scored,
    overlay: OverlayOut,
}

impl ImageResult {
    fn to_json(
        &self,
        threshold: f32,
        calibration: Option<&super::calibrated::Loaded>,
        started: Instant,
        file_name: Option<String>,
    ) -> Value {
        let d = &self.scored.detection;
        let mut v = json!({
            "score": d.score,
            "global_score": d.global_score,
            "pixel_score": d.pixel_score,
            "threshold": threshold,
            "anomalous": d.score >= threshold,
            "width": d.width,
            "height": d.height,
            "format": d.format.map(|f| f.to_string()).unwrap_or_default(),
            "map_max": d.map_max,
            "map_mean": d.map_mean,
            "batch_size": self.scored.batch_size,
            "queue_ms": round3(self.scored.queue_ms),
            "model_ms": round3(self.scored.model_ms),
            "elapsed_ms": round3(started.elapsed().as_secs_f64() * 1e3),
        });
        match &self.overlay {
            OverlayOut::None => {}
            OverlayOut::Inline(b64) => v["overlay_png_base64"] = json!(b64),
            OverlayOut::Url(url) => v["overlay_url"] = json!(url),
        }
        if let Some(name) = file_name {
            v["filename"] = json!(name);
        }
        if let Some(c) = calibration {
            c.add_to(&mut v, d);
        }
        v
    }
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// Decodes (on the blocking pool), queues for the model, and draws the overlay (blocking pool).
/// Dropping the future (timeout, client gone) cancels the blocking work not yet begun.
pub(super) async fn score_image(
    app: Arc<App>,
    payload: Payload,
    overlay: OverlayMode,
    admitted: Admitted,
) -> Result<ImageResult, ApiError> {
    let Admitted {
        place,
        pixels,
        format,
    } = admitted;
    let cancel = Cancel::default();
    let _cancel_on_drop = cancel.on_drop();
    let (image, pixels) = prepare(
        &app,
        payload,
        format,
        overlay != OverlayMode::None,
        pixels,
        &cancel,
    )
    .await?;

    let (reply, answer) = oneshot::channel();
    let job = Job {
        image,
        reply,
        enqueued: Instant::now(),
    };
    match app.submit.submit(job) {
        Ok(()) => {}
        Err(SubmitError::Full) => return Err(ApiError::busy(app.metrics.retry_after_s())),
        Err(SubmitError::Stopped) => {
            return Err(ApiError::internal("the model thread has stopped"))
        }
    }
    let scored = answer
        .await
        .map_err(|_| ApiError::internal("the model thread dropped the image"))?
        .map_err(ApiError::internal)?;
    let (scored, overlay_out) = with_overlay(&app, scored, overlay, pixels, cancel.clone()).await?;
    drop(place);
    Ok(ImageResult {
        scored,
        overlay: overlay_out,
    })
}

/// Decodes and pre-processes on the blocking pool, the reserved pixels travelling with the work:
/// they are given back when the work ends, even if the request has gone before. They come back
/// for the overlay only when there is one to draw (its original image is still held).
async fn prepare(
    app: &Arc<App>,
    payload: Payload,
    format: Option<ImageFormat>,
    keep_original: bool,
    pixels: Reservation,
    cancel: &Cancel,
) -> Result<(PreparedImage, Option<Reservation>), ApiError> {
    let preprocessor = app.preprocessor;
    let metrics = app.metrics.clone();
    let cancel = cancel.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let outcome = match payload {
            Payload::Encoded(bytes) => decode::prepare_unless_cancelled(
                &preprocessor,
                &bytes,
                format,
                keep_original,
                &cancel,
            ),
            Payload::Pixels(make) => {
                decode::prepare_pixels_unless_cancelled(&preprocessor, make, keep_original, &cancel)
            }
        };
        if matches!(outcome, Err(NotPrepared::Cancelled)) {
            metrics.record_cancelled();
        }
        (outcome, keep_original.then_some(pixels))
    })
    .await
    .map_err(|e| ApiError::internal(format!("decoding failed: {e}")))?;
    match outcome {
        (Ok(image), pixels) => Ok((image, pixels)),
        (Err(NotPrepared::Failed(e)), _) => Err(ApiError::from_data(&e)),
        // Only once the request has gone, so nobody reads this.
        (Err(NotPrepared::Cancelled), _) => Err(ApiError::timeout(app.cfg.timeout.as_millis())),
    }
}

/// The overlay as asked: drawn on the blocking pool (the result goes there and back, with its
/// image, without a copy) unless the request has gone, then inline or in the overlay store.
async fn with_overlay(
    app: &App,
    scored: Scored,
    overlay: OverlayMode,
    pixels: Option<Reservation>,
    cancel: Cancel,
) -> Result<(Scored, OverlayOut), ApiError> {
    if overlay == OverlayMode::None {
        return Ok((scored, OverlayOut::None));
    }
    let (scored, png) = tokio::task::spawn_blocking(move || {
        let _pixels = pixels;
        let png = (!cancel.is_cancelled())
            .then(|| scored.detection.overlay())
            .flatten()
            .map(|img| viz::encode_png(&img));
        (scored, png)
    })
    .await
    .map_err(|e| ApiError::internal(format!("drawing the overlay failed: {e}")))?;
    let png = match png {
        Some(png) => png.map_err(|e| ApiError::internal(e.to_string()))?,
        None => return Ok((scored, OverlayOut::None)),
    };
    let out = if overlay == OverlayMode::Url {
        let id = app
            .overlays
            .insert(png)
            .ok_or_else(|| ApiError::internal("the overlay is larger than the overlay store"))?;
        OverlayOut::Url(format!("/v1/overlays/{id}.png"))
    } else {
        OverlayOut::Inline(base64::engine::general_purpose::STANDARD.encode(png))
    };
    Ok((scored, out))
}

/// `GET /v1/overlays/{id}.png`.
pub async fn overlay_png(State(app): State<Arc<App>>, Path(file): Path<String>) -> Response {
    let id = file.strip_suffix(".png").unwrap_or("");
    let valid = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    match valid.then(|| app.overlays.get(id)).flatten() {
        Some(png) => (
            [
                (header::CONTENT_TYPE, "image/png"),
                (header::CACHE_CONTROL, "private, max-age=300"),
            ],
            png,
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "no such overlay (expired or never made)",
        )
        .into_response(),
    }
}

/// `GET /healthz`.
pub async fn healthz(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "model": app.info.model,
        "image_size": app.info.image_size,
        "mode": app.info.mode,
        "device": app.info.device,
        "threshold": app.cfg.threshold,
        "max_batch": app.cfg.max_batch,
        "queue": app.cfg.queue,
        "max_body_bytes": app.cfg.max_body_bytes,
        "auth_required": app.cfg.token.is_some(),
        "calibration": app.cfg.calibration.as_ref().map(|c| c.summary()),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// `GET /metrics`.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// `GET /v1/colormap.png`: the overlay's colour scale, 0 on the left to 1 on the right.
pub async fn colormap_png(State(app): State<Arc<App>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        app.colormap_png.clone(),
    )
        .into_response()
}

/// The 256×16 legend image.
pub fn colormap_image() -> anyhow::Result<Vec<u8>> {
    let (w, h) = (256u32, 16u32);
    let mut pixels = Vec::with_capacity((w * h * 3) as usize);
    for _ in 0..h {
        for x in 0..w {
            pixels.extend_from_slice(&viz::colormap(x as f32 / (w - 1) as f32));
        }
    }
    Ok(viz::encode_png(&RgbImage::new(w, h, pixels)?)?)
}

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const STYLE_CSS: &str = include_str!("../../assets/style.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; \
             connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    response
}

/// `GET /`.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /assets/app.js`.
pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /assets/style.css`.
pub async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

/// A known path with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this path",
    )
}

/// Anything else.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_file_names_are_cut_at_a_character() {
        assert_eq!(bounded_file_name("a.png"), "a.png");
        let long = "é".repeat(1 << 19); // 1 MiB of two-byte characters
        let cut = bounded_file_name(&long);
        assert!(cut.len() <= MAX_ECHOED_NAME + "…".len(), "{}", cut.len());
        assert!(cut.ends_with('…') && cut.starts_with("éé"));
    }

    #[test]
    fn content_types_are_sorted_out() {
        let mut h = HeaderMap::new();
        assert!(matches!(body_kind(&h), Ok(BodyKind::Raw)));
        for (ct, raw) in [
            ("image/png", Some(true)),
            ("IMAGE/JPEG", Some(true)),
            ("application/octet-stream", Some(true)),
            ("multipart/form-data; boundary=x", Some(false)),
            ("multipart/form-data", None),
            ("application/json", None),
            ("text/plain", None),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            match (body_kind(&h), raw) {
                (Ok(BodyKind::Raw), Some(true)) | (Ok(BodyKind::Multipart), Some(false)) => {}
                (Err(e), None) => assert!(e.status.is_client_error()),
                _ => panic!("{ct}"),
            }
        }
    }

    #[test]
    fn parameters_are_checked() {
        assert_eq!(parse_threshold("0.25").unwrap(), 0.25);
        assert!(
            parse_threshold("1.5").is_err()
                && parse_threshold("nan").is_err()
                && parse_threshold("x").is_err()
        );
        assert_eq!(OverlayMode::parse("url").unwrap(), OverlayMode::Url);
        assert!(OverlayMode::parse("file").is_err());
        assert!(
            constant_time_eq(b"abc", b"abc")
                && !constant_time_eq(b"abc", b"abd")
                && !constant_time_eq(b"a", b"ab")
        );
    }

    #[test]
    fn colormap_legend_is_a_png() {
        let png = colormap_image().unwrap();
        let img = headclip_data::images::decode_rgb(&png, &Default::default()).unwrap();
        assert_eq!((img.width, img.height), (256, 16));
        assert_eq!(img.pixels[..3], viz::colormap(0.0));
        assert_eq!(img.pixels[255 * 3..256 * 3], viz::colormap(1.0));
    }
}
