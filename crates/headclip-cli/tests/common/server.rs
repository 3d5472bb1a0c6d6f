//! A `headclip serve` on 127.0.0.1 (a free port) with the tiny fixture model, and a blocking
//! HTTP client for it; for the tests of the v2 protocol and of the Kubernetes example.
// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::io::Read;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::common::{headclip, tiny};

/// A running `headclip serve`; killed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts the server with the tiny model and `extra` arguments, and waits for its
    /// `listening on` line.
    pub fn start(extra: &[&str]) -> Self {
        let weights = tiny("clip_openai.safetensors");
        let params = tiny("params_learned.safetensors");
        let mut args = vec![
            "--weights",
            weights.to_str().unwrap(),
            "--params",
            params.to_str().unwrap(),
            "--threads",
            "1",
        ];
        args.extend_from_slice(extra);
        Self::start_with(&args)
    }

    /// Starts `headclip serve ARGS` on a free loopback port.
    pub fn start_with(args: &[&str]) -> Self {
        let mut child = headclip()
            .arg("serve")
            .args(args)
            .args(["--addr", "127.0.0.1:0"])
            .env_remove("HEADCLIP_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start headclip serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            sink.lock().unwrap().push_str(&text);
        });
        let stdout = child.stdout.take().unwrap();
        let Some(addr) =
            headclip_fuzz::targets::http::announced_address(stdout, Duration::from_secs(120))
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the server did not start; stderr:\n{}",
                stderr.lock().unwrap()
            );
        };
        Self {
            child,
            base: format!("http://{addr}"),
            stderr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// A sample of `/metrics`, by its full name with labels.
    pub fn metric(&self, name: &str) -> f64 {
        let text = String::from_utf8(get(&self.url("/metrics")).body).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An answer: status, headers, body.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

fn finish(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut resp = resp.expect("an HTTP response");
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    Reply {
        status: resp.status().as_u16(),
        headers,
        body: resp
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_vec()
            .unwrap_or_default(),
    }
}

pub fn get(url: &str) -> Reply {
    finish(agent().get(url).call())
}

/// POSTs `body` with the given headers.
pub fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut req = agent().post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    finish(req.send(body))
}
