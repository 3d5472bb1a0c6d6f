//! Raw HTTP requests to the real `headclip serve` (the binary, with the tiny fixture model, on
//! 127.0.0.1:0): mutated request lines, headers, query strings and bodies (raw images and
//! multipart forms whose images are mutated like the image target's). The server must stay up,
//! answer every complete request with anything but a 5xx other than 503/504, and keep its
//! resident peak bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use fastrand::Rng;

use super::{Context, Input, Outcome, Seed, Target};
use crate::mutate;

/// How long one request may take in all, under the runner's per-input limit.
const REQUEST_DEADLINE: Duration = Duration::from_secs(8);
/// The server's own per-request limit, under ours, so that a slow decode is its 504.
const SERVER_TIMEOUT_MS: &str = "5000";
/// The server's resident peak (VmHWM) above which a run is a finding.
const SERVER_MEMORY_LIMIT: u64 = 2 << 30;
const BOUNDARY: &str = "fuzzboundary7MA4YWxkTrZu0gW";

pub fn http_target(ctx: &Context) -> anyhow::Result<Box<dyn Target>> {
    let binary = ctx
        .headclip
        .clone()
        .context("the http target needs the headclip binary (--headclip PATH)")?;
    let server = Server::start(&binary, ctx)?;
    Ok(Box::new(HttpTarget {
        seeds: seeds()?,
        image_seeds: super::images::seeds()?,
        binary,
        ctx: ctx.clone(),
        server,
        restarts: 0,
        peak_resident: 0,
    }))
}

struct HttpTarget {
    seeds: Vec<Seed>,
    image_seeds: Vec<Seed>,
    binary: PathBuf,
    ctx: Context,
    server: Server,
    restarts: usize,
    peak_resident: u64,
}

impl Target for HttpTarget {
    fn name(&self) -> &'static str {
        "http"
    }

    fn seeds(&self) -> &[Seed] {
        &self.seeds
    }

    fn mutate(&self, rng: &mut Rng, input: &mut Vec<u8>, partner: &[u8]) {
        mutate_request(rng, input, partner, &self.image_seeds);
    }

    fn run(&mut self, input: &Input) -> Outcome {
        let complete = is_complete(input.bytes);
        let answer = exchange(self.server.addr, input.bytes, complete);
        if let Some(outcome) = self.check_server() {
            return outcome;
        }
        judge(answer, complete)
    }

    fn notes(&self) -> Vec<String> {
        vec![format!(
            "server: resident peak (VmHWM) {} MiB, restarts after a crash {}",
            self.peak_resident >> 20,
            self.restarts
        )]
    }
}

impl HttpTarget {
    /// A finding when the server died (then it is restarted) or its resident peak is too high.
    fn check_server(&mut self) -> Option<Outcome> {
        if let Ok(Some(status)) = self.server.child.try_wait() {
            let detail = format!(
                "headclip serve exited ({status}); stderr ends:\n{}",
                self.server.stderr_tail()
            );
            self.restarts += 1;
            if let Ok(server) = Server::start(&self.binary, &self.ctx) {
                self.server = server;
            }
            return Some(Outcome::Finding {
                kind: "server died".into(),
                detail,
            });
        }
        let peak = resident_peak(self.server.child.id()).unwrap_or(0);
        self.peak_resident = self.peak_resident.max(peak);
        (peak > SERVER_MEMORY_LIMIT).then(|| Outcome::Finding {
            kind: "server memory".into(),
            detail: format!(
                "VmHWM {} MiB over {} MiB",
                peak >> 20,
                SERVER_MEMORY_LIMIT >> 20
            ),
        })
    }
}

/// The server's answer to one request.
enum Answer {
    /// A final status, with the start of the response.
    Status(u16, String),
    /// Connection closed without a status line.
    Closed,
    /// Nothing within the deadline.
    Silent,
}

