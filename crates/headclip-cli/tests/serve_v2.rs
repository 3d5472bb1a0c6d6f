//! `headclip serve`'s Open Inference Protocol (KServe v2) end to end: the binary on 127.0.0.1
//! with the tiny fixture model; scores compared with `/v1/detect` on the same image.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

mod common;
#[path = "common/server.rs"]
mod server;

use common::repo;
use server::{get, post, Reply, Server};

const INFER: &str = "/v2/models/headclip/infer";
const HEADER_LENGTH: &str = "Inference-Header-Content-Length";

fn bottle() -> Vec<u8> {
    std::fs::read(repo().join("examples/images/bottle_good_000.png")).unwrap()
}

/// `/v1/detect`'s scores for `image`: (score, global_score, pixel_score, map_max).
fn v1_scores(server: &Server, image: &[u8]) -> [f32; 4] {
    let reply = post(&server.url("/v1/detect?overlay=none"), &[], image);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    ["score", "global_score", "pixel_score", "map_max"].map(|k| v[k].as_f64().unwrap() as f32)
}

/// A binary-tensor request: the JSON header, then `binary`.
fn binary_request(header: &Value, binary: &[u8]) -> (String, Vec<u8>) {
    let mut body = serde_json::to_vec(header).unwrap();
    let json_len = body.len().to_string();
    body.extend_from_slice(binary);
    (json_len, body)
}

fn infer_binary(server: &Server, header: &Value, binary: &[u8]) -> Reply {
    let (json_len, body) = binary_request(header, binary);
    post(&server.url(INFER), &[(HEADER_LENGTH, &json_len)], &body)
}

/// BYTES elements in binary: a 4-byte little-endian length before each.
fn length_prefixed(items: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        out.extend_from_slice(&(item.len() as u32).to_le_bytes());
        out.extend_from_slice(item);
    }
    out
}

