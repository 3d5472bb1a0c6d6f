//! A small Chrome DevTools Protocol client for the page's end-to-end test: starts headless
//! Chromium on a fresh profile, talks to one page over a WebSocket on 127.0.0.1, and stops it.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// Where Debian's `chromium` package puts the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Names another browser binary than [`CHROMIUM`]; nothing is installed then.
pub const CHROMIUM_ENV: &str = "HEADCLIP_CHROMIUM";

/// Makes sure Chromium is there: `$HEADCLIP_CHROMIUM` if set, else [`CHROMIUM`], installing it
/// with `scripts/setup-browser.sh` if needed. `Err` says why it cannot be had.
pub fn ensure_chromium(repo: &Path) -> Result<PathBuf, String> {
    if let Some(chosen) = std::env::var_os(CHROMIUM_ENV) {
        let chosen = PathBuf::from(chosen);
        return if chosen.is_file() {
            Ok(chosen)
        } else {
            Err(format!("{CHROMIUM_ENV}={} is not a file", chosen.display()))
        };
    }
    if Path::new(CHROMIUM).exists() {
        return Ok(CHROMIUM.into());
    }
    let script = repo.join("scripts/setup-browser.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if out.status.success() && Path::new(CHROMIUM).exists() {
        Ok(CHROMIUM.into())
    } else {
        Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this is a CI run (`CI=true`, as CI services set it): there a missing browser fails
/// the page test instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

pub struct Browser {
    child: Child,
    ws: WebSocket<TcpStream>,
    next_id: u64,
    /// Events seen while waiting for answers (method, params).
    pub events: Vec<(String, Value)>,
}

impl Browser {
    /// Starts headless Chromium with its profile in `profile` and attaches to its first page.
    pub fn launch(chromium: &Path, profile: &Path) -> Result<Self, String> {
        let mut child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,1000",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", chromium.display()))?;
        // Chromium writes its DevTools port into the profile once it listens.
        let port_file = profile.join("DevToolsActivePort");
        let started = Instant::now();
        let port: u16 = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.lines().next()?.trim().parse().ok())
            {
                break p;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("chromium exited early with {status}"));
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                return Err("chromium did not open its DevTools port within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let ws_url = match page_ws_url(port) {
            Ok(u) => u,
            Err(e) => {
                let _ = child.kill();
                return Err(e);
            }
        };
        let stream = TcpStream::connect(("127.0.0.1", port))
            .map_err(|e| format!("connect to DevTools: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let (ws, _) = tungstenite::client::client(ws_url.as_str(), stream)
            .map_err(|e| format!("DevTools WebSocket: {e}"))?;
        Ok(Self {
            child,
            ws,
            next_id: 0,
            events: Vec::new(),
        })
    }

    /// Sends a command and waits for its answer (`result`), keeping events on the way.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws
            .send(Message::text(msg))
            .map_err(|e| format!("{method}: send: {e}"))?;
        loop {
            let msg = self.ws.read().map_err(|e| format!("{method}: read: {e}"))?;
            let text = match msg {
                Message::Text(t) => t.as_str().to_owned(),
                Message::Close(_) => {
                    return Err(format!("{method}: DevTools closed the connection"))
                }
                _ => continue,
            };
            let v: Value =
                serde_json::from_str(&text).map_err(|e| format!("{method}: bad JSON: {e}"))?;
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    return Err(format!("{method}: {err}"));
                }
                return Ok(v["result"].clone());
            }
            if let Some(m) = v["method"].as_str() {
                self.events.push((m.to_string(), v["params"].clone()));
            }
        }
    }

    /// Evaluates a JavaScript expression (awaiting promises) and returns its value.
    pub fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
        )?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(format!("JavaScript exception: {ex}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Evaluates `expression` until it gives `true`, or fails after `timeout`.
    pub fn wait_for(&mut self, expression: &str, timeout: Duration) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if self.eval(expression)? == Value::Bool(true) {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "timed out after {timeout:?} waiting for {expression}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.ws.close(None);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The WebSocket address of the browser's first page, from `/json/list`.
fn page_ws_url(port: u16) -> Result<String, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let started = Instant::now();
    loop {
        if let Ok(mut r) = agent
            .get(&format!("http://127.0.0.1:{port}/json/list"))
            .call()
        {
            let text = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
            let list: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            if let Some(url) = list
                .as_array()
                .and_then(|a| a.iter().find(|t| t["type"] == "page"))
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            {
                return Ok(url.to_string());
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err("no page target in /json/list".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