fn judge(answer: Answer, complete: bool) -> Outcome {
    match answer {
        Answer::Status(s, response) if s >= 500 && s != 503 && s != 504 => Outcome::Finding {
            kind: format!("HTTP {s}"),
            detail: format!("the server answered {s}: {response}"),
        },
        Answer::Status(s, _) if (200..300).contains(&s) => Outcome::Accepted,
        Answer::Status(s, _) => Outcome::Refused(format!("HTTP {s}")),
        Answer::Closed | Answer::Silent if complete => Outcome::Finding {
            kind: "no answer".into(),
            detail: "a complete request got no status line".into(),
        },
        Answer::Closed => Outcome::Refused("cut request, closed".into()),
        Answer::Silent => Outcome::Refused("cut request, no answer".into()),
    }
}

/// Sends the request and reads the first final status line. A cut request is followed by a
/// half-close, so that the server sees its end instead of waiting for the rest; a complete one
/// is not (the server closes a half-closed connection without answering).
fn exchange(addr: SocketAddr, request: &[u8], complete: bool) -> Answer {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, REQUEST_DEADLINE) else {
        return Answer::Closed;
    };
    let _ = stream.set_write_timeout(Some(REQUEST_DEADLINE / 2));
    // The server may answer and close before reading everything: that is not a failure.
    let _ = stream.write_all(request);
    if !complete {
        let _ = stream.shutdown(Shutdown::Write);
    }
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
        if let Some(status) = final_status(&response) {
            return status_answer(status, &mut stream, response, deadline);
        }
    }
    match final_status(&response) {
        Some(s) => Answer::Status(s, String::from_utf8_lossy(&response).into_owned()),
        None if Instant::now() >= deadline => Answer::Silent,
        None => Answer::Closed,
    }
}

/// A status, with the response read on for a moment when it is an error (for the report).
fn status_answer(
    status: u16,
    stream: &mut TcpStream,
    mut response: Vec<u8>,
    deadline: Instant,
) -> Answer {
    if status >= 500 {
        let _ = stream.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(500))
                .max(Duration::from_millis(1)),
        ));
        let mut buf = [0u8; 2048];
        if let Ok(n) = stream.read(&mut buf) {
            response.extend_from_slice(&buf[..n]);
        }
    }
    response.truncate(1024);
    Answer::Status(status, String::from_utf8_lossy(&response).into_owned())
}

/// The first status line that is not informational (`100 Continue`).
fn final_status(response: &[u8]) -> Option<u16> {
    let mut rest = response;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(rest) {
            Ok(httparse::Status::Complete(len)) => {
                let code = parsed.code?;
                if code >= 200 {
                    return Some(code);
                }
                rest = &rest[len..];
            }
            _ => return None,
        }
    }
}

/// Whether the server has all of the first request: complete headers that parse, and as many
/// body bytes as a single Content-Length says. Chunked bodies are not judged.
fn is_complete(request: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = parsed.parse(request) else {
        return false;
    };
    let named = |name: &str| {
        parsed
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    if named("transfer-encoding") > 0 || named("content-length") > 1 || parsed.version != Some(1) {
        return false;
    }
    let length = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| {
            std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
        });
    match length {
        None => true,
        Some(Some(n)) => request.len() - head >= n,
        Some(None) => false,
    }
}

fn resident_peak(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    crate::memory::status_field_kib(&status, "VmHWM:").map(|kib| kib * 1024)
}

