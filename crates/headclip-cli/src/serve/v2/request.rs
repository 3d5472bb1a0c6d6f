//! An infer request of the Open Inference Protocol, read from its JSON header and the binary
//! tensor data after it. Every number it gives (the header's length, shapes, binary sizes,
//! element counts) is checked against the body already read, or against the server's limits,
//! before anything is allocated from it.

use std::fmt;
use std::marker::PhantomData;

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode};
use base64::Engine as _;
use headclip_data::images::RgbImage;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::super::error::ApiError;

/// The input of encoded images, one BYTES element each.
pub const IMAGE_INPUT: &str = "image";
/// The input of decoded pixels: UINT8, `[H, W, C]` or `[N, H, W, C]`.
pub const PIXELS_INPUT: &str = "pixels";

/// Most dimensions a shape may have.
const MAX_RANK: usize = 4;
/// Longest request `id` echoed back.
const MAX_ID: usize = 256;

/// The outputs, in the order the model metadata lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Score,
    GlobalScore,
    PixelScore,
    Anomalous,
    AnomalyMap,
}

impl Output {
    pub const ALL: [Output; 5] = [
        Output::Score,
        Output::GlobalScore,
        Output::PixelScore,
        Output::Anomalous,
        Output::AnomalyMap,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Output::Score => "score",
            Output::GlobalScore => "global_score",
            Output::PixelScore => "pixel_score",
            Output::Anomalous => "anomalous",
            Output::AnomalyMap => "anomaly_map",
        }
    }

    pub fn datatype(self) -> &'static str {
        match self {
            Output::Anomalous => "BOOL",
            _ => "FP32",
        }
    }
}

/// One output to return, and whether as binary tensor data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub output: Output,
    pub binary: bool,
}

/// `N` images of `height × width × channels` bytes each, row-major; cloned without copying.
#[derive(Clone)]
pub struct PixelBatch {
    data: Bytes,
    pub count: usize,
    pub height: u32,
    pub width: u32,
    channels: usize,
}

impl PixelBatch {
    /// Image `index` as RGB: grey replicated, alpha dropped, as the decoder does.
    pub fn image(&self, index: usize) -> RgbImage {
        let len = self.height as usize * self.width as usize * self.channels;
        let pixels = &self.data[index * len..(index + 1) * len];
        let rgb = match self.channels {
            1 => pixels.iter().flat_map(|&g| [g, g, g]).collect(),
            3 => pixels.to_vec(),
            _ => pixels
                .chunks_exact(self.channels)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
        };
        RgbImage {
            width: self.width,
            height: self.height,
            pixels: rgb,
        }
    }
}

/// The images of a request.
pub enum Images {
    Encoded(Vec<Bytes>),
    Pixels(PixelBatch),
}

impl Images {
    pub fn len(&self) -> usize {
        match self {
            Images::Encoded(list) => list.len(),
            Images::Pixels(batch) => batch.count,
        }
    }
}

/// A request, checked.
pub struct InferRequest {
    pub id: Option<String>,
    pub images: Images,
    pub outputs: Vec<Wanted>,
    pub threshold: Option<f32>,
}

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(borrow, deserialize_with = "one_or_two")]
    inputs: Vec<InputTensor<'a>>,
    #[serde(default, deserialize_with = "few_outputs")]
    outputs: Vec<RequestedOutput>,
    #[serde(default)]
    parameters: RequestParameters,
}

#[derive(Deserialize)]
struct InputTensor<'a> {
    name: String,
    #[serde(deserialize_with = "shape")]
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: InputParameters,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: OutputParameters,
}

#[derive(Deserialize, Default)]
struct RequestParameters {
    #[serde(default)]
    binary_data_output: bool,
    threshold: Option<f32>,
}

#[derive(Deserialize, Default)]
struct InputParameters {
    binary_data_size: Option<u64>,
    content_type: Option<String>,
}

#[derive(Deserialize, Default)]
struct OutputParameters {
    binary_data: Option<bool>,
}

fn one_or_two<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    d.deserialize_seq(AtMost(2, "inputs", PhantomData))
}

