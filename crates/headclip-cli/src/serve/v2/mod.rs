//! The Open Inference Protocol (KServe v2), the HTTP/REST API that Triton's and KServe's
//! clients speak, over the same pipeline as `/v1/detect`: the same admission (`--queue`,
//! `--decode-budget-pixels`, `--max-pixels`), body limit, timeout, token and metrics.
//!
//! One model, `headclip`, version `1`. Inputs: `image` (BYTES, `[N]`, one encoded image per
//! element, as JSON strings or binary tensor data) or `pixels` (UINT8, `[H, W, C]` or
//! `[N, H, W, C]`, decoded pixels). Outputs: `score`, `global_score`, `pixel_score` (FP32
//! `[N]`), `anomalous` (BOOL `[N]`, against the `threshold` parameter or `--threshold`) and
//! `anomaly_map` (FP32 `[N, S, S]`).
//!
//! Readiness: the server answers no request before the model is loaded (it loads the model,
//! then accepts connections), so `ready` says whether the model thread is still running.

mod request;
mod response;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use headclip::detector::Detection;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio::time::{timeout_at, Instant as Deadline};

use super::api::{
    admit, admit_pixels, body_timeout, drain, read_body, score_image, OverlayMode, Payload,
};
use super::error::ApiError;
use super::App;
use request::{Images, Output, IMAGE_INPUT, PIXELS_INPUT};

/// The model's name in the protocol's paths.
pub const MODEL: &str = "headclip";
/// Its only version.
pub const VERSION: &str = "1";
/// The binary-tensor extension's header: the JSON part's length in bytes.
pub const INFERENCE_HEADER: &str = "inference-header-content-length";

type AppState = State<Arc<App>>;

/// Health and metadata, open like `/healthz` (probes carry no token).
pub fn open_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready),
        )
}

/// Inference, behind the token.
pub fn protected_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer))
}

/// `GET /v2/health/live`: the process answers.
async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

/// `GET /v2/health/ready`: the model is loaded and its thread still runs.
async fn ready(State(app): AppState) -> Response {
    readiness(&app)
}

fn readiness(app: &App) -> Response {
    if app.submit.is_running() {
        Json(json!({ "ready": true })).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the model thread has stopped",
        )
        .into_response()
    }
}

/// `GET /v2`.
async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": MODEL,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

/// 404 for another model or version.
fn check_model(path: &HashMap<String, String>) -> Result<(), ApiError> {
    let model = path.get("model").map_or("", String::as_str);
    if model != MODEL {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "unknown model {:?}: this server has only {MODEL:?}",
                model.chars().take(64).collect::<String>()
            ),
        ));
    }
    match path.get("version") {
        Some(v) if v != VERSION => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("model {MODEL:?} has only version {VERSION:?}"),
        )),
        _ => Ok(()),
    }
}