/// A binary answer's outputs by name: (JSON description, its bytes).
fn binary_outputs(reply: &Reply) -> Vec<(Value, Vec<u8>)> {
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json_len: usize = reply.header(HEADER_LENGTH).unwrap().parse().unwrap();
    let head: Value = serde_json::from_slice(&reply.body[..json_len]).unwrap();
    let mut rest = &reply.body[json_len..];
    let mut out = Vec::new();
    for output in head["outputs"].as_array().unwrap() {
        let size = output["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
        out.push((output.clone(), rest[..size].to_vec()));
        rest = &rest[size..];
    }
    assert!(rest.is_empty(), "{} bytes left over", rest.len());
    out
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn json_output(reply: &Reply, name: &str) -> Value {
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {v}"))
        .clone()
}

fn json_scores(reply: &Reply) -> Vec<f32> {
    json_output(reply, "score")["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn health_metadata_and_readiness() {
    let server = Server::start(&[]);
    for path in [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/headclip/ready",
    ] {
        let reply = get(&server.url(path));
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    }
    assert_eq!(get(&server.url("/v2")).json()["name"], "headclip");
    let side = get(&server.url("/healthz")).json()["image_size"]
        .as_i64()
        .unwrap();
    for path in ["/v2/models/headclip", "/v2/models/headclip/versions/1"] {
        let meta = get(&server.url(path)).json();
        assert_eq!(meta["name"], "headclip");
        assert_eq!(
            meta["inputs"][0],
            json!({"name": "image", "datatype": "BYTES", "shape": [-1]})
        );
        assert_eq!(meta["inputs"][1]["datatype"], "UINT8");
        let map = meta["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "anomaly_map");
        assert_eq!(
            map.unwrap(),
            &json!({"name": "anomaly_map", "datatype": "FP32", "shape": [-1, side, side]})
        );
    }
    for path in [
        "/v2/models/other",
        "/v2/models/other/ready",
        "/v2/models/headclip/versions/2",
        "/v2/models/headclip/versions/2/ready",
    ] {
        let reply = get(&server.url(path));
        assert_eq!(reply.status, 404, "{path}");
        assert!(reply.json()["error"].is_string());
    }
}

#[test]
fn bytes_in_json_and_binary_score_as_v1_detect() {
    let server = Server::start(&[]);
    let image = bottle();
    let [score, global, pixel, map_max] = v1_scores(&server, &image);

    // JSON data: base64 strings, JSON outputs.
    let b64 = base64::engine::general_purpose::STANDARD.encode(&image);
    let request = json!({
        "id": "r1",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                    "parameters": {"content_type": "base64"}, "data": [b64, b64]}],
    });
    let reply = post(
        &server.url(INFER),
        &[],
        &serde_json::to_vec(&request).unwrap(),
    );
    assert_eq!(reply.json()["id"], "r1");
    assert_eq!(json_scores(&reply), [score, score]);
    let map = json_output(&reply, "anomaly_map");
    let side = get(&server.url("/healthz")).json()["image_size"]
        .as_u64()
        .unwrap();
    assert_eq!(map["shape"], json!([2, side, side]));
    assert_eq!(
        map["data"].as_array().unwrap().len() as u64,
        2 * side * side
    );
    assert_eq!(
        json_output(&reply, "anomalous")["data"],
        json!([score >= 0.5, score >= 0.5])
    );

    // Binary tensor data in and out, as tritonclient sends by default.
    let header = json!({
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                    "parameters": {"binary_data_size": image.len() + 4}}],
        "parameters": {"binary_data_output": true},
    });
    let outputs = binary_outputs(&infer_binary(&server, &header, &length_prefixed(&[&image])));
    let by_name = |name: &str| {
        outputs
            .iter()
            .find(|(o, _)| o["name"] == name)
            .map(|(_, b)| b.clone())
            .unwrap()
    };
    assert_eq!(floats(&by_name("score")), [score]);
    assert_eq!(floats(&by_name("global_score")), [global]);
    assert_eq!(floats(&by_name("pixel_score")), [pixel]);
    let map = floats(&by_name("anomaly_map"));
    assert_eq!(map.len() as u64, side * side);
    assert_eq!(map.iter().copied().fold(f32::MIN, f32::max), map_max);

    // The threshold parameter decides `anomalous`; only the named outputs come back.
    let request = json!({
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 1],
                    "parameters": {"content_type": "base64"}, "data": [[b64]]}],
        "outputs": [{"name": "anomalous"}],
        "parameters": {"threshold": 0.0},
    });
    let reply = post(
        &server.url(INFER),
        &[],
        &serde_json::to_vec(&request).unwrap(),
    );
    assert_eq!(
        reply.json()["outputs"],
        json!([{"name": "anomalous", "datatype": "BOOL", "shape": [1], "data": [true]}])
    );
}

/// The bottle's pixels with `channels` channels (grey: its red channel, copied to all three
/// for the RGB image it stands for).
fn pixels(channels: usize) -> (u32, u32, Vec<u8>, Vec<u8>) {
    let img = image::load_from_memory(&bottle()).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    let rgb = img.into_raw();
    let data: Vec<u8> = match channels {
        1 => rgb.chunks_exact(3).map(|p| p[0]).collect(),
        3 => rgb.clone(),
        _ => rgb
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 7])
            .collect(),
    };
    let same_rgb = match channels {
        1 => data.iter().flat_map(|&g| [g, g, g]).collect(),
        _ => rgb,
    };
    (w, h, data, same_rgb)
}

fn png(w: u32, h: u32, rgb: Vec<u8>) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_raw(w, h, rgb)
        .unwrap()
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

#[test]
fn uint8_pixels_score_as_the_same_image_encoded() {
    let server = Server::start(&[]);
    for channels in [3usize, 1, 4] {
        let (w, h, data, rgb) = pixels(channels);
        let [score, ..] = v1_scores(&server, &png(w, h, rgb));
        // Binary, one image [H, W, C].
        let header = json!({
            "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [h, w, channels],
                        "parameters": {"binary_data_size": data.len()}}],
            "outputs": [{"name": "score", "parameters": {"binary_data": true}}],
        });
        let outputs = binary_outputs(&infer_binary(&server, &header, &data));
        assert_eq!(floats(&outputs[0].1), [score], "{channels} channels");
        // JSON, two images [N, H, W, C], flat data.
        let twice: Vec<u8> = data.iter().chain(&data).copied().collect();
        let request = json!({
            "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [2, h, w, channels],
                        "data": twice}],
        });
        let reply = post(
            &server.url(INFER),
            &[],
            &serde_json::to_vec(&request).unwrap(),
        );
        assert_eq!(json_scores(&reply), [score, score], "{channels} channels");
    }
}