fn few_outputs<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    d.deserialize_seq(AtMost(Output::ALL.len(), "outputs", PhantomData))
}

fn shape<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    d.deserialize_seq(AtMost(MAX_RANK, "dimensions", PhantomData))
}

/// A JSON array of at most `.0` elements: more is an error, not an allocation.
struct AtMost<T>(usize, &'static str, PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for AtMost<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an array of at most {} {}", self.0, self.1)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element()? {
            if out.len() == self.0 {
                return Err(de::Error::custom(format!(
                    "more than {} {}",
                    self.0, self.1
                )));
            }
            out.push(item);
        }
        Ok(out)
    }
}

/// Parses a request: `body` holds the JSON header, of `header_length` bytes when the
/// binary-tensor extension is used, then the inputs' binary data.
pub fn parse(
    body: Bytes,
    header_length: Option<&HeaderValue>,
    max_images: usize,
) -> Result<InferRequest, ApiError> {
    let json_len = json_length(header_length, body.len())?;
    let json = std::str::from_utf8(&body[..json_len])
        .map_err(|_| ApiError::bad_request("the request's JSON header is not UTF-8"))?;
    let header: Header = serde_json::from_str(json)
        .map_err(|e| ApiError::bad_request(format!("the request's JSON header: {e}")))?;
    if header.id.as_ref().is_some_and(|id| id.len() > MAX_ID) {
        return Err(ApiError::bad_request(format!(
            "the request id is over {MAX_ID} bytes"
        )));
    }
    let [input] = header.inputs.as_slice() else {
        return Err(ApiError::bad_request(format!(
            "send exactly one input: {IMAGE_INPUT:?} (BYTES, encoded images) or \
             {PIXELS_INPUT:?} (UINT8, [H, W, C] or [N, H, W, C])"
        )));
    };
    let mut binary = body.slice(json_len..);
    let images = match (input.name.as_str(), input.datatype.as_str()) {
        (IMAGE_INPUT, "BYTES") => Images::Encoded(encoded_images(input, &mut binary, max_images)?),
        (PIXELS_INPUT, "UINT8") => Images::Pixels(pixel_batch(input, &mut binary, max_images)?),
        (name, datatype) => {
            return Err(ApiError::bad_request(format!(
                "unknown input {:?} of type {:?} (known: {IMAGE_INPUT:?} BYTES, \
                 {PIXELS_INPUT:?} UINT8)",
                cut(name),
                cut(datatype)
            )))
        }
    };
    if !binary.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{} bytes of binary data follow the inputs' binary_data_size",
            binary.len()
        )));
    }
    let threshold = header.parameters.threshold;
    if threshold.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
        return Err(ApiError::bad_request(
            "the threshold parameter must be in [0, 1]",
        ));
    }
    Ok(InferRequest {
        outputs: wanted_outputs(&header)?,
        id: header.id,
        images,
        threshold,
    })
}

/// A name from the client as errors show it.
fn cut(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The JSON header's length: `Inference-Header-Content-Length`, or the whole body.
fn json_length(header: Option<&HeaderValue>, body_len: usize) -> Result<usize, ApiError> {
    let Some(value) = header else {
        return Ok(body_len);
    };
    let len = value
        .to_str()
        .ok()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<usize>().ok())
        .ok_or_else(|| {
            ApiError::bad_request("Inference-Header-Content-Length is not a number of bytes")
        })?;
    if len > body_len {
        return Err(ApiError::bad_request(format!(
            "Inference-Header-Content-Length {len} is past the end of the {body_len}-byte body"
        )));
    }
    Ok(len)
}

/// The dimensions of a shape, each at least 1.
fn dimensions(input: &InputTensor) -> Result<Vec<u64>, ApiError> {
    input
        .shape
        .iter()
        .map(|&d| u64::try_from(d).ok().filter(|&d| d >= 1))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "input {:?}: every dimension of its shape must be at least 1, not {:?}",
                input.name, input.shape
            ))
        })
}

fn too_many_images(max_images: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("at most {max_images} images per request (--queue)"),
    )
}