/// A running `headclip serve`; killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Server {
    fn start(binary: &PathBuf, ctx: &Context) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .arg("serve")
            .arg("--weights")
            .arg(ctx.tiny.join("clip_openai.safetensors"))
            .arg("--params")
            .arg(ctx.tiny.join("params_learned.safetensors"))
            .args([
                "--threads",
                "1",
                "--addr",
                "127.0.0.1:0",
                "--timeout-ms",
                SERVER_TIMEOUT_MS,
            ])
            .env_remove("HEADCLIP_TOKEN")
            .env_remove("HEADCLIP_WEIGHTS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} serve", binary.display()))?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        keep_tail(child.stderr.take(), stderr.clone());
        let stdout = child.stdout.take().context("server stdout")?;
        let Some(addr) = announced_address(stdout, Duration::from_secs(120)) else {
            let _ = child.kill();
            bail!(
                "headclip serve did not start: {}",
                String::from_utf8_lossy(&stderr.lock().unwrap())
            );
        };
        Ok(Self {
            child,
            addr: addr.parse()?,
            stderr,
        })
    }

    fn stderr_tail(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drains a pipe, keeping its last 8 KiB (the server logs every refused request).
fn keep_tail(pipe: Option<std::process::ChildStderr>, tail: Arc<Mutex<Vec<u8>>>) {
    let Some(mut pipe) = pipe else { return };
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut t = tail.lock().unwrap();
            t.extend_from_slice(&buf[..n]);
            let excess = t.len().saturating_sub(8192);
            t.drain(..excess);
        }
    });
}

/// Well-formed requests for every route and body form.
fn seeds() -> anyhow::Result<Vec<Seed>> {
    let images = super::images::seeds()?;
    let png = &images
        .iter()
        .find(|s| s.name == "rgb.png")
        .context("png seed")?
        .bytes;
    let jpeg = &images
        .iter()
        .find(|s| s.name == "baseline.jpg")
        .context("jpeg seed")?
        .bytes;
    let seed = |name: &str, bytes: Vec<u8>| Seed {
        name: name.into(),
        bytes,
    };
    Ok(vec![
        seed("healthz", get("/healthz")),
        seed("metrics", get("/metrics")),
        seed("index", get("/")),
        seed("colormap", get("/v1/colormap.png")),
        seed("overlay", get("/v1/overlays/0123456789abcdef.png")),
        seed("raw_png", post("/v1/detect?overlay=none", "image/png", png)),
        seed(
            "raw_jpeg_threshold",
            post(
                "/v1/detect?threshold=0.3&overlay=inline",
                "application/octet-stream",
                jpeg,
            ),
        ),
        seed(
            "form",
            post(
                "/v1/detect?overlay=url",
                &format!("multipart/form-data; boundary={BOUNDARY}"),
                &form(&[png, jpeg]),
            ),
        ),
        seed("v2_ready", get("/v2/health/ready")),
        seed("v2_metadata", get("/v2/models/headclip")),
        seed("v2_infer_binary", v2_infer_binary(&[png, jpeg])),
        seed(
            "v2_infer_pixels",
            post(
                "/v2/models/headclip/infer",
                "application/json",
                br#"{"inputs":[{"name":"pixels","datatype":"UINT8","shape":[1,2,2,3],"data":[[[[0,1,2],[3,4,5]],[[6,7,8],[9,10,11]]]]}],"outputs":[{"name":"score"}]}"#,
            ),
        ),
    ])
}

/// A v2 infer request with the binary-tensor extension, as tritonclient sends it: the JSON
/// header, its length in `Inference-Header-Content-Length`, then the BYTES elements, each
/// after its 4-byte length.
fn v2_infer_binary(images: &[&Vec<u8>]) -> Vec<u8> {
    let mut binary = Vec::new();
    for img in images {
        binary.extend_from_slice(&(img.len() as u32).to_le_bytes());
        binary.extend_from_slice(img);
    }
    let header = format!(
        r#"{{"inputs":[{{"name":"image","datatype":"BYTES","shape":[{}],"parameters":{{"binary_data_size":{}}}}}],"parameters":{{"binary_data_output":true}}}}"#,
        images.len(),
        binary.len()
    );
    let mut r = format!(
        "POST /v2/models/headclip/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nInference-Header-Content-Length: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        header.len(),
        header.len() + binary.len()
    )
    .into_bytes();
    r.extend_from_slice(header.as_bytes());
    r.extend_from_slice(&binary);
    r
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").into_bytes()
}