/// A refused request: what it is, extra headers, body, the status expected.
type Case = (&'static str, Vec<(&'static str, String)>, Vec<u8>, u16);

#[test]
fn malformed_and_oversized_requests_are_refused_with_their_reason() {
    let server = Server::start(&[
        "--max-body-bytes",
        "200K",
        "--max-pixels",
        "40000",
        "--queue",
        "3",
    ]);
    let image = png(64, 64, vec![128; 64 * 64 * 3]);
    let bytes_input = |shape: Value, size: usize| {
        json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": shape,
                           "parameters": {"binary_data_size": size}}]})
    };
    let one = length_prefixed(&[&image]);
    let cases: Vec<Case> = vec![
        ("not JSON", vec![], b"{\"inputs\": [".to_vec(), 400),
        ("no inputs", vec![], br#"{"inputs": []}"#.to_vec(), 400),
        (
            "unknown input",
            vec![],
            br#"{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}"#.to_vec(),
            400,
        ),
        (
            "header length past the body",
            vec![(HEADER_LENGTH, "99999".into())],
            b"{}".to_vec(),
            400,
        ),
        (
            "header length not a number",
            vec![(HEADER_LENGTH, "-1".into())],
            b"{}".to_vec(),
            400,
        ),
        (
            "binary size past the body",
            vec![],
            binary_request(&bytes_input(json!([1]), 1 << 40), &one).1,
            400,
        ),
        (
            "element length past its tensor",
            vec![],
            binary_request(&bytes_input(json!([1]), 8), &[0xff, 0xff, 0xff, 0x7f, 1, 2, 3, 4]).1,
            400,
        ),
        (
            "negative dimension",
            vec![],
            binary_request(&bytes_input(json!([-1]), one.len()), &one).1,
            400,
        ),
        (
            "more images than --queue",
            vec![],
            binary_request(&bytes_input(json!([4]), one.len()), &one).1,
            413,
        ),
        (
            "huge pixel shape",
            vec![],
            br#"{"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [3, 4294967295, 4294967295, 4], "data": [0]}]}"#
                .to_vec(),
            400,
        ),
        (
            "two channels",
            vec![],
            br#"{"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 1, 2], "data": [0, 0]}]}"#
                .to_vec(),
            400,
        ),
        (
            "pixels over --max-pixels",
            vec![],
            binary_request(
                &json!({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [201, 200, 1],
                                    "parameters": {"binary_data_size": 40200}}]}),
                &vec![0; 40200],
            )
            .1,
            413,
        ),
        (
            "not an image",
            vec![],
            binary_request(&bytes_input(json!([1]), 8), &length_prefixed(&[b"nope"])).1,
            422,
        ),
        (
            "unknown output",
            vec![],
            br#"{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["x"]}], "outputs": [{"name": "overlay"}]}"#
                .to_vec(),
            400,
        ),
        (
            "compressed",
            vec![("Content-Encoding", "gzip".into())],
            b"{}".to_vec(),
            415,
        ),
    ];
    for (what, headers, body, status) in cases {
        // The binary requests carry their header length unless the case gives its own.
        let mut headers: Vec<(&str, String)> = headers;
        if body.first() == Some(&b'{') && !headers.iter().any(|(k, _)| *k == HEADER_LENGTH) {
            if let Some(end) = json_end(&body) {
                if end < body.len() {
                    headers.push((HEADER_LENGTH, end.to_string()));
                }
            }
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let reply = post(&server.url(INFER), &headers, &body);
        assert_eq!(reply.status, status, "{what}: {}", reply.text());
        let error = reply.json()["error"].as_str().unwrap().to_string();
        assert!(!error.is_empty(), "{what}");
    }
    // The images refused from their header or shape are counted as /v1/detect's are.
    for (reason, count) in [("limits", 1.0), ("invalid", 1.0), ("budget", 0.0)] {
        let series = format!(r#"headclip_decodes_refused_total{{reason="{reason}"}}"#);
        assert_eq!(server.metric(&series), count, "{series}");
    }
    // A body declared over --max-body-bytes is refused from the head, before it is sent.
    let head = raw_exchange(
        &server,
        &format!("POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n"),
    );
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    let reply = post(&server.url("/v2/models/other/infer"), &[], b"{}");
    assert_eq!(reply.status, 404);
    assert_eq!(get(&server.url(INFER)).status, 405);
    // Still serving.
    let mut header = bytes_input(json!([1]), one.len());
    header["parameters"] = json!({"binary_data_output": true});
    assert_eq!(
        binary_outputs(&infer_binary(&server, &header, &one)).len(),
        5
    );
}

/// Writes `request` on a new connection and reads the answer until the server closes it.
fn raw_exchange(server: &Server, request: &str) -> String {
    let addr = server.base.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Where the JSON value at the start of `body` ends.
fn json_end(body: &[u8]) -> Option<usize> {
    let mut stream = serde_json::Deserializer::from_slice(body).into_iter::<Value>();
    stream.next()?.ok()?;
    Some(stream.byte_offset())
}

#[test]
fn token_and_metrics() {
    let server = Server::start(&["--token", "s3cret"]);
    let request = json!({
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                    "parameters": {"content_type": "base64"},
                    "data": [base64::engine::general_purpose::STANDARD.encode(bottle())]}],
    });
    let body = serde_json::to_vec(&request).unwrap();
    // Health and metadata stay open, as probes carry no token.
    for path in [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/headclip",
        "/v2",
    ] {
        assert_eq!(get(&server.url(path)).status, 200, "{path}");
    }
    assert_eq!(post(&server.url(INFER), &[], &body).status, 401);
    assert_eq!(
        post(
            &server.url(INFER),
            &[("Authorization", "Bearer wrong")],
            &body
        )
        .status,
        401
    );
    let scored_before = server.metric("headclip_images_scored_total");
    let ok = post(
        &server.url(INFER),
        &[("Authorization", "Bearer s3cret")],
        &body,
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        server.metric("headclip_images_scored_total"),
        scored_before + 1.0
    );
    let route = r#"route="/v2/models/{model}/infer""#;
    assert_eq!(
        server.metric(&format!(
            r#"headclip_http_requests_total{{{route},code="200"}}"#
        )),
        1.0
    );
    assert_eq!(
        server.metric(&format!(
            r#"headclip_http_requests_total{{{route},code="401"}}"#
        )),
        2.0
    );
}

/// The server takes connections only once the model is loaded: a probe sent during the load
/// gets no answer (a failed probe), and the same connection gets `ready` once it is loaded.
/// The load is held up by giving the parameters file as a named pipe, written when the test says.
#[test]
fn ready_answers_only_once_the_model_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("params.safetensors");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) on a NUL-terminated path in our own temporary directory.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = common::headclip()
        .arg("serve")
        .arg("--weights")
        .arg(common::tiny("clip_openai.safetensors"))
        .arg("--params")
        .arg(&fifo)
        .args(["--threads", "1", "--addr", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if started.elapsed() < Duration::from_secs(60) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("the server never listened: {e}"),
        }
    };
    stream
        .write_all(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = stream.read(&mut byte);
    assert!(
        early.is_err(),
        "answered while the model was loading: {early:?}"
    );
    // Now the parameters arrive and the model loads.
    let params = std::fs::read(common::tiny("params_learned.safetensors")).unwrap();
    let writer = std::thread::spawn(move || std::fs::write(&fifo, params));
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let _ = child.kill();
    let _ = child.wait();
    writer.join().unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(r#"{"ready":true}"#), "{answer}");
}