/// Takes the input's binary data off the front of `binary`.
fn take_binary(input: &InputTensor, size: u64, binary: &mut Bytes) -> Result<Bytes, ApiError> {
    if input.data.is_some() {
        return Err(ApiError::bad_request(format!(
            "input {:?} has both data and binary_data_size",
            input.name
        )));
    }
    let size = usize::try_from(size)
        .ok()
        .filter(|&s| s <= binary.len())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "input {:?}: binary_data_size {size} is past the end of the body ({} bytes left)",
                input.name,
                binary.len()
            ))
        })?;
    Ok(binary.split_to(size))
}

fn no_data(input: &InputTensor) -> ApiError {
    ApiError::bad_request(format!(
        "input {:?} has neither data nor binary_data_size",
        input.name
    ))
}

/// BYTES `[N]` or `[N, 1]`: one encoded image per element.
fn encoded_images(
    input: &InputTensor,
    binary: &mut Bytes,
    max_images: usize,
) -> Result<Vec<Bytes>, ApiError> {
    let count = match dimensions(input)?.as_slice() {
        [n] | [n, 1] => *n,
        _ => {
            return Err(ApiError::bad_request(format!(
                "input {IMAGE_INPUT:?} must have the shape [N] or [N, 1], not {:?}",
                input.shape
            )))
        }
    };
    let count = usize::try_from(count)
        .ok()
        .filter(|&n| n <= max_images)
        .ok_or_else(|| too_many_images(max_images))?;
    if let Some(size) = input.parameters.binary_data_size {
        let data = take_binary(input, size, binary)?;
        return length_prefixed(data, count);
    }
    let raw = input.data.ok_or_else(|| no_data(input))?;
    let strings: Vec<Vec<u8>> = flatten(raw, count, "strings")?;
    match input.parameters.content_type.as_deref() {
        None | Some("str") => Ok(strings.into_iter().map(Bytes::from).collect()),
        Some("base64") => strings
            .iter()
            .enumerate()
            .map(|(i, s)| {
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map(Bytes::from)
                    .map_err(|e| ApiError::bad_request(format!("image {}: not base64: {e}", i + 1)))
            })
            .collect(),
        Some(other) => Err(ApiError::bad_request(format!(
            "input {IMAGE_INPUT:?}: content_type {:?} is not known (str or base64)",
            cut(other)
        ))),
    }
}

/// BYTES elements in binary: each a 4-byte little-endian length, then that many bytes.
fn length_prefixed(mut data: Bytes, count: usize) -> Result<Vec<Bytes>, ApiError> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let truncated = || {
            ApiError::bad_request(format!(
                "input {IMAGE_INPUT:?}: element {} of {count} runs past its binary_data_size",
                i + 1
            ))
        };
        if data.len() < 4 {
            return Err(truncated());
        }
        let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let _prefix = data.split_to(4);
        if len > data.len() {
            return Err(truncated());
        }
        out.push(data.split_to(len));
    }
    if !data.is_empty() {
        return Err(ApiError::bad_request(format!(
            "input {IMAGE_INPUT:?}: {} bytes after its {count} elements",
            data.len()
        )));
    }
    Ok(out)
}