fn post(path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// A multipart form: a `threshold` text part and one `image` part per image.
fn form(images: &[&Vec<u8>]) -> Vec<u8> {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"threshold\"\r\n\r\n0.5\r\n"
    )
    .into_bytes();
    for (i, img) in images.iter().enumerate() {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"img{i}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(img);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// Splits a request at the blank line; `None` when there is none.
fn split(request: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let at = request.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((request[..at].to_vec(), request[at + 4..].to_vec()))
}

fn join(head: &[u8], body: &[u8]) -> Vec<u8> {
    [head, b"\r\n\r\n", body].concat()
}

/// One or more edits of the request line, headers or body; mostly the Content-Length is then
/// made true again so that the request stays complete and reaches the handler.
fn mutate_request(rng: &mut Rng, input: &mut Vec<u8>, partner: &[u8], images: &[Seed]) {
    let Some((head, mut body)) = split(input) else {
        return mutate::bytes(rng, input, partner);
    };
    let mut lines: Vec<Vec<u8>> = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
        .collect();
    for _ in 0..mutate::edit_count(rng) {
        match rng.u32(0..10) {
            0 => lines[0] = request_line(rng),
            1 | 2 => edit_header(rng, &mut lines),
            3..=5 => edit_body_image(rng, &mut body, images),
            6 => mutate::edit(rng, &mut body, partner),
            7 => {
                let i = rng.usize(..lines.len());
                mutate::edit(rng, &mut lines[i], partner);
            }
            8 => {
                let copy = join(&lines.join(&b"\r\n"[..]), &body);
                body.extend_from_slice(&copy); // a pipelined second request
            }
            _ => return mutate::bytes(rng, input, partner),
        }
    }
    if rng.u32(0..4) != 0 {
        set_header(
            &mut lines,
            "Content-Length",
            body.len().to_string().as_bytes(),
        );
    }
    *input = join(&lines.join(&b"\r\n"[..]), &body);
}

fn request_line(rng: &mut Rng) -> Vec<u8> {
    const METHODS: [&str; 8] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "G\tT",
    ];
    const PATHS: [&str; 10] = [
        "/v1/detect",
        "/healthz",
        "/metrics",
        "/",
        "/v1/overlays/0.png",
        "/v1/overlays/../../../etc/passwd",
        "/v1/overlays/%2e%2e%2fetc",
        "/assets/app.js",
        "/v1/detect/extra",
        "*",
    ];
    const QUERIES: [&str; 11] = [
        "",
        "?threshold=0.5",
        "?threshold=NaN",
        "?threshold=1e309",
        "?threshold=-0",
        "?overlay=url",
        "?overlay=inline&threshold=1",
        "?overlay=bogus",
        "?unknown=1",
        "?threshold=0.5&threshold=0.7",
        "?%zz=%",
    ];
    const VERSIONS: [&str; 4] = ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 extra"];
    let mut path = format!(
        "{}{}",
        PATHS[rng.usize(..PATHS.len())],
        QUERIES[rng.usize(..QUERIES.len())]
    );
    if rng.u32(0..10) == 0 {
        path.push_str(&"a".repeat(rng.usize(1..100_000)));
    }
    format!(
        "{} {path} {}",
        METHODS[rng.usize(..METHODS.len())],
        VERSIONS[rng.usize(..VERSIONS.len())]
    )
    .into_bytes()
}

fn edit_header(rng: &mut Rng, lines: &mut Vec<Vec<u8>>) {
    let big = "x".repeat(70_000);
    let content_types = [
        "image/png".to_string(),
        "application/octet-stream".into(),
        "text/plain".into(),
        "multipart/form-data".into(),
        format!("multipart/form-data; boundary={BOUNDARY}"),
        "multipart/form-data; boundary=other".into(),
        "multipart/form-data; boundary=".into(),
        format!("multipart/form-data; boundary={big}"),
    ];
    match rng.u32(0..6) {
        0 => {
            let ct = &content_types[rng.usize(..content_types.len())];
            set_header(lines, "Content-Type", ct.as_bytes());
        }
        1 => {
            let values = [
                "0",
                "1",
                "-1",
                "abc",
                "18446744073709551616",
                "99999999",
                "5, 6",
                " 3",
            ];
            set_header(
                lines,
                "Content-Length",
                values[rng.usize(..values.len())].as_bytes(),
            );
        }
        2 => lines.push(
            [
                b"Transfer-Encoding: ".as_slice(),
                ["chunked", "gzip", "chunked, chunked"][rng.usize(..3)].as_bytes(),
            ]
            .concat(),
        ),
        3 => {
            let extra: [&[u8]; 6] = [
                b"Expect: 100-continue",
                b"Authorization: Bearer nope",
                b"Connection: keep-alive",
                b"X-Long: ",
                b"Host:",
                b"Bad Header Name: 1",
            ];
            let mut line = extra[rng.usize(..extra.len())].to_vec();
            if line.ends_with(b": ") {
                line.extend_from_slice(big.as_bytes());
            }
            lines.insert(rng.usize(1..=lines.len()), line);
        }
        4 if lines.len() > 1 => {
            lines.remove(rng.usize(1..lines.len()));
        }
        _ => {
            let i = rng.usize(..lines.len());
            lines.insert(rng.usize(1..=lines.len()), lines[i].clone());
        }
    }
}

/// Replaces a header's value, or adds the header.
fn set_header(lines: &mut Vec<Vec<u8>>, name: &str, value: &[u8]) {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    let line = [name.as_bytes(), b": ", value].concat();
    match lines
        .iter()
        .position(|l| l.to_ascii_lowercase().starts_with(prefix.as_bytes()))
    {
        Some(i) => lines[i] = line,
        None => lines.push(line),
    }
}

/// Mutates the image in the body (a raw body, or the first file part of a form), or puts in
/// another seed image, mutated like the image target's inputs.
fn edit_body_image(rng: &mut Rng, body: &mut Vec<u8>, images: &[Seed]) {
    let (start, end) = image_span(body);
    let mut image = if rng.u32(0..4) == 0 || start == end {
        images[rng.usize(..images.len())].bytes.clone()
    } else {
        body[start..end].to_vec()
    };
    match headclip_data::images::sniff_format(&image) {
        Some(headclip_data::images::ImageFormat::Png) => mutate::png::mutate(rng, &mut image, &[]),
        Some(headclip_data::images::ImageFormat::Jpeg) => {
            mutate::jpeg::mutate(rng, &mut image, &[])
        }
        _ => mutate::bytes(rng, &mut image, &[]),
    }
    body.splice(start..end, image);
}

/// Where the image bytes lie in a body: a form's first file part, or the whole body.
fn image_span(body: &[u8]) -> (usize, usize) {
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let Some(part) = find(body, b"filename=", 0) else {
        return (0, body.len());
    };
    let Some(start) = find(body, b"\r\n\r\n", part).map(|p| p + 4) else {
        return (0, body.len());
    };
    let end = find(body, format!("\r\n--{BOUNDARY}").as_bytes(), start).unwrap_or(body.len());
    (start, end)
}

/// The address `headclip serve` announces on its standard output (`listening on http://ADDR`),
/// or `None` if none comes within `timeout`. The rest of the output is read and dropped, so the
/// server never blocks on a full pipe.
pub fn announced_address(stdout: std::process::ChildStdout, timeout: Duration) -> Option<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on http://") {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    rx.recv_timeout(timeout).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_complete_and_cut_requests_are_not() {
        for s in seeds().unwrap() {
            assert!(is_complete(&s.bytes), "{}", s.name);
            assert!(
                !is_complete(&s.bytes[..s.bytes.len() - 1]) || !s.name.contains("png"),
                "{}",
                s.name
            );
        }
        let form = seeds().unwrap().pop().unwrap().bytes;
        assert!(!is_complete(&form[..form.len() - 1]));
        assert_eq!(
            final_status(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413 Payload Too Large\r\n\r\n"),
            Some(413)
        );
    }
}
