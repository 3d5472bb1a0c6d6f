//! Errors as the API returns them: a status code and `{"error": "..."}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use headclip_data::images::DataError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds for `Retry-After` (503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn busy(retry_after: u64) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the queue is full; retry later".into(),
            retry_after: Some(retry_after),
        }
    }

    /// 503: the images being handled hold the pixels this one needs.
    pub fn busy_decoding(retry_after: u64) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the server is decoding as many pixels as it may at once \
                      (--decode-budget-pixels); retry later"
                .into(),
            retry_after: Some(retry_after),
        }
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is over the limit of {limit} bytes"),
        )
    }

    pub fn timeout(ms: u128) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the image was not scored within {ms} ms"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// A form that could not be read. The body is the client's: when it ends before the form
    /// does (an upload cut short), axum says 500, but the fault is the request's, so 400.
    pub fn from_form(e: axum::extract::multipart::MultipartError) -> Self {
        let status = e.status();
        if status.is_server_error() {
            return Self::bad_request(format!(
                "the form could not be read to its end ({}); was the upload cut short?",
                e.body_text()
            ));
        }
        Self::new(status, e.body_text())
    }

    /// Prefixes the message, e.g. with which image of several failed.
    pub fn context(mut self, what: &str) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// A decoding failure: 400 for an empty body, 413 for an image over `--max-pixels` or asking
    /// more decode work than the limits allow (a JPEG's scans), 422 for bytes that are not a
    /// supported image or are corrupt, truncated or an unsupported variant.
    pub fn from_data(e: &DataError) -> Self {
        let status = match e {
            DataError::Empty => StatusCode::BAD_REQUEST,
            DataError::TooLarge { .. } | DataError::TooMuchWork { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let message = match e {
            DataError::TooLarge {
                width,
                height,
                max_pixels,
            } => format!(
                "image is {width}×{height} pixels, over this server's limit of {max_pixels} pixels \
                 (--max-pixels); refused before decoding"
            ),
            other => other.to_string(),
        };
        Self::new(status, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