/// UINT8 `[H, W, C]` (one image) or `[N, H, W, C]`, C in 1 (grey), 3 (RGB), 4 (RGBA).
fn pixel_batch(
    input: &InputTensor,
    binary: &mut Bytes,
    max_images: usize,
) -> Result<PixelBatch, ApiError> {
    let (count, height, width, channels) = match dimensions(input)?.as_slice() {
        [h, w, c] => (1, *h, *w, *c),
        [n, h, w, c] => (*n, *h, *w, *c),
        _ => {
            return Err(ApiError::bad_request(format!(
                "input {PIXELS_INPUT:?} must have the shape [H, W, C] or [N, H, W, C], not {:?}",
                input.shape
            )))
        }
    };
    if ![1, 3, 4].contains(&channels) {
        return Err(ApiError::bad_request(format!(
            "input {PIXELS_INPUT:?} must have 1, 3 or 4 channels, not {channels}"
        )));
    }
    let count = usize::try_from(count)
        .ok()
        .filter(|&n| n <= max_images)
        .ok_or_else(|| too_many_images(max_images))?;
    let side = |d: u64, what: &str| {
        u32::try_from(d).map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("input {PIXELS_INPUT:?}: a {what} of {d} pixels is too large"),
            )
        })
    };
    let (height, width) = (side(height, "height")?, side(width, "width")?);
    // At most 2^32 · 2^32 · 4 · --queue: checked, it cannot wrap around to a small number.
    let elements = (count as u64)
        .checked_mul(u64::from(height) * u64::from(width))
        .and_then(|n| n.checked_mul(channels))
        .and_then(|n| usize::try_from(n).ok());
    let data = match input.parameters.binary_data_size {
        Some(size) => {
            let data = take_binary(input, size, binary)?;
            (Some(data.len()) == elements).then_some(data)
        }
        None => {
            let raw = input.data.ok_or_else(|| no_data(input))?;
            // Every element takes at least a byte of JSON: a shape larger than the data is
            // refused before anything is allocated for it.
            match elements.filter(|&n| n <= raw.get().len()) {
                Some(n) => Some(Bytes::from(flatten::<u8>(raw, n, "bytes")?)),
                None => None,
            }
        }
    };
    let data = data.ok_or_else(|| {
        ApiError::bad_request(format!(
            "input {PIXELS_INPUT:?}: the data does not hold the {:?} elements its shape says",
            input.shape
        ))
    })?;
    Ok(PixelBatch {
        data,
        count,
        height,
        width,
        channels: channels as usize,
    })
}

/// Which outputs, binary or JSON: all when none is named (`binary_data_output` then decides).
fn wanted_outputs(header: &Header) -> Result<Vec<Wanted>, ApiError> {
    let default_binary = header.parameters.binary_data_output;
    if header.outputs.is_empty() {
        return Ok(Output::ALL
            .iter()
            .map(|&output| Wanted {
                output,
                binary: default_binary,
            })
            .collect());
    }
    let mut wanted: Vec<Wanted> = Vec::new();
    for requested in &header.outputs {
        let output = Output::ALL
            .into_iter()
            .find(|o| o.name() == requested.name)
            .ok_or_else(|| {
                let known: Vec<_> = Output::ALL.iter().map(|o| o.name()).collect();
                ApiError::bad_request(format!(
                    "unknown output {:?} (known: {})",
                    cut(&requested.name),
                    known.join(", ")
                ))
            })?;
        if wanted.iter().any(|w| w.output == output) {
            return Err(ApiError::bad_request(format!(
                "output {:?} is asked for twice",
                output.name()
            )));
        }
        wanted.push(Wanted {
            output,
            binary: requested.parameters.binary_data.unwrap_or(default_binary),
        });
    }
    Ok(wanted)
}

/// An element of a JSON tensor.
trait Element: Sized {
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_str(_: &str) -> Option<Self> {
        None
    }
}

impl Element for u8 {
    fn from_u64(v: u64) -> Option<Self> {
        u8::try_from(v).ok()
    }
}

impl Element for Vec<u8> {
    fn from_str(s: &str) -> Option<Self> {
        Some(s.as_bytes().to_vec())
    }
}

/// The elements of a JSON tensor, flat or nested row-major as the protocol allows: exactly
/// `count` of them, refused as soon as there is one more.
fn flatten<T: Element>(raw: &RawValue, count: usize, what: &str) -> Result<Vec<T>, ApiError> {
    let mut out = Vec::with_capacity(count);
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let seed = Flatten {
        out: &mut out,
        max: count,
    };
    seed.deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| ApiError::bad_request(format!("the input's data: {e}")))?;
    if out.len() != count {
        return Err(ApiError::bad_request(format!(
            "the input's data holds {} {what}, its shape says {count}",
            out.len()
        )));
    }
    Ok(out)
}

struct Flatten<'a, T> {
    out: &'a mut Vec<T>,
    max: usize,
}