/// `GET /v2/models/headclip[/versions/1]`.
async fn model_metadata(
    State(app): AppState,
    Path(path): Path<HashMap<String, String>>,
) -> Response {
    if let Err(e) = check_model(&path) {
        return e.into_response();
    }
    let side = i64::from(app.info.image_size);
    let outputs: Vec<Value> = Output::ALL
        .iter()
        .map(|o| {
            let shape = if *o == Output::AnomalyMap {
                vec![-1, side, side]
            } else {
                vec![-1]
            };
            json!({ "name": o.name(), "datatype": o.datatype(), "shape": shape })
        })
        .collect();
    Json(json!({
        "name": MODEL,
        "versions": [VERSION],
        "platform": "headclip",
        "inputs": [
            { "name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1] },
            { "name": PIXELS_INPUT, "datatype": "UINT8", "shape": [-1, -1, -1, -1] },
        ],
        "outputs": outputs,
        "parameters": {
            "model": app.info.model,
            "image_size": app.info.image_size,
            "mode": app.info.mode,
            "device": app.info.device,
            "threshold": app.cfg.threshold,
        },
    }))
    .into_response()
}

/// `GET /v2/models/headclip[/versions/1]/ready`.
async fn model_ready(State(app): AppState, Path(path): Path<HashMap<String, String>>) -> Response {
    match check_model(&path) {
        Ok(()) => readiness(&app),
        Err(e) => e.into_response(),
    }
}

/// `POST /v2/models/headclip[/versions/1]/infer`.
async fn infer(
    State(app): AppState,
    Path(path): Path<HashMap<String, String>>,
    req: Request,
) -> Response {
    let deadline = Deadline::now() + app.cfg.timeout;
    match infer_inner(&app, &path, req, deadline).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn infer_inner(
    app: &Arc<App>,
    path: &HashMap<String, String>,
    req: Request,
    deadline: Deadline,
) -> Result<Response, ApiError> {
    let limit = app.cfg.max_body_bytes;
    if let Err(e) = check_model(path).and_then(|()| check_head(&req, limit)) {
        // As /v1/detect: read what the client sends, unless it is over the limit anyway.
        if e.status != StatusCode::PAYLOAD_TOO_LARGE {
            drain(req, limit, deadline).await;
        }
        return Err(e);
    }
    let header_length = req.headers().get(INFERENCE_HEADER).cloned();
    let body = timeout_at(deadline, read_body(req.into_body(), limit))
        .await
        .map_err(|_| body_timeout())??;
    let request = request::parse(Bytes::from(body), header_length.as_ref(), app.cfg.queue)?;
    let threshold = request.threshold.unwrap_or(app.cfg.threshold);
    let detections = score_all(app, request.images, deadline).await?;
    Ok(response::encode(
        request.id,
        &request.outputs,
        &detections,
        threshold,
    ))
}

/// A declared body over the limit (413), or a compressed one (415: not decompressed here).
fn check_head(req: &Request, limit: usize) -> Result<(), ApiError> {
    let headers = req.headers();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    if encoding.is_some_and(|e| e != "identity") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "compressed request bodies are not accepted: send it uncompressed",
        ));
    }
    Ok(())
}

/// Admits every image (all or none: one refused drops the places of the others) and scores
/// them side by side; results in the request's order.
async fn score_all(
    app: &Arc<App>,
    images: Images,
    deadline: Deadline,
) -> Result<Vec<Detection>, ApiError> {
    let count = images.len();
    let mut tasks = JoinSet::new();
    for index in 0..count {
        let what = format!("image {}", index + 1);
        let (payload, admitted) = match &images {
            Images::Encoded(list) => {
                let bytes = list[index].clone();
                if bytes.is_empty() {
                    return Err(ApiError::bad_request("empty image").context(&what));
                }
                let admitted = admit(app, &bytes).map_err(|e| e.context(&what))?;
                (Payload::Encoded(bytes), admitted)
            }
            Images::Pixels(batch) => {
                let admitted =
                    admit_pixels(app, batch.width, batch.height).map_err(|e| e.context(&what))?;
                let batch = batch.clone();
                // Converted on the blocking pool, not here on the async workers.
                let make = Box::new(move || batch.image(index));
                (Payload::Pixels(make), admitted)
            }
        };
        let app = app.clone();
        tasks.spawn(async move {
            let result = score_image(app, payload, OverlayMode::None, admitted).await;
            (index, result.map_err(|e| e.context(&what)))
        });
    }
    drop(images);
    let mut results: Vec<Option<Detection>> = (0..count).map(|_| None).collect();
    while let Some(joined) = timeout_at(deadline, tasks.join_next())
        .await
        .map_err(|_| ApiError::timeout(app.cfg.timeout.as_millis()))?
    {
        let (index, result) =
            joined.map_err(|e| ApiError::internal(format!("a scoring task failed: {e}")))?;
        results[index] = Some(result?.scored.detection);
    }
    Ok(results.into_iter().flatten().collect())
}
