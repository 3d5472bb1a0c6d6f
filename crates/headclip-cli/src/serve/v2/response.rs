//! An infer response of the Open Inference Protocol: outputs as JSON data, or as binary tensor
//! data after the JSON header when asked (`binary_data`, `binary_data_output`).

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use headclip::detector::Detection;
use serde_json::{json, Value};

use super::request::{Output, Wanted};
use super::{INFERENCE_HEADER, MODEL, VERSION};

/// The values of one output over the batch.
enum Values {
    Fp32(Vec<f32>),
    Bool(Vec<bool>),
}

impl Values {
    fn json(&self) -> Value {
        match self {
            Values::Fp32(v) => json!(v),
            Values::Bool(v) => json!(v),
        }
    }

    /// Little-endian, as the binary-tensor extension says; BOOL as one byte each.
    fn append_binary(&self, out: &mut Vec<u8>) {
        match self {
            Values::Fp32(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
            Values::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        }
    }

    fn byte_len(&self) -> usize {
        match self {
            Values::Fp32(v) => v.len() * 4,
            Values::Bool(v) => v.len(),
        }
    }
}

fn values(output: Output, detections: &[Detection], threshold: f32) -> (Vec<usize>, Values) {
    let n = detections.len();
    let per_image = |f: fn(&Detection) -> f32| Values::Fp32(detections.iter().map(f).collect());
    match output {
        Output::Score => (vec![n], per_image(|d| d.score)),
        Output::GlobalScore => (vec![n], per_image(|d| d.global_score)),
        Output::PixelScore => (vec![n], per_image(|d| d.pixel_score)),
        Output::Anomalous => (
            vec![n],
            Values::Bool(detections.iter().map(|d| d.score >= threshold).collect()),
        ),
        Output::AnomalyMap => {
            let side = detections.first().map_or(0, |d| d.side as usize);
            let maps = detections.iter().flat_map(|d| d.map.iter().copied());
            (vec![n, side, side], Values::Fp32(maps.collect()))
        }
    }
}

/// The answer to an infer request whose images were all scored.
pub fn encode(
    id: Option<String>,
    wanted: &[Wanted],
    detections: &[Detection],
    threshold: f32,
) -> Response {
    let mut binary = Vec::new();
    let outputs: Vec<Value> = wanted
        .iter()
        .map(|w| {
            let (shape, values) = values(w.output, detections, threshold);
            let mut tensor = json!({
                "name": w.output.name(),
                "datatype": w.output.datatype(),
                "shape": shape,
            });
            if w.binary {
                tensor["parameters"] = json!({ "binary_data_size": values.byte_len() });
                values.append_binary(&mut binary);
            } else {
                tensor["data"] = values.json();
            }
            tensor
        })
        .collect();
    let mut head = json!({
        "model_name": MODEL,
        "model_version": VERSION,
        "outputs": outputs,
    });
    if let Some(id) = id {
        head["id"] = json!(id);
    }
    let mut body = serde_json::to_vec(&head).expect("JSON of numbers and strings");
    if binary.is_empty() {
        return (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
    }
    let json_len = body.len();
    body.extend_from_slice(&binary);
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                header::HeaderName::from_static(INFERENCE_HEADER),
                HeaderValue::from(json_len),
            ),
        ],
        Body::from(body),
    )
        .into_response()
}