impl<T> Flatten<'_, T> {
    fn push<E: de::Error>(self, value: Option<T>) -> Result<(), E> {
        let value = value.ok_or_else(|| E::custom("an element of the wrong type"))?;
        if self.out.len() == self.max {
            return Err(E::custom(format!(
                "more than the {} elements of the shape",
                self.max
            )));
        }
        self.out.push(value);
        Ok(())
    }
}

impl<'de, T: Element> DeserializeSeed<'de> for Flatten<'_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: Element> Visitor<'de> for Flatten<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of tensor elements")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Flatten { out, max } = self;
        while seq
            .next_element_seed(Flatten {
                out: &mut *out,
                max,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(T::from_u64(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(u64::try_from(v).ok().and_then(T::from_u64))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.push(T::from_str(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_json(json: &str) -> Result<InferRequest, ApiError> {
        parse(Bytes::from(json.to_string()), None, 4)
    }

    #[test]
    fn nested_pixels_are_flattened_and_counted() {
        let ok = parse_json(
            r#"{"inputs":[{"name":"pixels","datatype":"UINT8","shape":[1,2,1],"data":[[[1],[2]]]}]}"#,
        )
        .unwrap();
        let Images::Pixels(batch) = ok.images else {
            panic!()
        };
        assert_eq!(batch.image(0).pixels, [1, 1, 1, 2, 2, 2]);
        for bad in [
            r#"[1,2,3]"#,
            r#"[1]"#,
            r#"[256,1]"#,
            r#"[-1,1]"#,
            r#"["a",1]"#,
        ] {
            let json = format!(
                r#"{{"inputs":[{{"name":"pixels","datatype":"UINT8","shape":[1,2,1],"data":{bad}}}]}}"#
            );
            assert_eq!(parse_json(&json).err().unwrap().status, 400, "{bad}");
        }
    }

    #[test]
    fn lengths_are_bounded_before_use() {
        let header = HeaderValue::from_static("999");
        let e = parse(Bytes::from_static(b"{}"), Some(&header), 4)
            .err()
            .unwrap();
        assert!(e.message.contains("past the end"), "{}", e.message);
        // A shape of 2^62 elements with two bytes of data.
        let huge = r#"{"inputs":[{"name":"pixels","datatype":"UINT8","shape":[4,4294967295,4294967295,4],"data":[1]}]}"#;
        assert_eq!(parse_json(huge).err().unwrap().status, 400);
        let many = r#"{"inputs":[{"name":"image","datatype":"BYTES","shape":[5],"data":["a"]}]}"#;
        assert_eq!(parse_json(many).err().unwrap().status, 413);
        let rank = r#"{"inputs":[{"name":"image","datatype":"BYTES","shape":[1,1,1,1,1]}]}"#;
        assert!(parse_json(rank)
            .err()
            .unwrap()
            .message
            .contains("more than 4"));
        let binary = r#"{"inputs":[{"name":"image","datatype":"BYTES","shape":[1],"parameters":{"binary_data_size":8}}]}"#;
        let mut body = binary.as_bytes().to_vec();
        body.extend_from_slice(&[255, 255, 255, 255, 0, 0, 0, 0]);
        let len = HeaderValue::from(binary.len());
        let e = parse(Bytes::from(body), Some(&len), 4).err().unwrap();
        assert!(e.message.contains("runs past"), "{}", e.message);
    }

    #[test]
    fn outputs_are_checked() {
        let base = r#"{"inputs":[{"name":"image","datatype":"BYTES","shape":[1],"data":["x"]}]"#;
        let all = parse_json(&format!("{base}}}")).unwrap();
        assert_eq!(all.outputs.len(), Output::ALL.len());
        let one = parse_json(&format!(
            r#"{base},"outputs":[{{"name":"score","parameters":{{"binary_data":true}}}}]}}"#
        ))
        .unwrap();
        assert_eq!(
            one.outputs,
            [Wanted {
                output: Output::Score,
                binary: true
            }]
        );
        for bad in [
            r#"[{"name":"x"}]"#,
            r#"[{"name":"score"},{"name":"score"}]"#,
        ] {
            assert!(parse_json(&format!(r#"{base},"outputs":{bad}}}"#)).is_err());
        }
    }
}
